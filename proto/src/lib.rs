//! Samblik's wire contract.
//!
//! - [`v1`] (`samblik.v1`): the public lookup API that fagsystemer and the panel call, and the
//!   case model shared with sources.
//! - [`source::v1`] (`samblik.source.v1`): the protocol every source adapter speaks.
//! - [`cpr`]: parsing and validation of CPR numbers, shared by the gateway, the sources and the
//!   synthetic data generator.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC server reflection.

/// CPR numbers: [`samblik_cpr`], re-exported so the wire contract names the type it carries.
pub use samblik_cpr as cpr;

/// `samblik.v1`: the lookup API and the case model.
pub mod v1 {
    #![allow(missing_debug_implementations, unused_qualifications, clippy::all)]
    tonic::include_proto!("samblik.v1");
}

/// `samblik.source.*`: the source-adapter protocol.
pub mod source {
    /// `samblik.source.v1`.
    pub mod v1 {
        #![allow(missing_debug_implementations, unused_qualifications, clippy::all)]
        tonic::include_proto!("samblik.source.v1");
    }
}

/// Encoded `FileDescriptorSet` of every Samblik proto, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("samblik_descriptor");

pub use cpr::{Cpr, CprError};

impl v1::Tier {
    /// The tiers from lowest to highest disclosure.
    pub const ALL: [v1::Tier; 4] = [
        v1::Tier::Hidden,
        v1::Tier::Existence,
        v1::Tier::Selected,
        v1::Tier::Full,
    ];
}

impl v1::Case {
    /// Drops every part of the case above `tier` and records `tier` as the granted tier.
    ///
    /// The parts are nested by tier, so this is exhaustive by construction: a new field can only
    /// be added to one of the tier messages, and goes with it.
    pub fn restrict_to(&mut self, tier: v1::Tier) {
        if tier < v1::Tier::Full {
            self.full = None;
        }
        if tier < v1::Tier::Selected {
            self.selected = None;
        }
        if tier < v1::Tier::Existence {
            self.existence = None;
        }
        self.tier = tier as i32;
    }

    /// The highest tier whose part this case actually carries.
    pub fn carried_tier(&self) -> v1::Tier {
        if self.full.is_some() {
            v1::Tier::Full
        } else if self.selected.is_some() {
            v1::Tier::Selected
        } else if self.existence.is_some() {
            v1::Tier::Existence
        } else {
            v1::Tier::Hidden
        }
    }
}

impl v1::Purpose {
    /// Every purpose a lookup may name.
    pub const ALL: [v1::Purpose; 4] = [
        v1::Purpose::PrepareMeeting,
        v1::Purpose::DraftPlan,
        v1::Purpose::FollowUp,
        v1::Purpose::Coordinate,
    ];

    /// The command-line / URL code of a purpose, e.g. `prepare-meeting`.
    pub fn code(self) -> &'static str {
        match self {
            v1::Purpose::Unspecified => "unspecified",
            v1::Purpose::PrepareMeeting => "prepare-meeting",
            v1::Purpose::DraftPlan => "draft-plan",
            v1::Purpose::FollowUp => "follow-up",
            v1::Purpose::Coordinate => "coordinate",
        }
    }

    /// Parses a purpose code (`prepare-meeting`, `draft-plan`, `follow-up`, `coordinate`).
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.code() == code)
    }
}

#[cfg(test)]
mod tests {
    use super::v1::{Case, Existence, Full, Purpose, Selected, Tier};

    fn full_case() -> Case {
        Case {
            case_id: "X-1".into(),
            subject_cpr: "0101901234".into(),
            tier: Tier::Full as i32,
            existence: Some(Existence::default()),
            selected: Some(Selected::default()),
            full: Some(Full::default()),
            ..Case::default()
        }
    }

    #[test]
    fn restrict_drops_every_part_above_the_tier() {
        for tier in Tier::ALL {
            let mut case = full_case();
            case.restrict_to(tier);
            assert_eq!(case.carried_tier(), tier);
            assert_eq!(case.tier, tier as i32);
        }
    }

    #[test]
    fn purpose_codes_round_trip() {
        for p in [
            Purpose::PrepareMeeting,
            Purpose::DraftPlan,
            Purpose::FollowUp,
            Purpose::Coordinate,
        ] {
            assert_eq!(Purpose::from_code(p.code()), Some(p));
        }
        assert_eq!(Purpose::from_code("unspecified"), None);
        assert_eq!(Purpose::from_code("Prepare-Meeting"), None);
    }
}
