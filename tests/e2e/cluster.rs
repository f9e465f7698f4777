//! The local control plane (tests/cluster/): client, CRD, namespaces, restarts.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, Config};

pub const FIELD_MANAGER: &str = "keyrotor-e2e";

pub fn kubeconfig_path() -> Option<PathBuf> {
    std::env::var_os("KUBECONFIG")
        .map(PathBuf::from)
        .filter(|p| p.exists())
}

pub async fn client(kubeconfig: &Path) -> Result<Client, String> {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| e.to_string())?;
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| e.to_string())?;
    // Restarts of the API server must not leave requests hanging for minutes.
    config.read_timeout = Some(Duration::from_secs(20));
    config.connect_timeout = Some(Duration::from_secs(5));
    Client::try_from(config).map_err(|e| e.to_string())
}

/// Installs the CRD that `keyrotor crd` prints and waits until it is served.
pub async fn install_crd(client: &Client, operator: &Path) -> Result<(), String> {
    let output = tokio::process::Command::new(operator)
        .arg("crd")
        .output()
        .await
        .map_err(|e| format!("keyrotor crd: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "keyrotor crd failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let crd: CustomResourceDefinition = serde_yaml_ng::from_slice(&output.stdout)
        .map_err(|e| format!("keyrotor crd output: {e}"))?;
    let name = crd.metadata.name.clone().unwrap_or_default();
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .map_err(|e| format!("applying the CRD: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let established = api
            .get(&name)
            .await
            .ok()
            .and_then(|c| c.status)
            .is_some_and(|s| {
                s.conditions
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        if established {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the CRD did not become Established".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A fresh namespace (a leftover one from an earlier run is deleted first).
pub async fn fresh_namespace(client: &Client, name: &str) -> Result<(), String> {
    let api: Api<Namespace> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(120);
    if api
        .get_opt(name)
        .await
        .map_err(|e| e.to_string())?
        .is_some()
    {
        let _ = api.delete(name, &DeleteParams::default()).await;
        while api
            .get_opt(name)
            .await
            .map_err(|e| e.to_string())?
            .is_some()
        {
            if Instant::now() > deadline {
                return Err(format!(
                    "namespace {name} from an earlier run is still terminating"
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"keyrotor.dev/e2e": "true"}}
    }))
    .map_err(|e| e.to_string())?;
    api.create(&PostParams::default(), &namespace)
        .await
        .map_err(|e| format!("creating namespace {name}: {e}"))?;
    Ok(())
}

pub async fn delete_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::default()).await;
}

/// `tests/cluster/restart <component>`: stops it and starts it again with the same
/// arguments, returning once it serves again.
pub async fn restart(repo: &Path, component: &str) -> Result<(), String> {
    let script = repo.join("tests/cluster/restart");
    let output = tokio::process::Command::new(&script)
        .arg(component)
        .current_dir(repo)
        .output()
        .await
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "restart {component} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Waits until the API server answers (after a restart of it or of etcd).
pub async fn wait_ready(client: &Client, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let api: Api<Namespace> = Api::all(client.clone());
    while Instant::now() < deadline {
        if api.get_opt("default").await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}
