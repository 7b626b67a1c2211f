//! The synthetic municipality's data model, as written to and read from the data directory.
//!
//! Layout of a data directory (all JSON, UTF-8):
//!
//! | file | content |
//! |---|---|
//! | `municipality.json` | [`Municipality`]: name, code, seed, reference date |
//! | `citizens.json` | every [`Citizen`] (most have no case) |
//! | `caseworkers.json` | every [`Caseworker`] of every department |
//! | `cases-<department>.json` | one department's [`CaseRecord`]s, e.g. `cases-jobcenter.json` |
//!
//! A source service reads only `caseworkers.json` and its own department's case file.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The departments that own cases in the synthetic municipality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Department {
    /// Børne- og Familieafdelingen: SL §§ 54, 57 c, 140.
    ChildWelfare,
    /// Jobcenter: LAB §§ 27, 30 a.
    Jobcenter,
    /// Integration: IL § 19.
    Integration,
    /// Voksenområdet (the adult-social area): SL §§ 141, 12 a.
    AdultSocial,
}

impl Department {
    pub const ALL: [Department; 4] = [
        Department::ChildWelfare,
        Department::Jobcenter,
        Department::Integration,
        Department::AdultSocial,
    ];

    /// The id used on the command line, in config and as the source id: `child-welfare`,
    /// `jobcenter`, `integration`, `adult-social`.
    pub fn id(self) -> &'static str {
        match self {
            Department::ChildWelfare => "child-welfare",
            Department::Jobcenter => "jobcenter",
            Department::Integration => "integration",
            Department::AdultSocial => "adult-social",
        }
    }

    /// The department's Danish name, as shown to caseworkers.
    pub fn display_name(self) -> &'static str {
        match self {
            Department::ChildWelfare => "Børne- og Familieafdelingen",
            Department::Jobcenter => "Jobcenter",
            Department::Integration => "Integrationsafdelingen",
            Department::AdultSocial => "Voksenområdet",
        }
    }

    /// The file name of this department's cases in a data directory.
    pub fn cases_file(self) -> String {
        format!("cases-{}.json", self.id())
    }

    /// Prefix of this department's case ids, e.g. `BF` in `BF-2025-000123`.
    pub fn case_prefix(self) -> &'static str {
        match self {
            Department::ChildWelfare => "BF",
            Department::Jobcenter => "JC",
            Department::Integration => "IN",
            Department::AdultSocial => "VO",
        }
    }
}

impl fmt::Display for Department {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// An unknown department id.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "unknown department {0:?}; expected one of child-welfare, jobcenter, integration, adult-social"
)]
pub struct UnknownDepartment(pub String);

impl FromStr for Department {
    type Err = UnknownDepartment;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Department::ALL
            .into_iter()
            .find(|d| d.id() == s)
            .ok_or_else(|| UnknownDepartment(s.to_owned()))
    }
}

/// The plan types of the four departments: the report's eight municipal plans (domain brief, ch. 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PlanType {
    /// SL § 54: action plan for parents of placed children.
    #[serde(rename = "SL-54")]
    Sl54,
    /// SL § 57 c: action plan to prevent crime among young people.
    #[serde(rename = "SL-57c")]
    Sl57c,
    /// SL § 140: action plan for children and young people needing special support.
    #[serde(rename = "SL-140")]
    Sl140,
    /// LAB § 27: Min Plan.
    #[serde(rename = "LAB-27")]
    Lab27,
    /// LAB § 30 a: rehabilitation plan.
    #[serde(rename = "LAB-30a")]
    Lab30a,
    /// IL § 19: integration contract.
    #[serde(rename = "IL-19")]
    Il19,
    /// SL § 141: action plan for adults (offered, not mandatory).
    #[serde(rename = "SL-141")]
    Sl141,
    /// SL § 12 a: action plan for honour-related conflict.
    #[serde(rename = "SL-12a")]
    Sl12a,
}

impl PlanType {
    pub const ALL: [PlanType; 8] = [
        PlanType::Sl54,
        PlanType::Sl57c,
        PlanType::Sl140,
        PlanType::Lab27,
        PlanType::Lab30a,
        PlanType::Il19,
        PlanType::Sl141,
        PlanType::Sl12a,
    ];

    /// Stable code, e.g. `SL-140` (the same as the serde name).
    pub fn code(self) -> &'static str {
        match self {
            PlanType::Sl54 => "SL-54",
            PlanType::Sl57c => "SL-57c",
            PlanType::Sl140 => "SL-140",
            PlanType::Lab27 => "LAB-27",
            PlanType::Lab30a => "LAB-30a",
            PlanType::Il19 => "IL-19",
            PlanType::Sl141 => "SL-141",
            PlanType::Sl12a => "SL-12a",
        }
    }

    /// The plan type's Danish name.
    pub fn name(self) -> &'static str {
        match self {
            PlanType::Sl54 => "Handleplan for forældre med anbragte børn",
            PlanType::Sl57c => "Handleplan til forebyggelse af kriminalitet",
            PlanType::Sl140 => "Handleplan for børn og unge med behov for særlig støtte",
            PlanType::Lab27 => "Min Plan",
            PlanType::Lab30a => "Rehabiliteringsplan",
            PlanType::Il19 => "Integrationskontrakt",
            PlanType::Sl141 => "Handleplan for voksne",
            PlanType::Sl12a => "Handleplan ved æresrelateret konflikt",
        }
    }

    /// The legal paragraph in full, e.g. `Serviceloven § 140`.
    pub fn legal_paragraph(self) -> &'static str {
        match self {
            PlanType::Sl54 => "Serviceloven § 54",
            PlanType::Sl57c => "Serviceloven § 57 c",
            PlanType::Sl140 => "Serviceloven § 140",
            PlanType::Lab27 => "Lov om en aktiv beskæftigelsesindsats § 27",
            PlanType::Lab30a => "Lov om en aktiv beskæftigelsesindsats § 30 a",
            PlanType::Il19 => "Integrationsloven § 19",
            PlanType::Sl141 => "Serviceloven § 141",
            PlanType::Sl12a => "Serviceloven § 12 a",
        }
    }

    /// The department that owns plans of this type.
    pub fn department(self) -> Department {
        match self {
            PlanType::Sl54 | PlanType::Sl57c | PlanType::Sl140 => Department::ChildWelfare,
            PlanType::Lab27 | PlanType::Lab30a => Department::Jobcenter,
            PlanType::Il19 => Department::Integration,
            PlanType::Sl141 | PlanType::Sl12a => Department::AdultSocial,
        }
    }
}

/// The synthetic municipality itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Municipality {
    /// A fictitious name, e.g. "Sønderå Kommune".
    pub name: String,
    /// A fictitious three-digit municipality code outside the real range (e.g. "999").
    pub code: String,
    /// The seed the data was generated from.
    pub seed: u64,
    /// The "today" of the data set: every date is relative to it, so a seed always gives the
    /// same data. Open cases were opened before it; next follow-ups fall after it.
    pub reference_date: NaiveDate,
    /// The mail domain of the municipality's staff (always under `.example`).
    pub mail_domain: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Citizen {
    /// 10 digits. Synthetic: every generated number fails the modulus-11 check, which no number
    /// issued before 2007 does, and the birth dates are drawn at random.
    pub cpr: String,
    pub name: String,
    pub birth_date: NaiveDate,
    /// Name and address protection (navne- og adressebeskyttelse).
    pub address_protected: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Caseworker {
    /// Stable id, also the `sub` of the demo caseworker's token, e.g. `cw-jobcenter-007`.
    pub id: String,
    pub name: String,
    pub department: Department,
    /// The unit inside the department, e.g. "Jobcenter – Sygedagpenge".
    pub unit: String,
    /// e.g. "+45 72 34 56 78".
    pub phone: String,
    /// e.g. "mette.holm@sonderaa.kommune.example".
    pub email: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaseState {
    Open,
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intervention {
    /// e.g. "Serviceloven § 52, stk. 3, nr. 6".
    pub legal_paragraph: String,
    pub description: String,
    pub provider: String,
    /// In words, e.g. "6 timer om ugen".
    pub scope: String,
    pub start_on: NaiveDate,
    pub end_on: Option<NaiveDate>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Goal {
    pub description: String,
    pub target_on: Option<NaiveDate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DocumentKind {
    Note,
    Assessment,
    StatusNote,
    MedicalStatement,
    PoliceStatement,
    Plan,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Unique within the case, e.g. `BF-2025-000123-D03`.
    pub document_id: String,
    pub kind: DocumentKind,
    pub title: String,
    pub dated_on: NaiveDate,
    pub author: String,
    /// Where the information came from when not the owning department, e.g. "Almen praksis".
    pub third_party_origin: Option<String>,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseRecord {
    /// e.g. `JC-2025-004711`; the prefix is the department's [`Department::case_prefix`].
    pub case_id: String,
    /// The citizen's CPR (10 digits).
    pub cpr: String,
    pub plan_type: PlanType,
    pub state: CaseState,
    pub opened_on: NaiveDate,
    pub closed_on: Option<NaiveDate>,
    /// The responsible caseworker's [`Caseworker::id`], in the owning department.
    pub responsible: String,
    pub situation: String,
    pub goals: Vec<Goal>,
    pub interventions: Vec<Intervention>,
    pub next_follow_up_on: Option<NaiveDate>,
    pub assessment_summary: String,
    pub documents: Vec<Document>,
    /// The citizen's address as the department has it.
    #[serde(default)]
    pub residence: String,
    /// Sensitivity flags the department sets: `address-protection` for a citizen with name and
    /// address protection, `police-information` for a case holding police statements,
    /// `honour-related-conflict`.
    #[serde(default)]
    pub sensitivity: Vec<String>,
}

/// The sensitivity flag of a citizen with name and address protection.
pub const FLAG_ADDRESS_PROTECTION: &str = "address-protection";
/// The sensitivity flag of a case that holds information from the police.
pub const FLAG_POLICE_INFORMATION: &str = "police-information";
/// The sensitivity flag of a case about honour-related conflict (SL § 12 a).
pub const FLAG_HONOUR_RELATED_CONFLICT: &str = "honour-related-conflict";

impl CaseRecord {
    pub fn department(&self) -> Department {
        self.plan_type.department()
    }
}

/// A whole synthetic municipality.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    pub municipality: Municipality,
    pub citizens: Vec<Citizen>,
    pub caseworkers: Vec<Caseworker>,
    /// Every department's cases.
    pub cases: Vec<CaseRecord>,
}
