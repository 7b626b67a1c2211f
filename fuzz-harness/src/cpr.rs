//! `Cpr::parse`, as validation calls it on a request's `cpr` field.

use chrono::Datelike;
use samblik_proto::{Cpr, CprError};

pub fn run(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    match Cpr::parse(input) {
        Ok(cpr) => {
            let digits = cpr.as_str();
            // Normalised: ten ASCII digits, the input without its hyphen.
            assert_eq!(digits.len(), 10);
            assert!(digits.bytes().all(|b| b.is_ascii_digit()));
            assert_eq!(digits, input.replacen('-', "", 1));
            // Round trip: the normalised form parses to the same number and birth date.
            assert_eq!(Cpr::parse(digits).as_ref(), Ok(&cpr));
            // The birth date is the one the digits spell (day and month).
            let date = cpr.birth_date();
            assert_eq!((date.day(), date.month()), day_month(digits));
            // Neither Debug nor Display ever shows the number.
            assert!(!format!("{cpr:?}{cpr}").contains(digits));
            let _ = cpr.satisfies_modulus_11();
        }
        Err(CprError::Missing) => assert!(input.is_empty()),
        Err(CprError::Date) => {
            // Only a well-formed number can have a bad date.
            let digits = input.replacen('-', "", 1);
            assert_eq!(digits.len(), 10);
            assert!(digits.bytes().all(|b| b.is_ascii_digit()));
        }
        Err(CprError::Format) => {}
    }
}

fn day_month(digits: &str) -> (u32, u32) {
    let n = |s: &str| s.parse::<u32>().unwrap();
    (n(&digits[0..2]), n(&digits[2..4]))
}
