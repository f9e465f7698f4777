//! The keyrotor command line: `keyrotor crd` prints the CRD, `keyrotor run` runs the
//! operator.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use keyrotor::api::JwtSigningKey;
use keyrotor::bundle::api::JwksBundle;
use keyrotor::controller::{self, Settings};
use keyrotor::leader::{self, LeaseConfig};
use keyrotor::metrics::{self, Metrics};
use kube::CustomResourceExt;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "keyrotor",
    version,
    about = "Generates and rotates JWT signing keys in Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a CustomResourceDefinition as YAML (default: JwtSigningKey).
    Crd {
        /// Which CRD.
        #[arg(value_enum, default_value_t = CrdKind::Jwtsigningkey)]
        kind: CrdKind,
    },
    /// Run the operator.
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Kubeconfig file. Without it: $KUBECONFIG, then ~/.kube/config, then the in-cluster
    /// service account.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,

    /// Kubeconfig context (default: the current context).
    #[arg(long)]
    context: Option<String>,

    /// Namespace to watch; repeat for several. Default: all namespaces.
    #[arg(
        long = "namespace",
        short = 'n',
        env = "KEYROTOR_NAMESPACES",
        value_delimiter = ','
    )]
    namespaces: Vec<String>,

    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "KEYROTOR_LOG_FORMAT")]
    log_format: LogFormat,

    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, default_value = "127.0.0.1:8080", env = "KEYROTOR_METRICS_ADDR")]
    metrics_addr: SocketAddr,

    /// Take a Lease before writing anything, so only one replica acts at a time.
    #[arg(long, env = "KEYROTOR_LEADER_ELECT")]
    leader_elect: bool,

    /// Namespace of the leader election Lease (default: $POD_NAMESPACE, else `default`).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,

    /// Name of the leader election Lease.
    #[arg(long, default_value = "keyrotor")]
    lease_name: String,

    /// Run the JwksBundle controller (needs the JwksBundle CRD and cluster-wide access
    /// to Namespaces and ConfigMaps); policy rotations then also wait for the bundles
    /// that publish their keys.
    #[arg(long, env = "KEYROTOR_BUNDLES")]
    bundles: bool,

    /// Reconciles in flight at once (0: unbounded). Each reconcile makes its API
    /// requests one after another, so this also bounds keyrotor's requests in flight.
    #[arg(long, default_value_t = controller::DEFAULT_CONCURRENCY, env = "KEYROTOR_CONCURRENCY")]
    concurrency: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum CrdKind {
    /// `crds/jwtsigningkey.yaml`.
    Jwtsigningkey,
    /// `crds/jwksbundle.yaml`.
    Jwksbundle,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn crd_yaml(kind: CrdKind) -> Result<String, serde_yaml_ng::Error> {
    match kind {
        CrdKind::Jwtsigningkey => serde_yaml_ng::to_string(&JwtSigningKey::crd()),
        CrdKind::Jwksbundle => serde_yaml_ng::to_string(&JwksBundle::crd()),
    }
}

fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn client_for(args: &RunArgs) -> Result<kube::Client, kube::Error> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(kube::Error::InferKubeconfig)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(kube::Error::InferKubeconfig)?
        }
        None if args.context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(kube::Error::InferKubeconfig)?,
        None => kube::Config::infer()
            .await
            .map_err(kube::Error::InferConfig)?,
    };
    keyrotor::controller::client(config)
}

/// Resolves when the process receives SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn run(args: RunArgs) -> Result<(), String> {
    let client = client_for(&args)
        .await
        .map_err(|e| format!("cannot configure the Kubernetes client: {e}"))?;
    let metrics = Metrics::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let (metrics_addr, metrics_server) =
        metrics::bind(args.metrics_addr, metrics.clone(), stopped())
            .await
            .map_err(|e| e.to_string())?;
    info!(%metrics_addr, "serving /metrics, /healthz and /readyz");
    let metrics_task = tokio::spawn(metrics_server);

    let elector = if args.leader_elect {
        let namespace = args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let config = LeaseConfig::new(
            namespace,
            args.lease_name.clone(),
            leader::default_identity(),
        );
        info!(lease = %config.name, namespace = %config.namespace, identity = %config.identity, "leader election enabled");
        // With metrics: a standby passes /readyz while its Lease checks succeed.
        Some(
            leader::LeaderElector::start_with_metrics(client.clone(), config, metrics.clone())
                .map_err(|e| e.to_string())?,
        )
    } else {
        None
    };

    let settings = Settings {
        namespaces: args.namespaces.clone(),
        bundles: args.bundles,
        concurrency: args.concurrency,
    };
    let leadership = elector.as_ref().map(|e| e.subscribe());
    let operator =
        controller::run_with_leadership(client, settings, metrics.clone(), leadership, stopped());
    tokio::pin!(operator);
    let result = tokio::select! {
        result = &mut operator => result.map_err(|e| e.to_string()),
        () = shutdown_signal() => {
            info!("shutting down");
            let _ = stop_tx.send(true);
            match tokio::time::timeout(Duration::from_secs(20), &mut operator).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => Err("controllers did not stop within 20s".to_owned()),
            }
        }
    };
    let _ = stop_tx.send(true);
    if let Some(elector) = elector
        && let Err(e) = elector.shutdown().await
    {
        error!(error = %e, "leader election did not shut down cleanly");
    }
    match metrics_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!(error = %e, "metrics server failed"),
        Err(e) => error!(error = %e, "metrics server task failed"),
    }
    drop(stop_rx);
    result
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { kind } => match crd_yaml(kind) {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("keyrotor: cannot render the CRD: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Run(args) => {
            init_logging(args.log_format);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(e) => {
                    eprintln!("keyrotor: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!(error = %e, "keyrotor stopped");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// `crds/jwtsigningkey.yaml` is what `keyrotor crd` prints; regenerate it with
    /// `cargo run -q -- crd > crds/jwtsigningkey.yaml` after changing `src/api.rs`.
    #[test]
    fn checked_in_crd_matches_the_code() {
        let generated = super::crd_yaml(super::CrdKind::Jwtsigningkey).expect("CRD renders");
        let checked_in = include_str!("../crds/jwtsigningkey.yaml");
        assert!(
            generated == checked_in,
            "crds/jwtsigningkey.yaml is out of date: run `make crds`"
        );
        let generated = super::crd_yaml(super::CrdKind::Jwksbundle).expect("CRD renders");
        let checked_in = include_str!("../crds/jwksbundle.yaml");
        assert!(
            generated == checked_in,
            "crds/jwksbundle.yaml is out of date: run `cargo run -q -- crd jwksbundle > crds/jwksbundle.yaml` and copy it to charts/keyrotor/crds/"
        );
    }
}
