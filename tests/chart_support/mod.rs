//! Rendering the Helm chart in tests: `helm template` with the pinned helm, parsed into
//! one JSON value per manifest.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

use crate::support;

pub fn chart_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("charts/keyrotor")
}

/// Runs helm with the test kubeconfig; returns (success, stdout, stderr).
pub fn helm(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(support::helm())
        .env("KUBECONFIG", support::kubeconfig_path())
        // Keep helm's caches and config out of the user's home.
        .env("HELM_CACHE_HOME", scratch("helm-cache"))
        .env("HELM_CONFIG_HOME", scratch("helm-config"))
        .env("HELM_DATA_HOME", scratch("helm-data"))
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("running helm {args:?}: {err}"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn scratch(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

/// `helm template` of the chart; `sets` are `--set` arguments. Panics on failure.
pub fn render(release: &str, namespace: &str, sets: &[&str]) -> String {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        release,
        chart.to_str().expect("UTF-8 path"),
        "--namespace",
        namespace,
        "--include-crds",
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    let (ok, stdout, stderr) = helm(&args);
    assert!(ok, "helm template {sets:?} failed:\n{stderr}");
    stdout
}

/// Every non-empty YAML document of a multi-document stream.
pub fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|doc| !doc.is_null())
        .collect()
}

pub fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|doc| doc["kind"] == kind).collect()
}

pub fn one_of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(docs, kind);
    assert_eq!(
        found.len(),
        1,
        "want exactly one {kind}, found {}",
        found.len()
    );
    found[0]
}

/// Strings of a JSON array.
pub fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}
