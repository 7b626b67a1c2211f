//! A call's deadline on the wire: the `grpc-timeout` header, read by the source server and the
//! gateway and written by [`crate::GrpcSource`].

use std::time::Duration;
use tokio::time::Instant;

/// The longest `grpc-timeout` honoured as given; a longer one is taken as this. No source call
/// is meant to take an hour, and the header allows 99,999,999 hours (11,000 years), which would
/// overflow a clock's arithmetic and panic tonic's own formatting of it.
pub const MAX_GRPC_TIMEOUT: Duration = Duration::from_secs(3600);

/// Parses a `grpc-timeout` header value (e.g. `1500m`, `2S`): up to 8 digits and a unit.
/// Anything else is `None`, never a panic.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The deadline a request's `grpc-timeout` sets when it arrives at `arrived` (on tokio's
/// clock), at most [`MAX_GRPC_TIMEOUT`] away; `None` without a valid header.
pub fn deadline_of(metadata: &tonic::metadata::MetadataMap, arrived: Instant) -> Option<Instant> {
    let timeout = metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)?;
    Some(arrived + timeout.min(MAX_GRPC_TIMEOUT))
}

/// The `grpc-timeout` to send for `deadline`: what is left of it now, at most
/// [`MAX_GRPC_TIMEOUT`]; `None` when nothing is left.
pub fn remaining(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    (!left.is_zero()).then(|| left.min(MAX_GRPC_TIMEOUT))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(
            parse_grpc_timeout("1500m"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1M"), Some(Duration::from_secs(60)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            parse_grpc_timeout("250000u"),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_grpc_timeout("5n"), Some(Duration::from_nanos(5)));
        for bad in [
            "",
            "m",
            "10",
            "10x",
            "-1S",
            "123456789S",
            "1.5S",
            "+1S",
            "١S",
        ] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    fn metadata(value: &str) -> tonic::metadata::MetadataMap {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("grpc-timeout", value.parse().unwrap());
        metadata
    }

    #[tokio::test(start_paused = true)]
    async fn an_absurd_timeout_is_capped_and_a_bad_one_ignored() {
        let now = Instant::now();
        assert_eq!(
            deadline_of(&metadata("250m"), now),
            Some(now + Duration::from_millis(250))
        );
        assert_eq!(
            deadline_of(&metadata("99999999H"), now),
            Some(now + MAX_GRPC_TIMEOUT)
        );
        assert_eq!(deadline_of(&metadata("soon"), now), None);
        assert_eq!(deadline_of(&tonic::metadata::MetadataMap::new(), now), None);
    }

    #[tokio::test(start_paused = true)]
    async fn what_remains_is_never_more_than_is_left() {
        let deadline = Instant::now() + Duration::from_millis(700);
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(remaining(deadline), Some(Duration::from_millis(500)));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(remaining(deadline), None);
        let far = Instant::now() + MAX_GRPC_TIMEOUT * 3;
        assert_eq!(remaining(far), Some(MAX_GRPC_TIMEOUT));
    }
}
