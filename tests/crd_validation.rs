//! The CRD's own validation, checked by the real API server through `kubectl apply`:
//! every bad policy is rejected with a message naming the field and nothing is created;
//! valid policies (the examples) are accepted with their defaults filled in; immutable
//! fields stay immutable on update.
//!
//! Needs a running control plane (`make cluster-up`).

mod support;

use support::{CommandOutput, run_kubectl_with_stdin};

const CRD_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/jwtsigningkey.yaml");

fn kubectl(args: &[&str], stdin: Option<&str>) -> CommandOutput {
    run_kubectl_with_stdin(args, stdin)
}

fn text(output: &CommandOutput) -> String {
    format!("{}{}", output.stdout, output.stderr)
}

fn kubectl_ok(args: &[&str], stdin: Option<&str>) -> String {
    let output = kubectl(args, stdin);
    output.assert_success(&format!("kubectl {args:?}"));
    text(&output)
}

/// Installs the CRD (idempotent) and creates a fresh namespace for one test.
async fn setup(prefix: &str) -> support::TestNamespace {
    kubectl_ok(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=keyrotor-tests",
            "-f",
            CRD_PATH,
        ],
        None,
    );
    kubectl_ok(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/jwtsigningkeys.keyrotor.dev",
        ],
        None,
    );
    support::TestNamespace::new(&support::client().await, prefix).await
}

fn policy(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: keyrotor.dev/v1alpha1\nkind: JwtSigningKey\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

fn apply(namespace: &str, yaml: &str) -> CommandOutput {
    kubectl(&["apply", "-n", namespace, "-f", "-"], Some(yaml))
}

fn exists(namespace: &str, name: &str) -> bool {
    let output = kubectl(&["get", "-n", namespace, "jsk", name, "-o", "name"], None);
    if output.status.success() {
        return true;
    }
    let message = text(&output);
    assert!(
        message.contains("NotFound"),
        "unexpected kubectl error: {message}"
    );
    false
}

/// A bad policy, the words the rejection must contain (the field, and what is wrong).
struct Invalid {
    what: &'static str,
    spec: &'static str,
    name: Option<String>,
    expect: &'static [&'static str],
}

fn invalid(what: &'static str, spec: &'static str, expect: &'static [&'static str]) -> Invalid {
    Invalid {
        what,
        spec,
        name: None,
        expect,
    }
}

#[tokio::test]
async fn invalid_policies_are_rejected_with_the_field_named() {
    let test_namespace = setup("crd-invalid").await;
    let namespace = test_namespace.name();
    let long_name = format!("a{}", "b".repeat(245));
    let cases = vec![
        invalid(
            "unknown algorithm",
            "  algorithm: HS256\n",
            &["spec.algorithm", "Unsupported value"],
        ),
        invalid(
            "duration with a day unit",
            "  rotationInterval: 1d\n",
            &["spec.rotationInterval", "should match"],
        ),
        invalid(
            "fractional duration",
            "  maxTokenLifetime: 1.5h\n",
            &["spec.maxTokenLifetime", "should match"],
        ),
        invalid(
            "rotation interval below the minimum",
            "  rotationInterval: 5s\n  propagationDelay: 1s\n  maxTokenLifetime: 1s\n",
            &["spec.rotationInterval must be between 10s and 8760h"],
        ),
        invalid(
            "zero propagation delay",
            "  propagationDelay: 0s\n",
            &["spec.propagationDelay must be between 1s and 8760h"],
        ),
        invalid(
            "propagation delay not shorter than the interval",
            "  rotationInterval: 30m\n  propagationDelay: 30m\n",
            &["spec.propagationDelay must be shorter than spec.rotationInterval"],
        ),
        invalid(
            "token lifetime over ten intervals",
            "  rotationInterval: 1h\n  propagationDelay: 10m\n  maxTokenLifetime: 11h\n",
            &["spec.maxTokenLifetime must be at most 10 times spec.rotationInterval"],
        ),
        invalid(
            "rsaBits with an EC algorithm",
            "  algorithm: ES256\n  rsaBits: 2048\n",
            &["spec.rsaBits is only allowed with algorithm RS256 or PS256"],
        ),
        invalid(
            "unsupported RSA size",
            "  algorithm: RS256\n  rsaBits: 1024\n",
            &["spec.rsaBits", "Unsupported value"],
        ),
        invalid(
            "Secret name that is not a DNS name",
            "  secretName: Signing_Key\n",
            &["spec.secretName", "should match"],
        ),
        invalid(
            "ConfigMap name that is not a DNS name",
            "  jwks:\n    configMapName: -jwks\n",
            &["spec.jwks.configMapName", "should match"],
        ),
        invalid(
            "ConfigMap key with a slash",
            "  jwks:\n    key: keys/jwks.json\n",
            &["spec.jwks.key", "should match"],
        ),
        invalid(
            "ConfigMap key reserved by the kubelet",
            "  jwks:\n    key: ..data\n",
            &["spec.jwks.key must be a valid ConfigMap key"],
        ),
        invalid(
            "revoked kid that is not a thumbprint",
            "  revokedKeyIDs: [not-a-kid]\n",
            &["spec.revokedKeyIDs[0]", "should match"],
        ),
        invalid(
            "revoked kid listed twice",
            "  revokedKeyIDs:\n  - AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n  - AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",
            &["spec.revokedKeyIDs[1]", "Duplicate value"],
        ),
        invalid(
            "paused that is not a boolean",
            "  paused: \"sometimes\"\n",
            &["spec.paused", "boolean"],
        ),
        Invalid {
            what: "name too long for the default Secret name",
            spec: "  algorithm: ES256\n",
            name: Some(long_name),
            expect: &[
                "spec.secretName",
                "too long for the default spec.secretName",
            ],
        },
    ];
    assert!(cases.len() >= 10);

    let mut failures = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        let name = case.name.clone().unwrap_or_else(|| format!("bad-{index}"));
        let output = apply(namespace, &policy(&name, case.spec));
        let message = text(&output);
        if output.status.success() {
            failures.push(format!("{}: accepted ({message})", case.what));
        } else if let Some(missing) = case.expect.iter().find(|word| !message.contains(*word)) {
            failures.push(format!(
                "{}: message lacks {missing:?}: {message}",
                case.what
            ));
        }
        if exists(namespace, &name) {
            failures.push(format!("{}: the object was created", case.what));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn examples_are_accepted_with_defaults_filled_in() {
    let test_namespace = setup("crd-valid").await;
    let namespace = test_namespace.name();
    for example in [
        "quickstart.yaml",
        "minimal.yaml",
        "with-certificate.yaml",
        "merged-jwks.yaml",
    ] {
        let path = format!("{}/examples/{example}", env!("CARGO_MANIFEST_DIR"));
        kubectl_ok(
            &["apply", "--dry-run=server", "-n", namespace, "-f", &path],
            None,
        );
    }

    let path = format!("{}/examples/minimal.yaml", env!("CARGO_MANIFEST_DIR"));
    kubectl_ok(&["apply", "-n", namespace, "-f", &path], None);
    let stored = kubectl_ok(
        &["get", "-n", namespace, "jsk", "api-tokens", "-o", "json"],
        None,
    );
    let stored: serde_json::Value = serde_json::from_str(&stored).expect("kubectl prints JSON");
    let spec = &stored["spec"];
    assert_eq!(spec["algorithm"], "ES256");
    assert_eq!(spec["rotationInterval"], "24h");
    assert_eq!(spec["propagationDelay"], "15m");
    assert_eq!(spec["maxTokenLifetime"], "1h");
    assert_eq!(spec["jwks"]["key"], "jwks.json");
    assert_eq!(spec["certificate"]["enabled"], false);
    assert_eq!(spec["paused"], false);
    assert!(spec.get("rsaBits").is_none());

    // The stored object deserialises into the Rust types and resolves cleanly.
    let typed: keyrotor::api::JwtSigningKey =
        serde_json::from_value(stored).expect("stored object matches the Rust types");
    let resolved = typed
        .spec
        .resolve("api-tokens")
        .expect("defaults are valid");
    assert_eq!(resolved.secret_name, "api-tokens-signing-key");

    // Short names resolve.
    kubectl_ok(&["get", "-n", namespace, "jwtkey", "api-tokens"], None);
    let table = kubectl_ok(&["get", "-n", namespace, "jsk"], None);
    for column in ["ALG", "ACTIVE-KID", "NEXT-ROTATION", "KEYS", "READY", "AGE"] {
        assert!(table.contains(column), "column {column} missing: {table}");
    }
}

#[tokio::test]
async fn immutable_fields_stay_immutable() {
    let test_namespace = setup("crd-immutable").await;
    let namespace = test_namespace.name();
    let base = "  algorithm: ES256\n  rotationInterval: 1h\n  propagationDelay: 5m\n";
    kubectl_ok(
        &["apply", "-n", namespace, "-f", "-"],
        Some(&policy("fixed", base)),
    );

    let updates = [
        (
            "algorithm change",
            "  algorithm: EdDSA\n  rotationInterval: 1h\n  propagationDelay: 5m\n",
            "spec.algorithm is immutable",
        ),
        (
            "certificate toggle",
            "  algorithm: ES256\n  rotationInterval: 1h\n  propagationDelay: 5m\n  certificate:\n    enabled: true\n",
            "spec.certificate.enabled is immutable",
        ),
        (
            "Secret rename",
            "  algorithm: ES256\n  rotationInterval: 1h\n  propagationDelay: 5m\n  secretName: other-secret\n",
            "spec.secretName is immutable",
        ),
    ];
    let mut failures = Vec::new();
    for (what, spec, expect) in updates {
        let output = apply(namespace, &policy("fixed", spec));
        let message = text(&output);
        if output.status.success() {
            failures.push(format!("{what}: accepted"));
        } else if !message.contains(expect) {
            failures.push(format!("{what}: message lacks {expect:?}: {message}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Spelling out the default Secret name is no change; the schedule may change.
    kubectl_ok(
        &["apply", "-n", namespace, "-f", "-"],
        Some(&policy(
            "fixed",
            "  algorithm: ES256\n  rotationInterval: 2h\n  propagationDelay: 10m\n  secretName: fixed-signing-key\n",
        )),
    );
    let stored = kubectl_ok(
        &[
            "get",
            "-n",
            namespace,
            "jsk",
            "fixed",
            "-o",
            "jsonpath={.spec.rotationInterval} {.spec.secretName}",
        ],
        None,
    );
    assert_eq!(stored.trim(), "2h fixed-signing-key");
}
