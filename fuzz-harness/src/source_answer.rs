//! A source's answer from its bytes on the wire (`samblik.source.v1.FindCasesResponse`, decoded
//! as the gRPC source client decodes it) through `restrict_to`, the policy's decisions and the
//! filtering: the lookup pipeline's `disclose`.
//!
//! Input: one selector byte (bits 0–1 the caller, bit 2 whether the caller's department has a
//! relation to the citizen, bits 3–4 the source, bits 5–6 the purpose, bit 7 a break-the-glass
//! reason), then the encoded response.

use crate::fixture::fixture;
use crate::principal::{CPR, principal};
use prost::Message;
use samblik_gateway::fuzzing::disclose_answer;
use samblik_proto::source::v1::FindCasesResponse;
use samblik_proto::v1::{Case, LookupRequest, Purpose, Tier};

const SOURCES: [&str; 3] = ["child-welfare", "jobcenter", "integration"];

pub fn run(data: &[u8]) {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let request = LookupRequest {
        cpr: CPR.into(),
        purpose: Purpose::ALL[usize::from((selector >> 5) & 3)] as i32,
        sources: vec![SOURCES[usize::from((selector >> 3) & 3) % 3].into()],
        break_glass_reason: if selector & 0x80 != 0 {
            "Acute concern reported by the school today".into()
        } else {
            String::new()
        },
    };
    let relation = selector & 4 != 0;
    let Some(d) = disclose_answer(
        &fixture().pipeline,
        principal(selector),
        &request,
        relation,
        bytes,
    ) else {
        return;
    };
    assert_eq!(d.cpr, CPR);
    assert!(d.asked >= Tier::Existence);
    let Ok(shown) = d.cases else {
        return;
    };
    let sent = FindCasesResponse::decode(bytes).expect("a used answer decodes");
    // An answer with a case about anyone else is not used at all.
    assert!(
        sent.cases.iter().all(|c| c.subject_cpr == CPR),
        "an answer holding a case about someone else was used"
    );
    let about: Vec<&Case> = sent.cases.iter().filter(|c| c.subject_cpr == CPR).collect();
    // A case about the citizen without an id or an existence part refuses the whole answer.
    assert!(
        about
            .iter()
            .all(|c| !c.case_id.is_empty() && c.existence.is_some()),
        "a malformed case was let through"
    );
    assert!(
        shown.len() <= about.len(),
        "more cases than were about the citizen"
    );
    for (case, decided) in &shown {
        // Only about the citizen asked: the case came from the answer with their CPR.
        assert!(
            about.iter().any(|c| c.case_id == case.case_id),
            "a case about someone else was shown"
        );
        // Never above the tier asked, nor the policy's, nor what the case carries.
        let tier = case.tier();
        assert_ne!(tier, Tier::Hidden, "a hidden case was shown");
        assert!(tier <= d.asked, "shown above the tier asked");
        assert!(
            tier as i32 <= *decided as i32,
            "shown above the policy's tier"
        );
        assert!(case.carried_tier() <= tier, "parts above the granted tier");
        assert!(case.existence.is_some());
        // Nothing that identifies or flags the citizen leaves with the case.
        assert!(case.subject_cpr.is_empty());
        assert!(case.sensitivity.is_empty());
        assert!(case.disclosure.is_some());
        // The field set: child-welfare shares only some tier-2 fields of an SL-140 case.
        let case_type = case
            .existence
            .as_ref()
            .and_then(|e| e.case_type.as_ref())
            .map_or("", |t| t.code.as_str());
        if d.source_id == "child-welfare"
            && case_type == "SL-140"
            && let Some(selected) = &case.selected
        {
            assert!(selected.situation.is_empty());
            assert!(selected.assessment_summary.is_empty());
            assert!(selected.residence.is_empty());
        }
    }
}
