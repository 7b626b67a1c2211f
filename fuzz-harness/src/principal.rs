//! The callers the lookup targets look up as, chosen by a byte of the input.

use samblik_gateway::auth::{Caller, CallingSystem};
use samblik_gateway::lookup::Principal;
use samblik_proto::v1::Purpose;
use std::sync::Arc;

/// A synthetic citizen's CPR number (born 1 Jan 2036: nobody's yet).
pub const CPR: &str = "0101364003";

/// The caller numbered `n` (mod 4): a jobcenter caseworker, a child-welfare leader, an
/// integration caseworker calling through a system limited to two sources and three purposes,
/// and a caller with no role Samblik knows.
pub fn principal(n: u8) -> Principal {
    let caller = |id: &str, department: &str, roles: &[&str]| {
        Arc::new(Caller {
            id: id.into(),
            name: id.into(),
            department: department.into(),
            municipality: "0999".into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            citizen: None,
        })
    };
    match n % 4 {
        0 => Principal {
            caller: caller("cw-jobcenter", "jobcenter", &["caseworker"]),
            system: None,
        },
        1 => Principal {
            caller: caller("leader-cw", "child-welfare", &["department-leader"]),
            system: None,
        },
        2 => Principal {
            caller: caller("cw-integration", "integration", &["caseworker"]),
            system: Some(Arc::new(CallingSystem {
                name: "DUBU".into(),
                sources: Some(vec!["jobcenter".into(), "integration".into()]),
                purposes: Some(vec![
                    Purpose::PrepareMeeting,
                    Purpose::DraftPlan,
                    Purpose::FollowUp,
                ]),
            })),
        },
        _ => Principal {
            caller: caller("nobody", "other", &["visitor"]),
            system: None,
        },
    }
}
