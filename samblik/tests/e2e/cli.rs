//! The `samblik` command as a newcomer uses it: the README's demo, token, lookup and grpcurl
//! steps, `synth` at a real municipality's size, a lone `source` over mutual TLS (plaintext only
//! with `--insecure`), and `serve` refusing bad config before it binds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Running, SAMBLIK, config_head};

fn samblik(args: &[&str]) -> Output {
    Command::new(SAMBLIK).args(args).output().unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "samblik failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// Polls for `path` to exist (the demo writes demo.json once everything listens).
fn wait_for_file(path: &Path, child: &mut Running) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !path.exists() {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!("the demo exited early: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "no {} after 120 s",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `samblik demo` in `dir` with `extra` arguments and waits for its `demo.json`.
fn start_demo(dir: &Path, extra: &[&str], stderr: Stdio) -> (Running, serde_json::Value) {
    let mut args = vec![
        "demo",
        "--dir",
        dir.to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
        "--panel-addr",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let mut demo = Running(
        Command::new(SAMBLIK)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap(),
    );
    let facts_path = dir.join("demo.json");
    wait_for_file(&facts_path, &mut demo);
    let facts = serde_json::from_slice(&std::fs::read(&facts_path).unwrap()).unwrap();
    (demo, facts)
}

#[test]
fn the_readme_demo_token_lookup_and_grpcurl_steps_work() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let (demo, facts) = start_demo(dir.path(), &["--citizens", "5000"], Stdio::null());

    let all_users = facts["users"].as_array().unwrap();
    let roles: Vec<(&str, &str)> = all_users
        .iter()
        .map(|u| {
            (
                u["role"].as_str().unwrap(),
                u["department"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        [
            ("caseworker", "child-welfare"),
            ("caseworker", "jobcenter"),
            ("caseworker", "integration"),
            ("caseworker", "adult-social"),
            ("admin", "administration"),
            ("auditor", "administration"),
        ]
    );
    let users = &all_users[..4];
    for user in users {
        assert!(!user["citizens"].as_array().unwrap().is_empty(), "{user}");
        assert!(user["name"].as_str().is_some_and(|n| !n.is_empty()));
    }
    let samples = facts["sample_citizens"].as_array().unwrap();
    let labels: Vec<&str> = samples
        .iter()
        .map(|s| s["label"].as_str().unwrap())
        .collect();
    assert!(
        labels.contains(&"all-departments")
            && labels.contains(&"honour-related-conflict")
            && labels.contains(&"no-cases"),
        "{labels:?}"
    );
    let everywhere = samples[0]["cpr"].as_str().unwrap();
    let user = users[1]["id"].as_str().unwrap();
    assert!(
        users[1]["citizens"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == everywhere)
    );

    // `samblik token`, as the README says.
    let token = stdout(&samblik(&["token", "--dir", dir_arg, "--user", user]))
        .trim()
        .to_owned();
    assert_eq!(token.split('.').count(), 3);
    let unknown = samblik(&["token", "--dir", dir_arg, "--user", "nobody"]);
    assert!(!unknown.status.success());

    // The demo runs TLS by default: the gateway's URL is https and the CA is in demo.json.
    let url = facts["gateway_url"].as_str().unwrap();
    // The README sends people to the panel at demo.json's panel_url, over TLS.
    assert!(
        facts["panel_url"]
            .as_str()
            .unwrap()
            .starts_with("https://127.0.0.1:")
    );
    assert!(url.starts_with("https://"), "{url}");
    let ca = facts["ca_file"].as_str().unwrap();
    let (cert, key) = (
        facts["fagsystem_cert_file"].as_str().unwrap(),
        facts["fagsystem_key_file"].as_str().unwrap(),
    );
    let lookup = |extra: &[&str]| {
        let mut args = vec![
            "lookup",
            "--addr",
            url,
            "--token",
            &token,
            "--cpr",
            everywhere,
            "--purpose",
            "prepare-meeting",
        ];
        args.extend_from_slice(extra);
        samblik(&args)
    };
    // `samblik health`, as a container's health check runs it: the whole server, and the
    // lookup service by name, are SERVING; an unknown service name is not.
    let health_of =
        |option, value| samblik(&["health", "--addr", url, "--cacert", ca, option, value]);
    let health = |service| health_of("--service", service);
    for service in ["", "samblik.v1.LookupService"] {
        let answer = health(service);
        assert!(answer.status.success(), "{service:?}: {answer:?}");
        assert_eq!(stdout(&answer).trim(), "SERVING");
    }
    assert!(!health("nope.Nope").status.success());
    // The name the certificate must carry, where the probe dials an address it does not name.
    let named = |name| health_of("--tls-server-name", name);
    assert!(named("localhost").status.success());
    assert!(!named("gateway.sonderaa.invalid").status.success());
    // Without the demo CA the gateway's certificate is not trusted.
    assert!(!samblik(&["health", "--addr", url]).status.success());
    assert!(!lookup(&[]).status.success());
    // As the sample fagsystem, with its client certificate (mutual TLS).
    let as_fagsystem = lookup(&["--cacert", ca, "--cert", cert, "--key", key]);
    assert!(as_fagsystem.status.success(), "{as_fagsystem:?}");

    // `samblik lookup`: the readable overview names all four departments.
    let overview = stdout(&lookup(&["--cacert", ca]));
    for name in [
        "Børne- og Familieafdelingen",
        "Jobcenter",
        "Integrationsafdelingen",
        "Voksenområdet",
    ] {
        assert!(overview.contains(name), "{name} missing in\n{overview}");
    }
    assert_eq!(overview.matches("data as of").count(), 4, "{overview}");
    assert!(overview.contains("responsible: "));

    // The data-protection officer's dry run: what would the jobcenter caseworker see, and why —
    // without any case content.
    let dpo = stdout(&samblik(&["token", "--dir", dir_arg, "--user", "dpo-001"]))
        .trim()
        .to_owned();
    // `samblik policy explain` for the jobcenter caseworker, with `as_token`.
    let explain = |as_token: &str| {
        samblik(&[
            "policy",
            "explain",
            "--addr",
            url,
            "--cacert",
            ca,
            "--token",
            as_token,
            "--cpr",
            everywhere,
            "--purpose",
            "prepare-meeting",
            "--caller-id",
            user,
            "--caller-department",
            "jobcenter",
        ])
    };
    let explained = stdout(&explain(&dpo));
    assert!(
        explained.contains("Relation to the citizen: yes"),
        "{explained}"
    );
    assert!(
        explained.contains("on basis statute existence-and-contact"),
        "{explained}"
    );
    assert!(explained.contains("on basis own-department"), "{explained}");
    assert!(
        !explained.contains("responsible"),
        "content leaked: {explained}"
    );
    // A caseworker may not ask for explanations.
    let refused = explain(&token);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("PermissionDenied"));
    // With the refusal's reason, for scripts to branch on.
    assert!(String::from_utf8_lossy(&refused.stderr).contains("PermissionDenied (ROLE_REQUIRED)"));

    // The auditor finds those lookups and exports them; the citizen sees who looked.
    let as_user = |user: &str| {
        stdout(&samblik(&["token", "--dir", dir_arg, "--user", user]))
            .trim()
            .to_owned()
    };
    let audit = |command: &[&str], as_token: &str| {
        let mut args = vec!["audit"];
        args.extend_from_slice(command);
        args.extend_from_slice(&["--addr", url, "--cacert", ca, "--token", as_token]);
        samblik(&args)
    };
    let auditor = as_user("aud-001");
    let found = stdout(&audit(&["search", "--cpr", everywhere], &auditor));
    assert!(
        found.contains(user) && found.contains("answered"),
        "{found}"
    );
    assert!(found.contains("policy-explained"), "{found}");
    // The citizen's records exported as `format`, read back.
    let export = |format: &str| {
        let out = dir.path().join(format!("export.{format}"));
        let exported = audit(
            &[
                "export",
                "--cpr",
                everywhere,
                "--format",
                format,
                "--out",
                out.to_str().unwrap(),
            ],
            &auditor,
        );
        assert!(exported.status.success(), "{exported:?}");
        std::fs::read_to_string(&out).unwrap()
    };
    let csv = export("csv");
    assert!(csv.starts_with("at,chain,seq,request_id,action"), "{csv}");
    assert_eq!(
        csv.lines().filter(|l| l.contains(",lookup,")).count(),
        2,
        "{csv}"
    );
    // The dry run's record names each case the officer learnt of, and its type as what was seen.
    let explained: Vec<serde_json::Value> = export("jsonl")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["action"] == "policy-explained")
        .collect();
    assert_eq!(explained.len(), 1, "{explained:?}");
    let cases: Vec<&serde_json::Value> = explained[0]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["cases"].as_array().unwrap())
        .collect();
    assert!(!cases.is_empty(), "{explained:?}");
    for case in cases {
        assert_eq!(case["tier"], 0, "{case}");
        assert_eq!(
            case["fields"],
            serde_json::json!(["existence.case_type"]),
            "{case}"
        );
    }
    let refused = audit(&["search"], &token);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("PermissionDenied"));
    let citizen = as_user(&format!("citizen:{everywhere}"));
    let mine = stdout(&audit(&["my-log"], &citizen));
    assert!(
        mine.contains("(jobcenter)") && mine.contains("looked up your cases"),
        "{mine}"
    );
    let queue = stdout(&audit(&["review"], &auditor));
    assert!(queue.contains("item(s) to review"), "{queue}");

    // The README's grpcurl example, exactly as demo.json spells it.
    let example = facts["grpcurl_example"].as_str().unwrap();
    assert!(example.contains(&format!("-cacert {ca}")), "{example}");
    match Command::new("sh")
        .args(["-c", example])
        .env("TOKEN", &token)
        .output()
    {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                text.matches("SOURCE_STATUS_OK").count(),
                samblik_synth::Department::ALL.len(),
                "{text}"
            );
            assert!(text.contains("\"responsible\""), "{text}");
        }
        Ok(out)
            if std::env::var_os("SAMBLIK_REQUIRE_GRPCURL").is_none()
                && String::from_utf8_lossy(&out.stderr).contains("not found") =>
        {
            eprintln!("grpcurl is not installed; the README's test command installs it");
        }
        other => panic!("grpcurl example failed: {other:?}"),
    }

    // Ctrl-C / SIGTERM stops the whole demo cleanly.
    assert!(demo.terminate().success());
}

#[test]
fn demo_insecure_runs_plaintext_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let (mut demo, facts) = start_demo(
        dir.path(),
        &["--citizens", "2000", "--insecure"],
        Stdio::piped(),
    );
    let url = facts["gateway_url"].as_str().unwrap();
    assert!(url.starts_with("http://"), "{url}");
    assert!(facts["ca_file"].is_null());
    assert!(
        !dir.path().join("tls").exists(),
        "certificates made for --insecure"
    );
    assert!(
        facts["grpcurl_example"]
            .as_str()
            .unwrap()
            .starts_with("grpcurl -plaintext ")
    );
    let user = facts["users"][0]["id"].as_str().unwrap();
    let cpr = facts["sample_citizens"][0]["cpr"].as_str().unwrap();
    let token = stdout(&samblik(&["token", "--dir", dir_arg, "--user", user]))
        .trim()
        .to_owned();
    let out = samblik(&[
        "lookup",
        "--addr",
        url,
        "--token",
        &token,
        "--cpr",
        cpr,
        "--purpose",
        "prepare-meeting",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out).matches("data as of").count(), 4);
    // The warning is in the log.
    let mut stderr = demo.0.stderr.take().unwrap();
    assert!(demo.terminate().success());
    let mut log = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
    assert!(log.contains("--insecure"), "{log}");
}

/// `chain demo-gateway: N records, …` → N.
fn verified_records(text: &str) -> u64 {
    assert!(text.contains("verified"), "{text}");
    text.split_once("chain demo-gateway: ")
        .and_then(|(_, rest)| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no record count in {text}"))
}

#[test]
fn audit_prune_cuts_the_demo_log_and_it_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let (demo, facts) = start_demo(
        dir.path(),
        &["--citizens", "2000", "--insecure"],
        Stdio::null(),
    );
    let user = facts["users"][0]["id"].as_str().unwrap();
    let cpr = facts["sample_citizens"][0]["cpr"].as_str().unwrap();
    let token = stdout(&samblik(&["token", "--dir", dir_arg, "--user", user]))
        .trim()
        .to_owned();
    let lookup = |facts: &serde_json::Value| {
        samblik(&[
            "lookup",
            "--addr",
            facts["gateway_url"].as_str().unwrap(),
            "--token",
            &token,
            "--cpr",
            cpr,
            "--purpose",
            "prepare-meeting",
        ])
    };
    stdout(&lookup(&facts));
    assert!(demo.terminate().success());
    let before = verified_records(&stdout(&samblik(&["audit", "verify", "--dir", dir_arg])));
    let cprs = |dir: &Path| -> Vec<Option<String>> {
        use samblik_audit::AuditStore;
        let keys = std::sync::Arc::new(
            samblik_audit::AtRestKeys::load(&dir.join(samblik::demo::AUDIT_DATA_KEY_FILE)).unwrap(),
        );
        let mut store =
            samblik_audit::sqlite::SqliteStore::open_read_only(&dir.join("audit.db"), keys.clone())
                .unwrap();
        let records = store.records("demo-gateway", 0, usize::MAX).unwrap();
        // The citizen column holds the keyed hash: read back as the number it hashes.
        records
            .into_iter()
            .map(|r| {
                let record = samblik_audit::AuditRecord::from_stored(&r.body, &r.hash).unwrap();
                assert_eq!(r.cpr, record.cpr.as_ref().map(|c| keys.index(c)));
                record.cpr.map(|c| c.as_str().to_owned())
            })
            .collect()
    };
    assert!(cprs(dir.path()).contains(&Some(cpr.to_owned())));

    // Nothing in a fresh demo is six months old.
    let kept = stdout(&samblik(&["audit", "prune", "--dir", dir_arg]));
    assert!(kept.contains("nothing pruned"), "{kept}");
    // Everything up to the last signed checkpoint (the clean stop of that prune) goes.
    let pruned = stdout(&samblik(&[
        "audit",
        "prune",
        "--dir",
        dir_arg,
        "--older-than-days",
        "0",
    ]));
    let through = before + 2;
    assert!(
        pruned.contains(&format!(
            "chain demo-gateway: pruned records 1..={through} "
        )),
        "{pruned}"
    );
    let verified = stdout(&samblik(&["audit", "verify", "--dir", dir_arg]));
    // This prune's start-up, prune and clean-stop records.
    assert_eq!(verified_records(&verified), 3, "{verified}");
    assert!(
        verified.contains(&format!("records 1..={through} pruned")),
        "{verified}"
    );
    assert!(!cprs(dir.path()).contains(&Some(cpr.to_owned())));
    assert!(
        verified.contains("every chain holds its newest witnessed checkpoint"),
        "{verified}"
    );

    // Someone with write access to the database cuts the newest records with their signed
    // checkpoints: the chain that is left verifies, the witness beside it does not agree.
    let db = rusqlite::Connection::open(dir.path().join("audit.db")).unwrap();
    db.execute_batch(
        "DELETE FROM audit_records WHERE seq > (SELECT MIN(seq) FROM audit_records);
         DELETE FROM audit_checkpoints WHERE seq > (SELECT MIN(seq) FROM audit_records);",
    )
    .unwrap();
    drop(db);
    let cut = samblik(&["audit", "verify", "--dir", dir_arg]);
    assert!(!cut.status.success());
    let said = String::from_utf8_lossy(&cut.stdout);
    assert!(
        said.contains("witness problem 1: chain demo-gateway"),
        "{said}"
    );
    assert!(said.contains("were cut, with their checkpoints"), "{said}");

    // The gateway's start-up check finds the same cut: it runs, writes nothing, and refuses
    // every lookup until the break is acknowledged.
    let restart = || {
        std::fs::remove_file(dir.path().join("demo.json")).unwrap();
        start_demo(
            dir.path(),
            &["--citizens", "2000", "--insecure"],
            Stdio::null(),
        )
    };
    let (demo, facts) = restart();
    let refused = lookup(&facts);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("AUDIT_UNAVAILABLE"), "{said}");
    assert!(demo.terminate().success());

    let acknowledged = stdout(&samblik(&[
        "audit",
        "acknowledge-break",
        "--dir",
        dir_arg,
        "--by",
        "ops-1",
        "--reason",
        "the database was restored from a backup",
    ]));
    assert!(
        acknowledged.contains("the break is acknowledged"),
        "{acknowledged}"
    );
    // The lost records stay a finding; the witness agrees with the chain again.
    let after = samblik(&["audit", "verify", "--dir", dir_arg]);
    assert!(!after.status.success());
    let said = String::from_utf8_lossy(&after.stdout);
    assert!(!said.contains("witness problem"), "{said}");
    assert!(said.contains("missing"), "{said}");
    let (demo, facts) = restart();
    assert!(lookup(&facts).status.success(), "the gateway serves again");
    assert!(demo.terminate().success());

    // A bad directory is an error, not an empty log.
    let missing = samblik(&["audit", "prune", "--dir", "/nonexistent-samblik-dir"]);
    assert!(!missing.status.success());
}

#[test]
fn synth_generates_an_average_municipality_in_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data");
    let started = Instant::now();
    let line = stdout(&samblik(&[
        "synth",
        "--seed",
        "42",
        "--citizens",
        "43000",
        "--out",
        out.to_str().unwrap(),
    ]));
    let elapsed = started.elapsed();
    assert!(line.contains("43000 citizens"), "{line}");
    for file in [
        "municipality.json",
        "citizens.json",
        "caseworkers.json",
        "cases-child-welfare.json",
        "cases-jobcenter.json",
        "cases-integration.json",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    // Generous even for an unoptimised build on a busy 2-core machine; the release figure is
    // in BENCHMARKS.md.
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
    // Deterministic: the same seed writes the same cases.
    let again = dir.path().join("again");
    stdout(&samblik(&[
        "synth",
        "--seed",
        "42",
        "--citizens",
        "43000",
        "--out",
        again.to_str().unwrap(),
    ]));
    let read = |d: &Path| std::fs::read(d.join("cases-jobcenter.json")).unwrap();
    assert!(read(&out) == read(&again), "same seed, different data");
}

/// Starts `samblik source` with `args` after the data directory; its address, from its first
/// line, and its stderr (the log).
fn start_source(data: &str, args: &[&str]) -> (Running, String) {
    let mut child = Running(
        Command::new(SAMBLIK)
            .args(["source", "--kind", "integration", "--data", data])
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("samblik source integration listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, addr)
}

/// Whether `samblik health` finds `samblik.source.v1.SourceService` at `url` serving, over TLS
/// trusting `ca` with the client certificate `identity` when given.
fn source_health(url: &str, tls: Option<(&Path, Option<&samblik::pki::CertPair>)>) -> bool {
    let mut args = vec![
        "health".to_owned(),
        "--addr".to_owned(),
        url.to_owned(),
        "--service".to_owned(),
        "samblik.source.v1.SourceService".to_owned(),
        "--timeout-ms".to_owned(),
        "5000".to_owned(),
    ];
    if let Some((ca, identity)) = tls {
        args.extend(["--cacert".to_owned(), ca.display().to_string()]);
        if let Some(pair) = identity {
            args.extend([
                "--cert".to_owned(),
                pair.cert.display().to_string(),
                "--key".to_owned(),
                pair.key.display().to_string(),
            ]);
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = samblik(&args);
    let printed = String::from_utf8_lossy(&out.stdout);
    // Exit 0 and SERVING go together; anything else is not serving.
    assert_eq!(out.status.success(), printed.trim() == "SERVING", "{out:?}");
    out.status.success()
}

#[test]
fn a_lone_source_serves_mutual_tls_and_plaintext_only_when_told_to() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    stdout(&samblik(&[
        "synth",
        "--seed",
        "5",
        "--citizens",
        "2000",
        "--out",
        data,
    ]));
    let pki = samblik::pki::DemoPki::create(dir.path(), &["integration"]).unwrap();
    let pair = pki.source("integration");

    // Mutual TLS: the gateway's client certificate gets an answer; no certificate, or
    // plaintext, gets none.
    let (source, addr) = start_source(
        data,
        &[
            "--tls-cert",
            pair.cert.to_str().unwrap(),
            "--tls-key",
            pair.key.to_str().unwrap(),
            "--client-ca",
            pki.ca.to_str().unwrap(),
        ],
    );
    let https = format!("https://{addr}");
    assert!(source_health(
        &https,
        Some((&pki.ca, Some(&pki.gateway_client)))
    ));
    assert!(!source_health(&https, Some((&pki.ca, None))));
    assert!(!source_health(&format!("http://{addr}"), None));
    assert!(source.terminate().success());

    // Plaintext only with --insecure, and it says so in its log.
    let (mut source, addr) = start_source(data, &["--insecure"]);
    assert!(source_health(&format!("http://{addr}"), None));
    let stderr = source.0.stderr.take().unwrap();
    assert!(source.terminate().success());
    let log = std::io::read_to_string(stderr).unwrap();
    assert!(log.contains("PLAINTEXT"), "no warning in: {log}");

    // Neither, half of TLS, or both: refused before anything listens.
    let cert = pair.cert.to_str().unwrap();
    let ca = pki.ca.to_str().unwrap();
    for (args, needle) in [
        (vec![], "--tls-cert"),
        (vec!["--tls-cert", cert], "--tls-key"),
        (vec!["--tls-cert", cert, "--client-ca", ca], "--tls-key"),
        (vec!["--insecure", "--client-ca", ca], "cannot be used with"),
    ] {
        let mut all = vec!["source", "--kind", "integration", "--data", data];
        all.extend(args.iter());
        let out = samblik(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(
            stderr.contains(needle),
            "{args:?}: {needle} not in {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?} listened");
    }
    // A key that is not the certificate's: refused before listening.
    let out = samblik(&[
        "source",
        "--kind",
        "integration",
        "--data",
        data,
        "--tls-cert",
        cert,
        "--tls-key",
        pki.gateway.key.to_str().unwrap(),
        "--client-ca",
        ca,
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TLS"));
    assert!(out.stdout.is_empty());

    let bad = samblik(&[
        "source",
        "--kind",
        "tax-office",
        "--data",
        data,
        "--insecure",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown department"));
}

/// A config file with one unreachable source, a key file that is not there, and the audit
/// store at `audit_path`: enough to be parsed, not to serve.
fn minimal_config(audit_path: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[auth]
issuer = "https://idp.example"
audience = "samblik"
[[auth.keys]]
kid = "k1"
algorithm = "ES256"
public_key_file = "missing.pem"
[[sources]]
id = "jobcenter"
department = "Jobcenter"
endpoint = "http://127.0.0.1:1"
[audit]
path = "{audit_path}"
signing_key_file = "audit.key"
data_key_file = "audit-data.keys"
"#
    )
}

#[test]
fn serve_refuses_a_bad_config_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let base = &minimal_config("audit.db");
    let cases = [
        (
            write(
                "typo.toml",
                &base.replace("[server]", "[server]\nlisten_port = 1"),
            ),
            "unknown field",
        ),
        (write("nokey.toml", base), "cannot read public key file"),
        (
            write("nosources.toml", &base[..base.find("[[sources]]").unwrap()]),
            "missing field `sources`",
        ),
        (dir.path().join("absent.toml"), "cannot read config file"),
        // The audit log's fsync cannot be turned off: refused by name, before anything listens.
        (
            write(
                "nofsync.toml",
                &base.replace("[audit]", "[audit]\ndurability = \"off\""),
            ),
            "audit.durability = \"off\" is refused",
        ),
    ];
    for (path, needle) in cases {
        let out = samblik(&["serve", "--config", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{needle}: accepted");
        assert!(stderr.contains(needle), "{needle} not in: {stderr}");
        assert!(
            out.stdout.is_empty(),
            "printed before refusing: {:?}",
            out.stdout
        );
    }
}

/// A gateway config up to its `[audit]` section: listening on a free loopback port, taking the
/// demo issuer's tokens, with the jobcenter source at `source_addr`.
#[test]
fn serve_refused_for_a_bad_key_secret_or_port_leaves_the_audit_store_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = samblik::tokens::DemoIssuer::load_or_create(dir.path()).unwrap();
    let pki = samblik::pki::DemoPki::create(dir.path(), &[]).unwrap();
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    // Every file the base config names is there; each case breaks one of them.
    let base = format!(
        "{}[audit]\npath = \"audit.db\"\nsigning_key_file = \"audit.key\"\n\
         data_key_file = \"audit-data.keys\"\n",
        config_head(&issuer, "127.0.0.1:1")
    );
    let listen = "listen = \"127.0.0.1:0\"\n";
    let server_tls = format!(
        "{listen}[server.tls]\ncert_file = \"{}\"\nkey_file = \"missing-gateway.key\"\n",
        path(&pki.gateway.cert)
    );
    let source_tls = format!(
        "endpoint = \"https://127.0.0.1:1\"\n[sources.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"missing-client.key\"\n",
        path(&pki.ca),
        path(&pki.gateway_client.cert)
    );
    let panel = "\n[panel]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://127.0.0.1:1\"\n\
        [panel.oidc]\nauthorization_endpoint = \"https://idp.example/authorize\"\n\
        token_endpoint = \"https://idp.example/token\"\nclient_id = \"samblik-panel\"\n\
        client_secret_env = \"SAMBLIK_TEST_UNSET_OIDC_SECRET\"\n";
    // Ports another process holds.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().map(|a| (taken, a)).unwrap();
    let taken_listen = format!("listen = \"{}\"\n", taken.1);
    let panel_on_taken_port = panel
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{}\"", taken.1),
        )
        .replace(
            "SAMBLIK_TEST_UNSET_OIDC_SECRET",
            "SAMBLIK_TEST_PANEL_SECRET",
        );
    let cases = [
        (
            "gateway-port",
            base.replace(listen, &taken_listen),
            "cannot listen on",
        ),
        (
            "panel-port",
            format!("{base}{panel_on_taken_port}"),
            "cannot listen on",
        ),
        (
            "token-key",
            base.replace(&path(issuer.public_key_path()), "missing.pem"),
            "cannot read public key file",
        ),
        (
            "listener-tls-key",
            base.replace(listen, &server_tls),
            "missing-gateway.key",
        ),
        (
            "source-tls-key",
            base.replace("endpoint = \"http://127.0.0.1:1\"\n", &source_tls),
            "missing-client.key",
        ),
        (
            "panel-secret",
            format!("{base}{panel}"),
            "SAMBLIK_TEST_UNSET_OIDC_SECRET, which is not set",
        ),
        (
            "signing-key",
            base.clone(),
            "audit.key is not 64 hex digits",
        ),
        (
            "policy",
            format!("{base}[policy]\nfile = \"missing.cedar\"\n"),
            "missing.cedar",
        ),
    ];
    for (name, text, needle) in cases {
        let data = dir.path().join(name);
        std::fs::create_dir(&data).unwrap();
        let config = data.join("samblik.toml");
        std::fs::write(&config, text).unwrap();
        let mut written = vec!["samblik.toml".to_owned()];
        if name == "signing-key" {
            std::fs::write(data.join("audit.key"), "not a key").unwrap();
            written.push("audit.key".to_owned());
        }
        let out = Command::new(SAMBLIK)
            .args(["serve", "--config", config.to_str().unwrap()])
            .env_remove("SAMBLIK_TEST_UNSET_OIDC_SECRET")
            .env("SAMBLIK_TEST_PANEL_SECRET", "a-panel-client-secret")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: accepted");
        assert!(stderr.contains(needle), "{name}: {needle} not in: {stderr}");
        // No audit store (no start-up record), and no signing key made for one.
        let mut left: Vec<String> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        written.sort();
        assert_eq!(left, written, "{name}: a refused start-up wrote files");
    }
}

#[test]
fn audit_add_data_key_rotates_the_data_key_and_keeps_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("samblik.toml");
    std::fs::write(&config, minimal_config("audit.db")).unwrap();
    let keys = dir.path().join("audit-data.keys");
    // No key file yet: nothing to add to, and none is made.
    let refused = samblik(&[
        "audit",
        "add-data-key",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    assert!(!keys.exists());

    samblik_audit::AtRestKeys::create(&keys).unwrap();
    let before = samblik_audit::AtRestKeys::load(&keys).unwrap();
    let sealed = before
        .seal(samblik_audit::Sealed::Body, b"sealed before")
        .unwrap();
    let added = samblik(&[
        "audit",
        "add-data-key",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(added.status.success(), "{added:?}");
    assert!(stdout(&added).contains("added data key 2"), "{added:?}");
    let after = samblik_audit::AtRestKeys::load(&keys).unwrap();
    assert_eq!(after.sealing_key_id(), "2");
    assert_eq!(after.check_value(), before.check_value());
    assert_eq!(
        after.open(samblik_audit::Sealed::Body, &sealed).unwrap(),
        b"sealed before"
    );
}

#[test]
fn audit_verify_refuses_a_missing_or_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    // The key exists (verification reads its public half first): only the store is wrong.
    samblik_audit::CheckpointSigner::load_or_create(&dir.path().join("audit.key")).unwrap();
    let config = |name: &str, audit_path: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, minimal_config(audit_path)).unwrap();
        path
    };
    let verify = |config: &Path| {
        let out = samblik(&["audit", "verify", "--config", config.to_str().unwrap()]);
        assert!(!out.status.success(), "verified: {out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // A misspelt path: an error, and no new database in its place.
    let stderr = verify(&config("missing.toml", "no-such-audit.db"));
    assert!(stderr.contains("no audit store at"), "{stderr}");
    assert!(!dir.path().join("no-such-audit.db").exists());

    // A store that holds no chain verified nothing: that is not a pass.
    samblik_audit::sqlite::SqliteStore::open(
        &dir.path().join("empty.db"),
        samblik_audit::Durability::Full,
        std::sync::Arc::new(
            samblik_audit::AtRestKeys::load_or_create(&dir.path().join("audit-data.keys")).unwrap(),
        ),
    )
    .unwrap();
    let stderr = verify(&config("empty.toml", "empty.db"));
    assert!(stderr.contains("holds no chain"), "{stderr}");
}

#[test]
fn serve_from_a_config_file_audits_into_postgresql_and_verifies() {
    let setup = crate::common::postgres_setup("serve", "replica-a");
    let crate::common::PostgresSetup {
        dir: _dir,
        source,
        config,
        url,
        signing_key,
        token,
        jobcenter_cprs,
        .. // the database, dropped when `setup` goes
    } = setup;
    // Verifying a database the gateway has not written yet: an error, and nothing created in
    // it (verification only reads).
    samblik_audit::CheckpointSigner::load_or_create(&signing_key).unwrap();
    samblik_audit::AtRestKeys::create(&signing_key.with_file_name("audit-data.keys")).unwrap();
    let refused = Command::new(SAMBLIK)
        .args(["audit", "verify", "--config", config.to_str().unwrap()])
        .env("SAMBLIK_AUDIT_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(!refused.status.success(), "verified: {refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("no audit store in this database"),
        "{stderr}"
    );
    let tables: i64 = postgres::Client::connect(&url, postgres::NoTls)
        .unwrap()
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(tables, 0, "verification created tables");

    let (gateway, addr) = crate::common::start_serve(&config, &url);

    let cpr = &jobcenter_cprs[0];
    let overview = stdout(&samblik(&[
        "lookup",
        "--addr",
        &format!("http://{addr}"),
        "--token",
        &token,
        "--cpr",
        cpr,
        "--purpose",
        "follow-up",
    ]));
    assert!(overview.contains("data as of"), "{overview}");
    assert!(gateway.terminate().success());
    drop(source);

    let verified = Command::new(SAMBLIK)
        .args(["audit", "verify", "--config", config.to_str().unwrap()])
        .env("SAMBLIK_AUDIT_DATABASE_URL", &url)
        .output()
        .unwrap();
    let text = stdout(&verified);
    // Start-up, the lookup, clean stop.
    assert!(text.contains("chain replica-a: 3 records"), "{text}");
    // The citizen column holds the number's keyed hash, never the number.
    let keys =
        samblik_audit::AtRestKeys::load(&signing_key.with_file_name("audit-data.keys")).unwrap();
    let index = keys.index(&samblik_audit::Cpr::parse(cpr).unwrap());
    let cprs: Vec<Option<String>> = pg_records(&url);
    assert!(
        cprs.iter().any(|c| c.as_deref() == Some(index.as_str())),
        "lookup not in PostgreSQL"
    );
    assert!(!cprs.iter().any(|c| c.as_deref() == Some(cpr.as_str())));

    // `audit prune --config` on PostgreSQL: the lookup goes, the chain still verifies.
    let audit = |args: &[&str]| {
        let out = Command::new(SAMBLIK)
            .arg("audit")
            .args(args)
            .args(["--config", config.to_str().unwrap()])
            .env("SAMBLIK_AUDIT_DATABASE_URL", &url)
            .output()
            .unwrap();
        stdout(&out)
    };
    let unknown = Command::new(SAMBLIK)
        .args(["audit", "prune", "--chain", "replica-z", "--config"])
        .arg(&config)
        .env("SAMBLIK_AUDIT_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no chain \"replica-z\""));
    let pruned = audit(&["prune", "--chain", "replica-a", "--older-than-days", "0"]);
    assert!(
        pruned.contains("chain replica-a: pruned records 1..=3 "),
        "{pruned}"
    );
    let text = audit(&["verify"]);
    assert!(
        text.contains("chain replica-a: 3 records") && text.contains("records 1..=3 pruned"),
        "{text}"
    );
    assert!(
        !pg_records(&url)
            .iter()
            .any(|c| c.as_deref() == Some(index.as_str())),
        "the lookup was not pruned"
    );
}

#[test]
fn replicas_sharing_one_config_each_write_their_own_chain() {
    // A Kubernetes Deployment gives every replica the same config and `--audit-chain
    // $(POD_NAME)`: two gateways on one store at once, each on its own chain (one chain can
    // have only one writer).
    let setup = crate::common::postgres_setup("chains", "from-config");
    let replica = |chain| {
        crate::common::start_serve_with(&setup.config, &setup.url, &["--audit-chain", chain]).0
    };
    let (a, b) = (replica("samblik-7f9c4-a1"), replica("samblik-7f9c4-b2"));
    assert!(a.terminate().success());
    assert!(b.terminate().success());
    let verified = Command::new(SAMBLIK)
        .args([
            "audit",
            "verify",
            "--config",
            setup.config.to_str().unwrap(),
        ])
        .env("SAMBLIK_AUDIT_DATABASE_URL", &setup.url)
        .output()
        .unwrap();
    let text = stdout(&verified);
    // Each: start-up and clean stop; nothing on the config's own chain.
    for chain in ["samblik-7f9c4-a1", "samblik-7f9c4-b2"] {
        assert!(
            text.contains(&format!("chain {chain}: 2 records")),
            "{text}"
        );
    }
    assert!(!text.contains("from-config"), "{text}");
}

fn pg_records(url: &str) -> Vec<Option<String>> {
    let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
    client
        .query("SELECT cpr FROM audit_records ORDER BY seq", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}
