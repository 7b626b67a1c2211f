//! A deterministic synthetic Danish municipality for Samblik's demo, tests and benchmarks.
//!
//! [`generate()`] turns a seed and a citizen count into a [`Dataset`]: citizens with synthetic CPR
//! numbers, caseworkers per department, and cases of the plan types of the three departments
//! (child welfare: SL §§ 54, 57 c, 140; jobcenter: LAB §§ 27, 30 a; integration: IL § 19) in
//! proportions shaped like the 2017 Deloitte analysis: Min Plan dominant, about one plan in ten
//! held by a citizen with another plan, about 3 % held by citizens with three or more.
//! [`store`] writes it to and reads it from a data directory.
//!
//! No real CPR number is ever produced: see [`model::Citizen::cpr`].

pub mod generate;
pub mod model;
pub mod store;

pub use generate::{SynthConfig, SynthError, generate};
pub use model::{
    CaseRecord, CaseState, Caseworker, Citizen, Dataset, Department, Document, DocumentKind,
    FLAG_ADDRESS_PROTECTION, FLAG_HONOUR_RELATED_CONFLICT, FLAG_POLICE_INFORMATION, Goal,
    Intervention, Municipality, PlanType,
};
pub use store::{DepartmentData, StoreError};
