//! JWKS conformance of every document keyrotor published: the RFC 7517/7518/7638 checks
//! of tests/e2e/verifiers/verifier.py (PyJWT's `cryptography`), jose's own thumbprint
//! and import of each key, and the ordering rule (Active first).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::json;

use crate::libproc::LibraryProcess;
use crate::model::{Change, Observation};

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Conformance {
    pub documents_checked: usize,
    pub keys_checked: usize,
    /// problem -> how many documents had it
    pub problems: BTreeMap<String, usize>,
}

impl Conformance {
    fn problem(&mut self, text: String) {
        *self.problems.entry(text).or_default() += 1;
    }
}

/// Invariant 8, the Active key first, judged against the rings a document's writer can
/// have planned on: any Secret version current since the document before. The JWKS
/// write is guarded by that document's version only, so with two writers one may render
/// a ring one rotation behind; a renderer that never puts the new Active first is still
/// caught, one document later.
#[derive(Default)]
pub struct ActiveFirst {
    active: Option<String>,
    since_last_document: BTreeSet<String>,
}

impl ActiveFirst {
    /// A Secret version, with the kid it names Active.
    pub fn secret(&mut self, active: Option<String>) {
        self.since_last_document.extend(active.clone());
        self.active = active;
    }

    /// Whether a document (its kids in order) holds the Active key but puts first a key
    /// that no ring current since the document before had Active. Every document starts
    /// a new window.
    pub fn broken_by(&mut self, kids: &[String]) -> bool {
        let planned_on = std::mem::replace(
            &mut self.since_last_document,
            self.active.iter().cloned().collect(),
        );
        self.active.as_ref().is_some_and(|a| kids.contains(a))
            && kids.first().is_none_or(|first| !planned_on.contains(first))
    }
}

pub async fn check(
    observations: &[Observation],
    secret_name: &str,
    config_map_name: &str,
    written_by_harness: &BTreeSet<String>,
    foreign_kids: &BTreeSet<String>,
    python: &LibraryProcess,
    node: &LibraryProcess,
) -> Conformance {
    let mut result = Conformance::default();
    let mut ordered: Vec<&Observation> = observations.iter().collect();
    ordered.sort_by_key(|o| o.rv);
    let mut seen = BTreeSet::new();
    let mut active_first = ActiveFirst::default();
    for observation in ordered {
        match &observation.change {
            Change::Secret(Some(s)) if observation.name == secret_name => {
                active_first.secret(s.kid.clone());
            }
            Change::ConfigMap(Some(doc)) if observation.name == config_map_name => {
                let active_not_first = active_first.broken_by(&doc.kids);
                let Some(text) = &doc.text else {
                    result.problem("ConfigMap without the JWKS key".into());
                    continue;
                };
                if written_by_harness.contains(text) {
                    continue;
                }
                // Invariant 8: Active first (when the document has it at all; a missing
                // Active key is the checker's invariant 1).
                if active_not_first {
                    result.problem("the Active key is not the first key".into());
                }
                if let Some(e) = &doc.parse_error {
                    result.problem(format!("not a JWKS keyrotor accepts: {e}"));
                }
                match doc
                    .sources
                    .as_deref()
                    .map(serde_json::from_str::<BTreeMap<String, Vec<String>>>)
                {
                    None => result.problem("no keyrotor.dev/sources annotation".into()),
                    Some(Err(_)) => {
                        result.problem("keyrotor.dev/sources is not a map of kid lists".into())
                    }
                    Some(Ok(sources)) => {
                        let attributed: BTreeSet<&String> = sources.values().flatten().collect();
                        if doc
                            .kids
                            .iter()
                            .any(|k| !attributed.contains(k) && !foreign_kids.contains(k))
                        {
                            result.problem("a published kid is not in keyrotor.dev/sources".into());
                        }
                    }
                }
                if !seen.insert(text.clone()) {
                    continue;
                }
                result.documents_checked += 1;
                result.keys_checked += doc.kids.len();
                let py = python
                    .call(json!({"op": "conformance", "jwks": text}))
                    .await;
                match py["problems"].as_array() {
                    Some(problems) => {
                        for p in problems {
                            result.problem(format!("RFC: {}", p.as_str().unwrap_or("?")));
                        }
                    }
                    None => result.problem(format!("conformance check failed: {}", py["error"])),
                }
                let js = node.call(json!({"op": "thumbprints", "jwks": text})).await;
                match js["keys"].as_array() {
                    Some(keys) => {
                        for key in keys {
                            if key["thumbprint"] != key["kid"] {
                                result.problem("jose: kid is not the RFC 7638 thumbprint".into());
                            }
                            if key["imported"].as_bool() != Some(true) {
                                result
                                    .problem(format!("jose cannot import a key: {}", key["error"]));
                            }
                        }
                    }
                    None => result.problem(format!("jose thumbprints failed: {}", js["error"])),
                }
            }
            _ => {}
        }
    }
    result
}
