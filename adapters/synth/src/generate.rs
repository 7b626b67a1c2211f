//! The generator. (Being written: see the helper's task.)

use crate::model::{Dataset, Municipality};
use chrono::NaiveDate;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthConfig {
    pub seed: u64,
    /// Number of inhabitants; about 16 % of them get at least one plan.
    pub citizens: usize,
    /// The data set's "today"; see [`Municipality::reference_date`].
    pub reference_date: NaiveDate,
}

impl SynthConfig {
    /// The default reference date, fixed so that a seed always yields the same data.
    pub const DEFAULT_REFERENCE_DATE: (i32, u32, u32) = (2026, 11, 1);

    pub fn new(seed: u64, citizens: usize) -> Self {
        let (y, m, d) = Self::DEFAULT_REFERENCE_DATE;
        SynthConfig {
            seed,
            citizens,
            reference_date: NaiveDate::from_ymd_opt(y, m, d).unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SynthError {
    #[error("--citizens must be at least {min}")]
    TooFewCitizens { min: usize },
}

pub fn generate(config: &SynthConfig) -> Result<Dataset, SynthError> {
    Ok(Dataset {
        municipality: Municipality {
            name: "Sønderå Kommune".into(),
            code: "999".into(),
            seed: config.seed,
            reference_date: config.reference_date,
            mail_domain: "sonderaa.kommune.example".into(),
        },
        citizens: Vec::new(),
        caseworkers: Vec::new(),
        cases: Vec::new(),
    })
}
