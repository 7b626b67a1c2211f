//! Replays every committed fuzz input — the corpus of each target (`fuzz/corpus/<target>/`) and
//! the crash inputs kept as regressions (`fuzz/artifacts/<target>/`) — through the target's
//! function, on stable, so CI checks them on every run without a fuzzer.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `dir`, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable folder entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let (_, run) = samblik_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a known target");
    let corpus = files(&fuzz_dir().join("corpus").join(target));
    // An empty or missing corpus would pass without testing anything.
    assert!(
        corpus.len() >= 5,
        "fuzz/corpus/{target} holds {} inputs; it must hold the committed corpus",
        corpus.len()
    );
    let regressions = files(&fuzz_dir().join("artifacts").join(target));
    for path in corpus.iter().chain(&regressions) {
        let data = std::fs::read(path).expect("a readable input");
        // The target panics on a broken invariant; name the input that broke it.
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{} fails its target", path.display());
    }
}

#[test]
fn cpr() {
    replay("cpr");
}

#[test]
fn token() {
    replay("token");
}

#[test]
fn cert_name() {
    replay("cert_name");
}

#[test]
fn lookup_request() {
    replay("lookup_request");
}

#[test]
fn source_answer() {
    replay("source_answer");
}

#[test]
fn config() {
    replay("config");
}

/// No committed input holds a CPR number someone could have: each one whose birth date is
/// between 1860 and today (the oldest a person alive when the register began in 1968 could be
/// born) must be replaced by a synthetic one, e.g. born in 2036.
#[test]
fn no_input_holds_a_possibly_real_cpr_number() {
    let today = chrono::Utc::now().date_naive();
    let oldest = chrono::NaiveDate::from_ymd_opt(1860, 1, 1).expect("a date");
    let mut found = Vec::new();
    for kind in ["corpus", "artifacts"] {
        for dir in files_and_dirs(&fuzz_dir().join(kind)) {
            for path in files(&dir) {
                let data = std::fs::read(&path).expect("a readable input");
                for cpr in cpr_numbers(&data) {
                    if (oldest..=today).contains(&cpr.birth_date()) {
                        found.push(path.display().to_string());
                    }
                }
            }
        }
    }
    assert!(found.is_empty(), "possibly real CPR numbers in {found:?}");
}

fn files_and_dirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .map(|e| e.expect("a readable folder entry").path())
        .filter(|p| p.is_dir())
        .collect()
}

/// Every run of exactly ten digits (or six, a hyphen, four) in `data` that parses as a CPR
/// number. Longer runs of digits (a certificate's time, a fingerprint in hex) are not numbers
/// anyone has.
fn cpr_numbers(data: &[u8]) -> Vec<samblik_proto::Cpr> {
    let digit = |i: Option<usize>| i.and_then(|i| data.get(i)).is_some_and(u8::is_ascii_digit);
    let mut numbers = Vec::new();
    for len in [10, 11] {
        for (start, window) in data.windows(len).enumerate() {
            if digit(start.checked_sub(1)) || digit(Some(start + len)) {
                continue;
            }
            if let Ok(text) = std::str::from_utf8(window)
                && let Ok(cpr) = samblik_proto::Cpr::parse(text)
            {
                numbers.push(cpr);
            }
        }
    }
    numbers
}

/// Every cargo-fuzz target has a function here and a replay above, and no function lacks a
/// target.
#[test]
fn every_fuzz_target_is_replayed() {
    let mut targets: Vec<String> = files(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .collect();
    targets.sort();
    let mut known: Vec<String> = samblik_fuzz::TARGETS
        .iter()
        .map(|(name, _)| (*name).to_owned())
        .collect();
    known.sort();
    assert_eq!(targets, known);
}
