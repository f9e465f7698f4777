//! The operator under test: the release binary run as its own process, with its own
//! identity, its memory and CPU read from /proc and its counters from /metrics.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Resident memory of a process, from /proc/<pid>/status.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Memory {
    /// VmRSS: resident now.
    pub rss_mib: f64,
    /// VmHWM: the peak resident size since the process started.
    pub peak_mib: f64,
}

pub struct Operator {
    child: Child,
    binary: PathBuf,
    kubeconfig: PathBuf,
    log: PathBuf,
    pub metrics_addr: SocketAddr,
}

impl Operator {
    /// Starts `keyrotor run` with the given kubeconfig, logging to `log` (appended).
    pub fn start(binary: &Path, kubeconfig: &Path, log: &Path) -> anyhow::Result<Operator> {
        let metrics_addr = free_local_port()?;
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = Command::new(binary)
            .arg("run")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--metrics-addr")
            .arg(metrics_addr.to_string())
            .arg("--log-format")
            .arg("json")
            // No leader election: one replica, and its Lease renewals would be the only
            // steady-state writes.
            .env_remove("KEYROTOR_LEADER_ELECT")
            .env_remove("KEYROTOR_NAMESPACES")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Operator {
            child,
            binary: binary.to_owned(),
            kubeconfig: kubeconfig.to_owned(),
            log: log.to_owned(),
            metrics_addr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until /readyz answers 200 (the operator has listed every policy).
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the operator exited ({status}) before it was ready; see {}",
                    self.log.display()
                );
            }
            if let Ok((200, _)) = http_get(self.metrics_addr, "/readyz").await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the operator was not ready after {timeout:?}; see {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn memory(&self) -> anyhow::Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let field = |name: &str| -> anyhow::Result<f64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| format!("no {name} in /proc/<pid>/status"))?;
            let kib: f64 = line
                .trim_start_matches(name)
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()?;
            Ok(kib / 1024.0)
        };
        Ok(Memory {
            rss_mib: field("VmRSS:")?,
            peak_mib: field("VmHWM:")?,
        })
    }

    /// User plus system CPU time consumed so far, in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // The command name (field 2) may hold spaces; fields after it are plain.
        let after_name = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .context("malformed /proc/<pid>/stat")?;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // Fields 14 (utime) and 15 (stime), counting from 1 with the name as field 2.
        let ticks: f64 = fields
            .get(11..13)
            .context("short /proc/<pid>/stat")?
            .iter()
            .map(|f| f.parse::<f64>())
            .sum::<Result<f64, _>>()?;
        Ok(ticks / clock_ticks_per_second())
    }

    /// The sum of every sample of the metric `name` (all label sets).
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let (status, body) = http_get(self.metrics_addr, "/metrics").await?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(sum_samples(&body, name))
    }

    /// Stops the operator (SIGTERM, SIGKILL after 25 s).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.terminate().await
    }

    /// Stops this process and starts a fresh one with the same arguments.
    pub async fn restart(mut self) -> anyhow::Result<Operator> {
        self.terminate().await?;
        Operator::start(&self.binary, &self.kubeconfig, &self.log)
    }

    async fn terminate(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(25);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_local_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// USER_HZ, the unit of /proc/<pid>/stat times.
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// A bare HTTP/1.0 GET (no chunked bodies to decode): status and body.
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await??;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await??;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Sums the samples of `name` in a Prometheus text exposition.
fn sum_samples(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}
