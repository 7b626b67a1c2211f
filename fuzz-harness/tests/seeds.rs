//! Writes the seed inputs each corpus started from (`seed-*` in `fuzz/corpus/<target>/`). Run by
//! hand when a target's input format changes:
//! `cargo test -p samblik-fuzz --test seeds -- --ignored`. Synthetic data only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use prost::Message;
use samblik_fuzz::fixture::{AUDIENCE, ISSUER, config_text};
use samblik_fuzz::token::HEADER;
use samblik_proto::source::v1::FindCasesResponse;
use samblik_proto::v1::{
    Case, CaseState, CaseType, Existence, Full, Goal, Intervention, LookupRequest, Purpose,
    Selected,
};
use serde_json::json;
use std::path::Path;

const CPR: &str = "0101364003";

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("corpus folder");
    std::fs::write(dir.join(format!("seed-{name}")), data).expect("seed");
}

fn with_selector(selector: u8, message: &impl Message) -> Vec<u8> {
    let mut data = vec![selector];
    data.extend(message.encode_to_vec());
    data
}

#[test]
#[ignore = "writes the seed corpora"]
fn write_seeds() {
    tokens();
    lookup_requests();
    source_answers();
    configs();
}

fn tokens() {
    // Valid until 2100, so the corpus keeps reaching the claim checks.
    let claims = |extra: serde_json::Value| {
        let mut c = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": "cw-1", "name": "Case Worker",
            "department": "jobcenter", "municipality": "0999", "roles": ["caseworker"],
            "iat": 1_700_000_000u64, "nbf": 1_700_000_000u64, "exp": 4_102_444_800u64,
        });
        for (k, v) in extra.as_object().expect("an object") {
            c[k] = v.clone();
        }
        serde_json::to_vec(&c).expect("JSON")
    };
    write("token", "caseworker", &claims(json!({})));
    write(
        "token",
        "mapped-role",
        &claims(json!({"roles": "Sagsbehandler auditor"})),
    );
    write(
        "token",
        "leader",
        &claims(json!({"roles": ["department_leader"]})),
    );
    write(
        "token",
        "citizen",
        &claims(json!({"roles": ["citizen"], "cpr": CPR, "department": null})),
    );
    write(
        "token",
        "aud-array",
        &claims(json!({"aud": ["other", AUDIENCE]})),
    );
    write(
        "token",
        "expired",
        &claims(json!({"exp": 1_000_000_000u64})),
    );
    write(
        "token",
        "not-yet",
        &claims(json!({"nbf": 4_000_000_000u64})),
    );
    write(
        "token",
        "fraction",
        &claims(json!({"exp": 4_102_444_800.5f64})),
    );
    write("token", "huge-exp", &claims(json!({"exp": 1e300f64})));
    write(
        "token",
        "nested-claim",
        &claims(json!({"realm": {"roles": ["admin"]}})),
    );
    let headed = |header: &str| {
        let mut data = header.as_bytes().to_vec();
        data.push(0);
        data.extend(claims(json!({})));
        data
    };
    write("token", "header", &headed(HEADER));
    write(
        "token",
        "header-es256",
        &headed(r#"{"alg":"ES256","typ":"at+jwt","kid":"fuzz-1"}"#),
    );
    write(
        "token",
        "header-no-kid",
        &headed(r#"{"alg":"EdDSA","typ":"at+jwt"}"#),
    );
    write(
        "token",
        "header-crit",
        &headed(r#"{"alg":"EdDSA","typ":"at+jwt","kid":"fuzz-1","crit":["x"]}"#),
    );
    write(
        "token",
        "header-id-token",
        &headed(r#"{"alg":"EdDSA","typ":"JWT","kid":"fuzz-1"}"#),
    );
    write(
        "token",
        "compact",
        b"eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln",
    );
}

fn lookup_requests() {
    let request = |sources: &[&str], reason: &str, purpose: Purpose| LookupRequest {
        cpr: CPR.into(),
        purpose: purpose as i32,
        sources: sources.iter().map(|s| (*s).to_owned()).collect(),
        break_glass_reason: reason.into(),
    };
    let reason = "Acute concern reported by the school today";
    let plain = request(&[], "", Purpose::PrepareMeeting);
    write("lookup_request", "plain", &with_selector(0, &plain));
    write("lookup_request", "leader", &with_selector(1, &plain));
    write("lookup_request", "system", &with_selector(2, &plain));
    write("lookup_request", "no-role", &with_selector(3, &plain));
    write(
        "lookup_request",
        "one-source",
        &with_selector(
            0,
            &request(&["jobcenter", "jobcenter"], "", Purpose::Coordinate),
        ),
    );
    write(
        "lookup_request",
        "break-glass",
        &with_selector(
            4 | 16,
            &request(&["child-welfare"], reason, Purpose::FollowUp),
        ),
    );
    write(
        "lookup_request",
        "unknown-source",
        &with_selector(0, &request(&["nowhere"], "", Purpose::DraftPlan)),
    );
    let mut hyphen = plain.clone();
    hyphen.cpr = "010136-4003".into();
    write("lookup_request", "hyphen", &with_selector(8, &hyphen));
    write(
        "lookup_request",
        "no-purpose",
        &with_selector(0, &request(&[], "", Purpose::Unspecified)),
    );
    write(
        "lookup_request",
        "control-reason",
        &with_selector(
            4,
            &request(&[], "line one\nline two of the reason", Purpose::FollowUp),
        ),
    );
}

fn case(id: &str, cpr: &str, code: &str) -> Case {
    Case {
        case_id: id.into(),
        subject_cpr: cpr.into(),
        tier: 3,
        existence: Some(Existence {
            case_type: Some(CaseType {
                code: code.into(),
                name: "Case".into(),
                legal_paragraph: "§ 1".into(),
            }),
            state: CaseState::Open as i32,
            opened_on: "2025-01-02".into(),
            ..Existence::default()
        }),
        selected: Some(Selected {
            interventions: vec![Intervention {
                description: "Mentor".into(),
                ..Intervention::default()
            }],
            situation: "Situation".into(),
            goals: vec![Goal {
                description: "Goal".into(),
                ..Goal::default()
            }],
            next_follow_up_on: "2025-03-01".into(),
            assessment_summary: "Assessment".into(),
            residence: "Street 1".into(),
        }),
        full: Some(Full::default()),
        sensitivity: Vec::new(),
        ..Case::default()
    }
}

fn source_answers() {
    let answer = |cases: Vec<Case>| FindCasesResponse {
        cases,
        as_of: Some(prost_types::Timestamp {
            seconds: 1_750_000_000,
            nanos: 0,
        }),
    };
    let own = answer(vec![
        case("JC-1", CPR, "LAB-30a"),
        case("JC-2", CPR, "LAB-27"),
    ]);
    // Selector: caller, relation (4), source (8 × index), purpose (32 × index), reason (128).
    write(
        "source_answer",
        "jobcenter-related",
        &with_selector(4 | 8, &own),
    );
    write(
        "source_answer",
        "jobcenter-unrelated",
        &with_selector(8, &own),
    );
    write(
        "source_answer",
        "jobcenter-break-glass",
        &with_selector(128 | 8, &own),
    );
    let child = answer(vec![
        case("CW-1", CPR, "SL-140"),
        case("CW-2", CPR, "SL-12a"),
    ]);
    write(
        "source_answer",
        "child-welfare-leader",
        &with_selector(1 | 4, &child),
    );
    let mut flagged = case("CW-3", CPR, "SL-54");
    flagged.sensitivity = vec!["address-protection".into()];
    write(
        "source_answer",
        "address-protection",
        &with_selector(1 | 4, &answer(vec![flagged])),
    );
    let foreign = answer(vec![
        case("JC-9", "0202364003", "LAB-27"),
        case("JC-1", CPR, "LAB-27"),
    ]);
    write(
        "source_answer",
        "foreign-case",
        &with_selector(4 | 8, &foreign),
    );
    let mut bare = case("", CPR, "LAB-27");
    bare.existence = None;
    write(
        "source_answer",
        "malformed",
        &with_selector(4 | 8, &answer(vec![bare])),
    );
    let mut no_time = own.clone();
    no_time.as_of = None;
    write("source_answer", "no-as-of", &with_selector(4 | 8, &no_time));
    write(
        "source_answer",
        "integration-system",
        &with_selector(2 | 4 | 16, &answer(vec![case("IN-1", CPR, "IL-19")])),
    );
}

fn configs() {
    write("config", "fixture", config_text().as_bytes());
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/samblik.example.toml");
    write(
        "config",
        "deploy-example",
        &std::fs::read(example).expect("the deploy example"),
    );
    write(
        "config",
        "minimal",
        br#"[server]
listen = "127.0.0.1:0"
[auth]
issuer = "https://idp.example"
audience = "samblik"
[[auth.keys]]
kid = "k1"
algorithm = "ES256"
public_key_file = "k1.pem"
[[sources]]
id = "jobcenter"
department = "Jobcenter"
endpoint = "http://127.0.0.1:1"
[audit]
path = "audit.db"
signing_key_file = "audit.key"
data_key_file = "audit-data.keys"
"#,
    );
    write(
        "config",
        "bad-values",
        br#"[server]
listen = "127.0.0.1:0"
default_deadline_ms = 0
max_request_bytes = 18446744073709551615
[auth]
issuer = " "
audience = "samblik"
leeway_secs = 301
algorithms = []
[auth.claims.role_names]
Leder = "boss"
[policy]
break_glass_min_reason = 100000
[[sources]]
id = "Job Center"
department = "Jobcenter"
endpoint = "ftp://127.0.0.1:1"
[audit]
path = "audit.db"
signing_key_file = "audit.key"
data_key_file = "audit-data.keys"
retention_days = 0
"#,
    );
    write(
        "config",
        "jwks-tls",
        br#"[server]
listen = "127.0.0.1:0"
[server.tls]
cert_file = "c.pem"
key_file = "k.pem"
client_certs = "required"
client_ca_file = "ca.pem"
revoked = ["serial:01", "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"]
[[server.tls.systems]]
name = "DUBU"
sources = ["jobcenter"]
purposes = ["follow-up"]
[auth]
issuer = "https://idp.example"
audience = "samblik"
[auth.jwks]
url = "https://idp.example/jwks"
[[sources]]
id = "jobcenter"
department = "Jobcenter"
endpoint = "http://127.0.0.1:1"
[audit]
postgres_url_env = "SAMBLIK_PG"
signing_key_file = "audit.key"
data_key_file = "audit-data.keys"
"#,
    );
}
