//! CPR numbers (Danish personal identification numbers).
//!
//! A CPR number is `DDMMYY-SSSS`: the birth date, then a four-digit sequence number whose first
//! digit, together with the two-digit year, gives the century. We accept `DDMMYYSSSS` and
//! `DDMMYY-SSSS`, and reject anything whose birth date does not exist. We deliberately do not
//! apply the modulus-11 check: numbers issued since 2007 need not satisfy it.
//!
//! [`Cpr`]'s `Debug` and `Display` never print the number: a CPR must not reach a log line by
//! accident. Use [`Cpr::as_str`] where the number itself is needed (the wire, the audit store).
//!
//! Its own crate so that everything holding a CPR — the wire contract, the audit store, the
//! registry — holds this type, without the audit store depending on the wire contract.

use chrono::NaiveDate;
use std::fmt;

/// Why a string is not a CPR number. The messages are safe to show to a caller: they never
/// repeat the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CprError {
    #[error("CPR number is missing")]
    Missing,
    #[error("CPR number must be 10 digits, as DDMMYYSSSS or DDMMYY-SSSS")]
    Format,
    #[error("CPR number does not start with a valid birth date (DDMMYY)")]
    Date,
}

/// A syntactically valid CPR number with an existing birth date, normalised to 10 digits.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cpr {
    digits: String,
    birth_date: NaiveDate,
}

impl Cpr {
    /// Parses `DDMMYYSSSS` or `DDMMYY-SSSS`.
    pub fn parse(input: &str) -> Result<Self, CprError> {
        if input.is_empty() {
            return Err(CprError::Missing);
        }
        let bytes = input.as_bytes();
        let digits: String = match bytes.len() {
            10 => input.to_owned(),
            11 if bytes[6] == b'-' => {
                let mut s = String::with_capacity(10);
                s.push_str(&input[..6]);
                s.push_str(&input[7..]);
                s
            }
            _ => return Err(CprError::Format),
        };
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CprError::Format);
        }
        let birth_date = birth_date_of(digits.as_bytes()).ok_or(CprError::Date)?;
        Ok(Cpr { digits, birth_date })
    }

    /// Builds a CPR number from a birth date and a sequence number, choosing nothing: the caller
    /// must pick a sequence number whose first digit encodes the date's century. Returns `None`
    /// when it does not (or the sequence number has more than four digits).
    pub fn from_parts(birth_date: NaiveDate, sequence: u16) -> Option<Self> {
        use chrono::Datelike;
        if sequence > 9999 {
            return None;
        }
        let digits = format!(
            "{:02}{:02}{:02}{:04}",
            birth_date.day(),
            birth_date.month(),
            birth_date.year().rem_euclid(100),
            sequence
        );
        let cpr = Cpr::parse(&digits).ok()?;
        (cpr.birth_date == birth_date).then_some(cpr)
    }

    /// The 10 digits. Never log this.
    pub fn as_str(&self) -> &str {
        &self.digits
    }

    pub fn birth_date(&self) -> NaiveDate {
        self.birth_date
    }

    /// Whether the number satisfies the (pre-2007) modulus-11 check. Informational only: it is
    /// never a reason to reject a number.
    pub fn satisfies_modulus_11(&self) -> bool {
        const WEIGHTS: [u32; 10] = [4, 3, 2, 7, 6, 5, 4, 3, 2, 1];
        let sum: u32 = self
            .digits
            .bytes()
            .zip(WEIGHTS)
            .map(|(b, w)| u32::from(b - b'0') * w)
            .sum();
        sum.is_multiple_of(11)
    }
}

/// The birth date encoded by the first seven digits, using the century rule of the CPR office.
fn birth_date_of(d: &[u8]) -> Option<NaiveDate> {
    let two = |i: usize| u32::from(d[i] - b'0') * 10 + u32::from(d[i + 1] - b'0');
    let (day, month, yy) = (two(0), two(2), two(4));
    let century_digit = d[6] - b'0';
    let century = match century_digit {
        0..=3 => 1900,
        4 | 9 if yy <= 36 => 2000,
        4 | 9 => 1900,
        5..=8 if yy <= 57 => 2000,
        5..=8 => 1800,
        _ => return None,
    };
    let year = i32::try_from(century + yy).ok()?;
    NaiveDate::from_ymd_opt(year, month, day)
}

impl fmt::Debug for Cpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cpr(<redacted>)")
    }
}

impl fmt::Display for Cpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<cpr redacted>")
    }
}

/// Serialised as its 10 digits: the audit store's encoding, which its hashes cover.
impl serde::Serialize for Cpr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.digits)
    }
}

/// Deserialising parses: a stored or received value that is not a CPR number is an error whose
/// message does not repeat it.
impl<'de> serde::Deserialize<'de> for Cpr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Cpr::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap_or_default()
    }

    #[test]
    fn accepts_both_notations_and_normalises() {
        let a = Cpr::parse("0101901234").map(|c| c.as_str().to_owned());
        let b = Cpr::parse("010190-1234").map(|c| c.as_str().to_owned());
        assert_eq!(a, Ok("0101901234".to_owned()));
        assert_eq!(a, b);
    }

    #[test]
    fn rejects_wrong_length_and_non_digits() {
        for bad in [
            "010190123",
            "01019012345",
            "010190 1234",
            "0101901234 ",
            "01019-01234",
            "010190-123",
            "0101901-234",
            "01o1901234",
            "010190+1234",
            "٠١٠١٩٠١٢٣٤",
            "ＡＢＣ",
        ] {
            assert_eq!(Cpr::parse(bad), Err(CprError::Format), "{bad:?}");
        }
        assert_eq!(Cpr::parse(""), Err(CprError::Missing));
    }

    #[test]
    fn rejects_impossible_dates() {
        for bad in [
            "3201901234",
            "0013901234",
            "0000901234",
            "3104901234",
            "3002901234",
        ] {
            assert_eq!(Cpr::parse(bad), Err(CprError::Date), "{bad}");
        }
    }

    #[test]
    fn leap_days_follow_the_century() {
        // 29 Feb 1996 (digit 0-3 → 1900s): leap year.
        assert_eq!(
            Cpr::parse("2902961234").map(|c| c.birth_date()),
            Ok(date(1996, 2, 29))
        );
        // 29 Feb 1900 (digit 0-3 → 1900s): 1900 is not a leap year.
        assert_eq!(Cpr::parse("2902001234"), Err(CprError::Date));
        // 29 Feb 2000 (digit 4 and year ≤ 36 → 2000s): leap year.
        assert_eq!(
            Cpr::parse("2902004234").map(|c| c.birth_date()),
            Ok(date(2000, 2, 29))
        );
        // 29 Feb 1897 (digit 5-8 and year ≥ 58 → 1800s): not a leap year.
        assert_eq!(Cpr::parse("2902975234"), Err(CprError::Date));
        // 29 Feb 1896 (digit 5-8 and year ≥ 58 → 1800s): leap year.
        assert_eq!(
            Cpr::parse("2902965234").map(|c| c.birth_date()),
            Ok(date(1896, 2, 29))
        );
        // 29 Feb 2023 is not a date whatever the century.
        assert_eq!(Cpr::parse("2902235234"), Err(CprError::Date));
    }

    #[test]
    fn century_digit_rule() {
        let cases = [
            ("0101360000", 1936),
            ("0101363999", 1936),
            ("0101364000", 2036),
            ("0101374000", 1937),
            ("0101994999", 1999),
            ("0101005000", 2000),
            ("0101575000", 2057),
            ("0101588999", 1858),
            ("0101999000", 1999),
            ("0101369999", 2036),
            ("0101379999", 1937),
        ];
        for (input, year) in cases {
            use chrono::Datelike;
            assert_eq!(
                Cpr::parse(input).map(|c| c.birth_date().year()),
                Ok(year),
                "{input}"
            );
        }
    }

    #[test]
    fn does_not_apply_modulus_11() {
        let cpr = Cpr::parse("0101901235");
        assert!(cpr.is_ok());
        assert!(!cpr.map(|c| c.satisfies_modulus_11()).unwrap_or(true));
        // Born 1 Jan 2036, so certainly nobody's number; its weighted digit sum is 77 = 7 × 11.
        assert_eq!(
            Cpr::parse("0101364003").map(|c| c.satisfies_modulus_11()),
            Ok(true)
        );
    }

    #[test]
    fn from_parts_requires_a_matching_century_digit() {
        assert!(Cpr::from_parts(date(1985, 6, 15), 1234).is_some());
        assert!(Cpr::from_parts(date(2010, 6, 15), 4234).is_some());
        assert!(Cpr::from_parts(date(2010, 6, 15), 1234).is_none());
        assert!(Cpr::from_parts(date(1985, 6, 15), 10_000).is_none());
    }

    #[test]
    fn never_prints_the_number() {
        let cpr = Cpr::parse("0101901234").unwrap_or_else(|_| unreachable!());
        assert!(!format!("{cpr:?}").contains("0101901234"));
        assert!(!format!("{cpr}").contains("0101901234"));
    }

    #[test]
    fn serde_round_trips_as_digits_and_rejects_non_cprs_without_echoing_them() {
        let cpr = Cpr::parse("010190-1234").unwrap_or_else(|e| panic!("{e}"));
        let json = serde_json::to_string(&cpr).unwrap_or_default();
        assert_eq!(json, "\"0101901234\"");
        let back: Cpr = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, cpr);
        let err = serde_json::from_str::<Cpr>("\"3102901234\"")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("birth date"), "{err}");
        assert!(!err.contains("3102901234"), "{err}");
    }
}
