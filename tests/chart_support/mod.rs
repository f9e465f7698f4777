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

const RBAC_KINDS: &[&str] = &[
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ClusterRole",
    "ClusterRoleBinding",
];

/// The chart's ServiceAccount and RBAC applied to the cluster, and a TokenRequest
/// token for that ServiceAccount. Cluster-scoped objects are deleted on drop
/// (namespaced ones go with their namespaces).
pub struct InstalledRbac {
    pub cluster_scoped: Vec<(String, String)>,
    pub service_account: String,
    pub namespace: String,
    pub token: String,
}

impl InstalledRbac {
    /// The user name the API server gives this ServiceAccount.
    pub fn username(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }

    /// Another token for the same ServiceAccount (tells two processes apart in the
    /// audit log by its credential id).
    pub fn new_token(&self) -> String {
        token_for(&self.service_account, &self.namespace)
    }
}

impl Drop for InstalledRbac {
    fn drop(&mut self) {
        for (kind, name) in &self.cluster_scoped {
            let _ = support::run_kubectl(&["delete", kind, name, "--ignore-not-found"]);
        }
    }
}

fn token_for(service_account: &str, namespace: &str) -> String {
    let token = support::run_kubectl(&[
        "create",
        "token",
        service_account,
        "--namespace",
        namespace,
        "--duration=1h",
    ]);
    token.assert_success("TokenRequest for the chart's ServiceAccount");
    token.stdout.trim().to_owned()
}

/// Renders the chart for `release` in `namespace` and applies only its ServiceAccount
/// and RBAC.
pub async fn install_rbac(release: &str, namespace: &str, sets: &[&str]) -> InstalledRbac {
    let docs: Vec<Value> = documents(&render(release, namespace, sets))
        .into_iter()
        .filter(|doc| RBAC_KINDS.iter().any(|kind| doc["kind"] == *kind))
        .collect();
    let cluster_scoped = docs
        .iter()
        .filter(|doc| {
            doc["kind"]
                .as_str()
                .is_some_and(|k| k.starts_with("Cluster"))
        })
        .map(|doc| {
            (
                doc["kind"].as_str().unwrap().to_lowercase(),
                doc["metadata"]["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let stream = docs
        .iter()
        .map(|doc| serde_yaml_ng::to_string(doc).unwrap())
        .collect::<Vec<_>>()
        .join("---\n");
    support::run_kubectl_with_stdin(&["apply", "-f", "-"], Some(&stream))
        .assert_success("applying the chart's RBAC");

    let service_account = format!("{release}-keyrotor");
    let token = token_for(&service_account, namespace);
    InstalledRbac {
        cluster_scoped,
        service_account,
        namespace: namespace.to_owned(),
        token,
    }
}

/// A kubeconfig that reaches the test API server as `token` only.
pub fn token_kubeconfig(token: &str, file_name: &str) -> PathBuf {
    token_kubeconfig_via(token, file_name, None)
}

/// Like [`token_kubeconfig`], reaching the API server at `server` (e.g. a proxy) when given.
pub fn token_kubeconfig_via(token: &str, file_name: &str, server: Option<&str>) -> PathBuf {
    let admin = std::fs::read_to_string(support::kubeconfig_path()).expect("admin kubeconfig");
    let admin: Value = serde_yaml_ng::from_str(&admin).expect("admin kubeconfig parses");
    let mut cluster = admin["clusters"][0].clone();
    if let Some(server) = server {
        cluster["cluster"]["server"] = Value::from(server);
    }
    let cluster_name = cluster["name"].clone();
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{ "name": "keyrotor", "user": { "token": token } }],
        "contexts": [{ "name": "keyrotor", "context": { "cluster": cluster_name, "user": "keyrotor" } }],
        "current-context": "keyrotor",
    });
    let path = scratch(file_name);
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("scratch dir");
    std::fs::write(&path, serde_yaml_ng::to_string(&config).expect("YAML"))
        .expect("write kubeconfig");
    path
}

/// Installs the CRDs shipped with the chart (idempotent).
pub fn install_crds() {
    let crds = chart_dir().join("crds");
    support::run_kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        crds.to_str().expect("UTF-8 path"),
    ])
    .assert_success("installing the CRDs");
    support::run_kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/jwtsigningkeys.keyrotor.dev",
        "--timeout=30s",
    ])
    .assert_success("waiting for the CRD");
}

/// A free port on 127.0.0.1 (bound, then released for the process to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// `keyrotor run` as a child process; SIGKILLed on drop.
pub struct OperatorProcess {
    child: std::process::Child,
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl OperatorProcess {
    /// Starts `keyrotor run --kubeconfig <kubeconfig> <args>`, logging JSON to a file.
    pub fn start(kubeconfig: &std::path::Path, name: &str, args: &[&str]) -> OperatorProcess {
        let metrics_port = free_port();
        let log = scratch(&format!("{name}.log"));
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_keyrotor"))
            .arg("run")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
            .arg("--log-format=json")
            .args(args)
            .env("RUST_LOG", "info")
            .env("POD_NAME", name)
            .env_remove("KUBECONFIG")
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("starting keyrotor run");
        OperatorProcess {
            child,
            metrics_port,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no cleanup, no lease release.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the process to exit; returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        self.child
            .wait()
            .map(|status| status.success())
            .unwrap_or(false)
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path` on the metrics port: (status, body), or None if nothing answers.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.metrics_port))
            .await
            .ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, body.to_owned()))
    }

    /// The value of one sample line of `/metrics` (`series` is name plus labels).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics").await?;
        sample(&body, series)
    }
}

/// The value of the sample line that starts with `series `.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.parse().ok())
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Creates (or updates) a JwtSigningKey as the admin.
pub fn apply_policy(namespace: &str, name: &str, spec: Value) {
    let policy = serde_json::json!({
        "apiVersion": "keyrotor.dev/v1alpha1",
        "kind": "JwtSigningKey",
        "metadata": { "name": name, "namespace": namespace },
        "spec": spec,
    });
    support::run_kubectl_with_stdin(&["apply", "-f", "-"], Some(&policy.to_string()))
        .assert_success("applying a JwtSigningKey");
}

/// The JwtSigningKey as JSON, read as the admin.
pub async fn get_policy(client: &kube::Client, namespace: &str, name: &str) -> Option<Value> {
    use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("keyrotor.dev", "v1alpha1", "JwtSigningKey"),
        "jwtsigningkeys",
    );
    let api: kube::Api<DynamicObject> =
        kube::Api::namespaced_with(client.clone(), namespace, &resource);
    let object = api.get_opt(name).await.expect("reading a JwtSigningKey")?;
    Some(serde_json::to_value(object).expect("JSON"))
}

/// Whether the policy's `Ready` condition is `True`.
pub fn is_ready(policy: &Value) -> bool {
    policy["status"]["conditions"]
        .as_array()
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// The `jti` claim of a ServiceAccount token: the audit log's credential id is `JTI=<jti>`.
pub fn token_jti(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url claims");
    let claims: Value = serde_json::from_slice(&claims).expect("JSON claims");
    claims["jti"].as_str().expect("a jti claim").to_owned()
}

/// Audit events of requests made with the token whose jti is `jti`.
pub fn audit_events_of(jti: &str) -> Vec<Value> {
    let credential = format!("JTI={jti}");
    support::audit_events()
        .into_iter()
        .filter(|event| {
            strings(&event["user"]["extra"]["authentication.kubernetes.io/credential-id"])
                .contains(&credential.as_str())
        })
        .collect()
}

/// Whether an audit event is a write keyrotor makes for a policy (Secret, ConfigMap,
/// policy status, Event), as opposed to election or review traffic.
pub fn is_policy_write(event: &Value) -> bool {
    let verb = event["verb"].as_str().unwrap_or_default();
    let resource = event["objectRef"]["resource"].as_str().unwrap_or_default();
    matches!(verb, "create" | "update" | "patch" | "delete")
        && matches!(
            resource,
            "secrets" | "configmaps" | "jwtsigningkeys" | "events"
        )
}
