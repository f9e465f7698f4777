//! The operator under test: the built `keyrotor` binary, one process per replica.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};

pub struct Replica {
    pub index: usize,
    child: Option<Child>,
    pub pid: u32,
    pub starts: usize,
}

pub struct OperatorSet {
    binary: PathBuf,
    kubeconfig: PathBuf,
    namespace: String,
    log_dir: PathBuf,
    leader_elect: bool,
    pub replicas: Vec<Replica>,
}

impl OperatorSet {
    pub fn new(
        binary: &Path,
        kubeconfig: &Path,
        namespace: &str,
        log_dir: &Path,
        leader_elect: bool,
    ) -> Self {
        OperatorSet {
            binary: binary.to_owned(),
            kubeconfig: kubeconfig.to_owned(),
            namespace: namespace.to_owned(),
            log_dir: log_dir.to_owned(),
            leader_elect,
            replicas: Vec::new(),
        }
    }

    fn spawn(&self, index: usize) -> Result<Child, String> {
        let log_path = self.log_dir.join(format!("operator-{index}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(&self.binary);
        command
            .arg("run")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--namespace")
            .arg(&self.namespace)
            .arg("--metrics-addr")
            .arg("127.0.0.1:0")
            .arg("--log-format")
            .arg("json")
            .env("RUST_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        if self.leader_elect {
            command
                .arg("--leader-elect")
                .arg("--lease-namespace")
                .arg(&self.namespace);
        }
        command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))
    }

    /// Starts replica `index` (a new one, or again after a kill). Returns its pid.
    pub fn start(&mut self, index: usize) -> Result<u32, String> {
        let child = self.spawn(index)?;
        let pid = child.id().unwrap_or(0);
        match self.replicas.iter_mut().find(|r| r.index == index) {
            Some(replica) => {
                replica.child = Some(child);
                replica.pid = pid;
                replica.starts += 1;
            }
            None => self.replicas.push(Replica {
                index,
                child: Some(child),
                pid,
                starts: 1,
            }),
        }
        Ok(pid)
    }

    pub fn running(&mut self, index: usize) -> bool {
        self.replicas
            .iter_mut()
            .find(|r| r.index == index)
            .and_then(|r| r.child.as_mut())
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL (tokio's `start_kill`), waited for. Returns the pid it killed.
    pub async fn kill(&mut self, index: usize) -> Option<u32> {
        let replica = self.replicas.iter_mut().find(|r| r.index == index)?;
        let mut child = replica.child.take()?;
        let pid = replica.pid;
        let _ = child.start_kill();
        let _ = child.wait().await;
        Some(pid)
    }

    /// Replicas that exited by themselves (a crash), with their exit status.
    pub fn crashed(&mut self) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for replica in &mut self.replicas {
            if let Some(child) = replica.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                out.push((replica.index, status.to_string()));
                replica.child = None;
            }
        }
        out
    }

    pub async fn stop_all(&mut self) {
        let indexes: Vec<usize> = self.replicas.iter().map(|r| r.index).collect();
        for index in indexes {
            self.kill(index).await;
        }
    }
}
