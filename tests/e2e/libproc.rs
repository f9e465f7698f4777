//! A verifier library running in its own long-lived process (Python PyJWT, Node jose),
//! spoken to in line-delimited JSON over stdin/stdout. Requests are pipelined; each
//! response carries the request's `n` and is handed to the callback given with it.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

type Callback = Box<dyn FnOnce(Value) + Send>;

pub struct LibraryProcess {
    child: Mutex<Option<Child>>,
    requests: mpsc::UnboundedSender<String>,
    pending: Arc<Mutex<HashMap<u64, Callback>>>,
    counter: AtomicU64,
}

impl LibraryProcess {
    /// Starts `program script`; its stderr goes to `stderr_log`.
    pub fn start(
        program: &Path,
        script: &Path,
        stderr_log: &Path,
    ) -> Result<Arc<LibraryProcess>, String> {
        let log = std::fs::File::create(stderr_log)
            .map_err(|e| format!("cannot create {}: {e}", stderr_log.display()))?;
        let mut child = Command::new(program)
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start {} {}: {e}",
                    program.display(),
                    script.display()
                )
            })?;
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                if stdin.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
                // Flush only when nothing else is queued: batches writes under load.
                if rx.is_empty() && stdin.flush().await.is_err() {
                    break;
                }
            }
        });
        let pending: Arc<Mutex<HashMap<u64, Callback>>> = Arc::default();
        let responses = pending.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(value) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let Some(n) = value["n"].as_u64() else {
                    continue;
                };
                let callback = responses.lock().ok().and_then(|mut p| p.remove(&n));
                if let Some(callback) = callback {
                    callback(value);
                }
            }
            // The process is gone: fail whatever is still waiting.
            let waiting: Vec<Callback> = responses
                .lock()
                .map(|mut p| p.drain().map(|(_, c)| c).collect())
                .unwrap_or_default();
            for callback in waiting {
                callback(
                    json!({"ok": false, "error": "verifier process exited", "processGone": true}),
                );
            }
        });
        Ok(Arc::new(LibraryProcess {
            child: Mutex::new(Some(child)),
            requests: tx,
            pending,
            counter: AtomicU64::new(0),
        }))
    }

    /// Sends a request; `callback` receives the response.
    pub fn send(&self, mut request: Value, callback: impl FnOnce(Value) + Send + 'static) {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        request["n"] = json!(n);
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(n, Box::new(callback));
        }
        let mut line = request.to_string();
        line.push('\n');
        if self.requests.send(line).is_err()
            && let Some(callback) = self.pending.lock().ok().and_then(|mut p| p.remove(&n))
        {
            callback(
                json!({"ok": false, "error": "verifier process not running", "processGone": true}),
            );
        }
    }

    /// Sends a request and waits for its response.
    pub async fn call(&self, request: Value) -> Value {
        let (tx, rx) = oneshot::channel();
        self.send(request, move |v| {
            let _ = tx.send(v);
        });
        rx.await
            .unwrap_or_else(|_| json!({"ok": false, "error": "no response"}))
    }

    /// Requests still waiting for a response.
    pub fn in_flight(&self) -> usize {
        self.pending.lock().map(|p| p.len()).unwrap_or(0)
    }

    pub async fn stop(&self) {
        let child = self.child.lock().ok().and_then(|mut c| c.take());
        if let Some(mut child) = child {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}
