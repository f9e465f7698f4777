//! The API server's audit log (`KEYROTOR_AUDIT_LOG`), read incrementally: one event per
//! request at Metadata level, which tells who made each request and what it was.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub struct User {
    #[serde(default)]
    pub username: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct ObjectRef {
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub subresource: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ResponseStatus {
    #[serde(default)]
    pub code: u16,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    #[serde(rename = "auditID")]
    pub audit_id: String,
    pub stage: String,
    pub verb: String,
    #[serde(default)]
    pub user: User,
    #[serde(default)]
    pub object_ref: Option<ObjectRef>,
    #[serde(default)]
    pub response_status: Option<ResponseStatus>,
    pub request_received_timestamp: DateTime<Utc>,
}

impl Event {
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }

    /// One event per request: a watch is counted when it starts, anything else when
    /// it completes.
    fn counts_as_request(&self) -> bool {
        if self.verb == "watch" {
            self.stage == "ResponseStarted"
        } else {
            self.stage == "ResponseComplete"
        }
    }

    fn code(&self) -> u16 {
        self.response_status.as_ref().map_or(0, |s| s.code)
    }

    fn namespace(&self) -> Option<&str> {
        self.object_ref
            .as_ref()
            .and_then(|o| o.namespace.as_deref())
    }

    /// `secrets`, `configmaps`, `jwtsigningkeys/status`, `events`, ...
    fn kind(&self) -> String {
        match &self.object_ref {
            Some(ObjectRef {
                resource,
                subresource: Some(sub),
                ..
            }) => format!("{resource}/{sub}"),
            Some(o) => o.resource.clone(),
            None => "(none)".to_owned(),
        }
    }
}

/// Which requests to count.
pub struct Filter<'a> {
    pub username: &'a str,
    /// Only requests on objects in this namespace.
    pub namespace: Option<&'a str>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// Requests of one client over a window.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Counts {
    pub requests: u64,
    /// Writes the API server carried out (status < 400).
    pub writes: u64,
    /// Writes the API server refused (conflicts, throttling, ...).
    pub failed_writes: u64,
    /// Successful writes by resource (`secrets`, `jwtsigningkeys/status`, ...).
    pub writes_by_kind: BTreeMap<String, u64>,
    /// Every request by verb.
    pub requests_by_verb: BTreeMap<String, u64>,
}

pub struct AuditLog {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    events: Vec<Event>,
}

impl AuditLog {
    /// Starts reading at the log's current end: earlier requests are not ours to count.
    pub fn open(path: PathBuf) -> anyhow::Result<AuditLog> {
        let offset = std::fs::metadata(&path)
            .with_context(|| format!("audit log {}", path.display()))?
            .len();
        Ok(AuditLog {
            path,
            offset,
            partial: Vec::new(),
            events: Vec::new(),
        })
    }

    /// Reads what the API server has appended since the last call.
    pub fn refresh(&mut self) -> anyhow::Result<()> {
        let mut file =
            File::open(&self.path).with_context(|| format!("audit log {}", self.path.display()))?;
        file.seek(SeekFrom::Start(self.offset))?;
        let mut fresh = Vec::new();
        file.read_to_end(&mut fresh)?;
        self.offset += fresh.len() as u64;
        self.partial.extend_from_slice(&fresh);
        // Only whole lines: the API server may be writing the last one right now.
        let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return Ok(());
        };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        for line in complete.split(|b| *b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let event: Event = serde_json::from_slice(line).with_context(|| {
                format!(
                    "bad audit line in {}: {}",
                    self.path.display(),
                    String::from_utf8_lossy(line)
                )
            })?;
            self.events.push(event);
        }
        Ok(())
    }

    pub fn counts(&self, filter: &Filter<'_>) -> Counts {
        let mut counts = Counts::default();
        let mut seen = HashSet::new();
        for event in self.matching(filter) {
            if !event.counts_as_request() || !seen.insert(event.audit_id.as_str()) {
                continue;
            }
            counts.requests += 1;
            *counts
                .requests_by_verb
                .entry(event.verb.clone())
                .or_default() += 1;
            if event.is_write() {
                if event.code() < 400 {
                    counts.writes += 1;
                    *counts.writes_by_kind.entry(event.kind()).or_default() += 1;
                } else {
                    counts.failed_writes += 1;
                }
            }
        }
        counts
    }

    /// When the last write matching `filter` was received, if any.
    pub fn last_write(&self, filter: &Filter<'_>) -> Option<DateTime<Utc>> {
        self.matching(filter)
            .filter(|e| e.is_write())
            .map(|e| e.request_received_timestamp)
            .max()
    }

    fn matching<'a>(&'a self, filter: &'a Filter<'_>) -> impl Iterator<Item = &'a Event> + 'a {
        self.events.iter().filter(move |e| {
            e.user.username == filter.username
                && e.request_received_timestamp >= filter.from
                && e.request_received_timestamp < filter.to
                && filter.namespace.is_none_or(|ns| e.namespace() == Some(ns))
        })
    }
}
