//! What keeping no CPR number in clear costs per record: the citizen's keyed hash for the index
//! column, and the body sealed — a body as the embedded store seals it once compressed (~150
//! bytes), and whole, as PostgreSQL stores it (~1.2 KB, base64) — and opened again.
//!
//! Run: `cargo bench -p samblik-audit --bench atrest`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use samblik_audit::{AtRestKeys, Cpr, Sealed};
use std::hint::black_box;

/// A lookup record's canonical JSON of about the size the gateway writes.
fn body(bytes: usize) -> String {
    let mut body = String::from(r#"{"chain":"gw-1","seq":1,"cpr":"0101901235","sources":["#);
    while body.len() < bytes {
        body.push_str(r#"{"source_id":"jobcenter","status":"ok","cases":[]},"#);
    }
    body.push_str("]}");
    body
}

fn at_rest(c: &mut Criterion) {
    let keys = AtRestKeys::generate().unwrap();
    let cpr = Cpr::parse("0101901235").unwrap();
    c.bench_function("index", |b| b.iter(|| keys.index(black_box(&cpr))));
    let compressed = body(150);
    c.bench_function("seal-compressed-body", |b| {
        b.iter(|| {
            keys.seal(Sealed::Body, black_box(compressed.as_bytes()))
                .unwrap()
        })
    });
    let whole = body(1200);
    c.bench_function("seal-whole-body-as-text", |b| {
        b.iter(|| keys.seal_text(Sealed::Body, black_box(&whole)).unwrap())
    });
    let sealed = keys.seal_text(Sealed::Body, &whole).unwrap();
    c.bench_function("open-whole-body-as-text", |b| {
        b.iter(|| keys.open_text(Sealed::Body, black_box(&sealed)).unwrap())
    });
}

criterion_group!(benches, at_rest);
criterion_main!(benches);
