//! Helpers for integration tests against the local control plane (`tests/cluster/`).
//!
//! Use from a test crate with `mod support;`. Every helper that needs the control plane
//! panics with "no control plane: run `make cluster-up`" when there is none: such tests
//! fail loudly, never skip.
//!
//! - [`client`]: a kube [`Client`] for the admin kubeconfig (`KUBECONFIG`, else
//!   `target/cluster/kubeconfig`).
//! - [`TestNamespace`]: a fresh, uniquely named namespace, deleted on drop.
//! - [`kubectl`], [`helm`], [`run_kubectl`]: the pinned CLI tools.
//! - [`eventually`]: polls until a condition holds, with a deadline.
//! - [`audit_events`]: the API server's audit log, one JSON value per request.

// Each test crate compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Label on every namespace made by [`TestNamespace`], to find leftovers.
pub const TEST_NAMESPACE_LABEL: &str = "keyrotor.dev/test";

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn no_control_plane(detail: impl std::fmt::Display) -> ! {
    panic!(
        "no control plane: run `make cluster-up` (or `make test`), then \
         `export KUBECONFIG=$PWD/target/cluster/kubeconfig`. {detail}"
    )
}

/// The kubeconfig the tests use: `$KUBECONFIG`, else `target/cluster/kubeconfig`.
pub fn kubeconfig_path() -> PathBuf {
    match std::env::var_os("KUBECONFIG") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => repo_root().join("target/cluster/kubeconfig"),
    }
}

/// The admin client configuration from [`kubeconfig_path`].
pub async fn client_config() -> Config {
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path)
        .unwrap_or_else(|err| no_control_plane(format!("cannot read {}: {err}", path.display())));
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|err| no_control_plane(format!("bad kubeconfig {}: {err}", path.display())))
}

/// An admin client, checked to reach the API server.
pub async fn client() -> Client {
    let config = client_config().await;
    let url = config.cluster_url.clone();
    let client = Client::try_from(config)
        .unwrap_or_else(|err| no_control_plane(format!("cannot build a client for {url}: {err}")));
    if let Err(err) = client.apiserver_version().await {
        no_control_plane(format!("the API server at {url} does not answer: {err}"));
    }
    client
}

/// A client for the same API server that authenticates with `token` only (no client
/// certificate), e.g. a ServiceAccount token from the TokenRequest API.
pub async fn client_with_token(token: &str) -> Client {
    let mut config = client_config().await;
    config.auth_info = serde_json::from_value(serde_json::json!({ "token": token }))
        .expect("an AuthInfo with only a token");
    Client::try_from(config).expect("a client with a bearer token")
}

/// A namespace with a unique generated name (`<prefix>-xxxxx`), labelled
/// [`TEST_NAMESPACE_LABEL`]. Dropping it deletes the namespace (also when the test
/// panics); [`TestNamespace::delete`] does the same explicitly.
pub struct TestNamespace {
    name: String,
    client: Client,
    deleted: bool,
}

impl TestNamespace {
    /// Creates the namespace; `prefix` is a short DNS label such as the test's name.
    pub async fn new(client: &Client, prefix: &str) -> TestNamespace {
        let namespace = Namespace {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}-", dns_label_prefix(prefix))),
                labels: Some([(TEST_NAMESPACE_LABEL.to_string(), "true".to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let created = Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|err| panic!("creating a test namespace {prefix}-*: {err}"));
        let name = created
            .metadata
            .name
            .expect("the API server names the namespace");
        TestNamespace {
            name,
            client: client.clone(),
            deleted: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// An API for namespaced objects of type `K` in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Starts deleting the namespace (the namespace controller finishes the job).
    pub async fn delete(mut self) {
        self.deleted = true;
        let result = Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::background())
            .await;
        match result {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => panic!("deleting test namespace {}: {err}", self.name),
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        // Drop cannot await, and the test's own runtime is blocked here: delete from a
        // separate thread with its own runtime and client.
        let name = self.name.clone();
        let outcome = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|err| err.to_string())?;
            runtime.block_on(async {
                let client = Client::try_from(client_config().await).map_err(|e| e.to_string())?;
                match Api::<Namespace>::all(client)
                    .delete(&name, &DeleteParams::background())
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                    Err(err) => Err(err.to_string()),
                }
            })
        })
        .join();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!(
                "warning: could not delete test namespace {}: {err}",
                self.name
            ),
            Err(_) => eprintln!("warning: deleting test namespace {} panicked", self.name),
        }
    }
}

/// Lowercase alphanumerics and '-', at most 40 characters, starting with a letter.
fn dns_label_prefix(prefix: &str) -> String {
    let mut label: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    if !label.starts_with(|c: char| c.is_ascii_lowercase()) {
        label.insert(0, 't');
    }
    label.trim_end_matches('-').to_string()
}

/// Polls `check` every 200 ms until it returns `Some`, and returns that value; panics
/// after `timeout` with `what` in the message.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The directory of the pinned tools (`tests/cluster/tools-bin`).
pub fn tools_bin() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = repo_root().join("tests/cluster/tools-bin");
        let output = Command::new(&script)
            .output()
            .unwrap_or_else(|err| panic!("running {}: {err}", script.display()));
        assert!(output.status.success(), "{} failed", script.display());
        PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
    })
}

fn tool(name: &str) -> PathBuf {
    let pinned = tools_bin().join(name);
    if pinned.is_file() {
        return pinned;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found in {} or PATH: run `make tools`",
                tools_bin().display()
            )
        })
}

/// Path of the pinned kubectl.
pub fn kubectl() -> PathBuf {
    tool("kubectl")
}

/// Path of the pinned helm.
pub fn helm() -> PathBuf {
    tool("helm")
}

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct CommandOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    /// Panics, showing everything the command printed, unless it succeeded.
    pub fn assert_success(&self, what: &str) -> &Self {
        assert!(
            self.status.success(),
            "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs kubectl with `args` against the test kubeconfig.
pub fn run_kubectl(args: &[&str]) -> CommandOutput {
    run_kubectl_with_stdin(args, None)
}

/// Runs kubectl with `args` against the test kubeconfig, feeding `stdin` (for `-f -`).
pub fn run_kubectl_with_stdin(args: &[&str], stdin: Option<&str>) -> CommandOutput {
    let mut command = Command::new(kubectl());
    command
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|err| panic!("starting kubectl {args:?}: {err}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("kubectl's stdin is piped");
        pipe.write_all(input.as_bytes())
            .unwrap_or_else(|err| panic!("writing to kubectl {args:?}: {err}"));
    }
    let output = child
        .wait_with_output()
        .unwrap_or_else(|err| panic!("waiting for kubectl {args:?}: {err}"));
    CommandOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The API server's audit log: `$KEYROTOR_AUDIT_LOG`, else `target/cluster/audit.log`.
pub fn audit_log_path() -> PathBuf {
    match std::env::var_os("KEYROTOR_AUDIT_LOG") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => repo_root().join("target/cluster/audit.log"),
    }
}

/// Every audit event logged so far (one per request, Metadata level). Fields worth
/// filtering on: `verb`, `user.username`, `objectRef.{resource,namespace,name}`,
/// `responseStatus.code`, `stage`.
pub fn audit_events() -> Vec<serde_json::Value> {
    let path = audit_log_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| no_control_plane(format!("cannot read {}: {err}", path.display())));
    // The API server may be writing the last line right now: only whole lines count.
    let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
    complete
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("bad audit line in {}: {err}: {line}", path.display()))
        })
        .collect()
}
