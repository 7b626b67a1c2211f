//! The reference sources: one per department of the synthetic municipality, each serving its
//! department's cases from a data directory written by `samblik synth`.
//!
//! They behave as a real adapter must: they answer only for the CPR asked about, fill in nothing
//! above the asked tier, and tell "no case" (an empty answer) apart from failure.

use async_trait::async_trait;
use samblik_adapters::{CaseQuery, Health, Source, SourceAnswer, SourceError};
use samblik_proto::source::v1::CallerContext;
use samblik_proto::v1::{self as pb, Tier};
use samblik_synth::store::{self, DepartmentData, StoreError};
use samblik_synth::{CaseRecord, CaseState, Caseworker, Department, DocumentKind};
use std::collections::HashMap;
use std::path::Path;
use std::time::SystemTime;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "case {case_id} names responsible caseworker {caseworker:?}, who is not in the department"
    )]
    UnknownCaseworker { case_id: String, caseworker: String },
}

/// One department's reference source.
#[derive(Debug)]
pub struct ReferenceSource {
    department: Department,
    by_cpr: HashMap<String, Vec<CaseRecord>>,
    caseworkers: HashMap<String, Caseworker>,
    as_of: SystemTime,
}

impl ReferenceSource {
    /// Loads `department`'s slice of the data directory `dir`.
    pub fn load(dir: &Path, department: Department) -> Result<Self, LoadError> {
        Self::new(store::read_department(dir, department)?)
    }

    /// A source over already loaded data. Every case's responsible caseworker must be known.
    pub fn new(data: DepartmentData) -> Result<Self, LoadError> {
        let caseworkers: HashMap<String, Caseworker> = data
            .caseworkers
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect();
        let mut by_cpr: HashMap<String, Vec<CaseRecord>> = HashMap::new();
        for case in data.cases {
            if !caseworkers.contains_key(&case.responsible) {
                return Err(LoadError::UnknownCaseworker {
                    case_id: case.case_id,
                    caseworker: case.responsible,
                });
            }
            by_cpr.entry(case.cpr.clone()).or_default().push(case);
        }
        Ok(ReferenceSource {
            department: data.department,
            by_cpr,
            caseworkers,
            as_of: SystemTime::now(),
        })
    }

    pub fn department(&self) -> Department {
        self.department
    }

    fn to_wire(&self, record: &CaseRecord, tier: Tier) -> pb::Case {
        let responsible = self
            .caseworkers
            .get(&record.responsible)
            .map(|c| pb::Caseworker {
                name: c.name.clone(),
                unit: c.unit.clone(),
                phone: c.phone.clone(),
                email: c.email.clone(),
            });
        let existence = pb::Existence {
            case_type: Some(pb::CaseType {
                code: record.plan_type.code().to_owned(),
                name: record.plan_type.name().to_owned(),
                legal_paragraph: record.plan_type.legal_paragraph().to_owned(),
            }),
            state: match record.state {
                CaseState::Open => pb::CaseState::Open,
                CaseState::Closed => pb::CaseState::Closed,
            } as i32,
            opened_on: record.opened_on.to_string(),
            closed_on: date_or_empty(record.closed_on),
            responsible,
        };
        let selected = (tier >= Tier::Selected).then(|| pb::Selected {
            interventions: record
                .interventions
                .iter()
                .map(|i| pb::Intervention {
                    legal_paragraph: i.legal_paragraph.clone(),
                    description: i.description.clone(),
                    provider: i.provider.clone(),
                    scope: i.scope.clone(),
                    start_on: i.start_on.to_string(),
                    end_on: date_or_empty(i.end_on),
                })
                .collect(),
            situation: record.situation.clone(),
            goals: record
                .goals
                .iter()
                .map(|g| pb::Goal {
                    description: g.description.clone(),
                    target_on: date_or_empty(g.target_on),
                })
                .collect(),
            next_follow_up_on: date_or_empty(record.next_follow_up_on),
            assessment_summary: record.assessment_summary.clone(),
            residence: record.residence.clone(),
        });
        let full = (tier >= Tier::Full).then(|| pb::Full {
            documents: record
                .documents
                .iter()
                .map(|d| pb::Document {
                    document_id: d.document_id.clone(),
                    kind: document_kind(d.kind) as i32,
                    title: d.title.clone(),
                    dated_on: d.dated_on.to_string(),
                    author: d.author.clone(),
                    third_party_origin: d.third_party_origin.clone().unwrap_or_default(),
                    body: d.body.clone(),
                })
                .collect(),
        });
        pb::Case {
            case_id: record.case_id.clone(),
            subject_cpr: record.cpr.clone(),
            tier: tier as i32,
            existence: Some(existence),
            selected,
            full,
            sensitivity: record.sensitivity.clone(),
            disclosure: None,
        }
    }
}

fn date_or_empty(date: Option<chrono::NaiveDate>) -> String {
    date.map(|d| d.to_string()).unwrap_or_default()
}

fn document_kind(kind: DocumentKind) -> pb::DocumentKind {
    match kind {
        DocumentKind::Note => pb::DocumentKind::Note,
        DocumentKind::Assessment => pb::DocumentKind::Assessment,
        DocumentKind::StatusNote => pb::DocumentKind::StatusNote,
        DocumentKind::MedicalStatement => pb::DocumentKind::MedicalStatement,
        DocumentKind::PoliceStatement => pb::DocumentKind::PoliceStatement,
        DocumentKind::Plan => pb::DocumentKind::Plan,
    }
}

#[async_trait]
impl Source for ReferenceSource {
    fn id(&self) -> &str {
        self.department.id()
    }

    async fn find_cases(
        &self,
        query: CaseQuery,
        _caller: CallerContext,
    ) -> Result<SourceAnswer, SourceError> {
        let cases = match (query.max_tier, self.by_cpr.get(query.cpr.as_str())) {
            (Tier::Hidden, _) | (_, None) => Vec::new(),
            (tier, Some(records)) => records.iter().map(|r| self.to_wire(r, tier)).collect(),
        };
        Ok(SourceAnswer {
            cases,
            as_of: self.as_of,
        })
    }

    async fn health(&self) -> Health {
        Health::Serving
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;
    use samblik_proto::Cpr;
    use samblik_synth::{Document, Goal, Intervention, PlanType};

    const CPR: &str = "1505851235";

    fn date(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn data() -> DepartmentData {
        let worker = Caseworker {
            id: "cw-jobcenter-001".into(),
            name: "Mette Holm".into(),
            department: Department::Jobcenter,
            unit: "Jobcenter – Sygedagpenge".into(),
            phone: "+45 72 00 00 01".into(),
            email: "mette.holm@sonderaa.kommune.example".into(),
        };
        let case = CaseRecord {
            case_id: "JC-2025-000001".into(),
            cpr: CPR.into(),
            plan_type: PlanType::Lab30a,
            state: CaseState::Open,
            opened_on: date("2025-02-01"),
            closed_on: None,
            responsible: worker.id.clone(),
            situation: "Situation".into(),
            goals: vec![Goal {
                description: "Goal".into(),
                target_on: None,
            }],
            interventions: vec![Intervention {
                legal_paragraph: "LAB § 68 b".into(),
                description: "Ressourceforløb".into(),
                provider: "Jobcenter".into(),
                scope: "10 timer om ugen".into(),
                start_on: date("2025-03-01"),
                end_on: None,
            }],
            next_follow_up_on: Some(date("2026-12-01")),
            assessment_summary: "Summary".into(),
            residence: "Skovvej 1, 9990 Sønderå".into(),
            sensitivity: Vec::new(),
            documents: vec![Document {
                document_id: "JC-2025-000001-D01".into(),
                kind: DocumentKind::MedicalStatement,
                title: "Lægeattest LÆ 265".into(),
                dated_on: date("2025-02-10"),
                author: "Praktiserende læge".into(),
                third_party_origin: Some("Almen praksis".into()),
                body: "Body".into(),
            }],
        };
        DepartmentData {
            department: Department::Jobcenter,
            caseworkers: vec![worker],
            cases: vec![case],
        }
    }

    async fn ask(source: &ReferenceSource, cpr: &str, tier: Tier) -> Vec<pb::Case> {
        let query = CaseQuery {
            cpr: Cpr::parse(cpr).unwrap(),
            max_tier: tier,
            deadline: None,
        };
        source
            .find_cases(query, CallerContext::default())
            .await
            .unwrap()
            .cases
    }

    #[tokio::test]
    async fn never_fills_in_more_than_the_asked_tier() {
        let source = ReferenceSource::new(data()).unwrap();
        assert!(ask(&source, CPR, Tier::Hidden).await.is_empty());
        for tier in [Tier::Existence, Tier::Selected, Tier::Full] {
            let cases = ask(&source, CPR, tier).await;
            assert_eq!(cases.len(), 1);
            assert_eq!(cases[0].carried_tier(), tier);
            assert_eq!(cases[0].tier(), tier);
            assert_eq!(cases[0].subject_cpr, CPR);
        }
        let full = ask(&source, CPR, Tier::Full).await;
        let existence = full[0].existence.as_ref().unwrap();
        assert_eq!(existence.responsible.as_ref().unwrap().name, "Mette Holm");
        assert_eq!(existence.case_type.as_ref().unwrap().code, "LAB-30a");
        let documents = &full[0].full.as_ref().unwrap().documents;
        assert_eq!(documents[0].kind(), pb::DocumentKind::MedicalStatement);
        assert_eq!(documents[0].third_party_origin, "Almen praksis");
    }

    #[tokio::test]
    async fn an_unknown_citizen_is_an_empty_answer_not_an_error() {
        let source = ReferenceSource::new(data()).unwrap();
        assert!(ask(&source, "0101901235", Tier::Full).await.is_empty());
    }

    #[test]
    fn refuses_data_whose_caseworker_is_unknown() {
        let mut data = data();
        data.caseworkers.clear();
        assert!(matches!(
            ReferenceSource::new(data),
            Err(LoadError::UnknownCaseworker { .. })
        ));
    }
}
