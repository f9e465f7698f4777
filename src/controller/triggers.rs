//! Which watch events start a reconcile.
//!
//! Every write keyrotor makes comes back to it as a watch event. Reconciling on those
//! finds nothing to do and costs two reads per event, so they are dropped here:
//!
//! - a Secret or ConfigMap event whose `resourceVersion` one of keyrotor's own latest
//!   writes of that object returned ([`OwnWrites`]); deletions always pass;
//! - a policy event that changes neither what the reconcile reads from the policy
//!   (uid, generation, the rotate-request annotation, labels, deletion) nor its status,
//!   unless the status differs from the one keyrotor last wrote (a wiped or hand-edited
//!   status is repaired) ([`PolicyTriggers`]).
//!
//! A dropped event never hides a change made by someone else: any other write gives the
//! object a new `resourceVersion`, or changes the policy's fingerprint or status.
//! Publication of a key keyrotor just wrote is observed from the write's own response
//! (see `reconcile_policy`), not from its watch event.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::Event;

use crate::api::{JwtSigningKey, JwtSigningKeyStatus, ROTATE_REQUEST_ANNOTATION};

type Key = (String, String);

fn key(meta: &ObjectMeta) -> Option<Key> {
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How many of keyrotor's latest writes of one object are remembered: a reconcile may
/// write an object twice, and the first write's event can arrive after the second.
const REMEMBERED_WRITES: usize = 3;

/// The `resourceVersion`s keyrotor's own latest writes returned, per object of one
/// kind.
#[derive(Debug, Default)]
pub struct OwnWrites {
    versions: Mutex<HashMap<Key, Vec<String>>>,
}

impl OwnWrites {
    /// Records the object as the API server returned it from keyrotor's write.
    pub fn record(&self, meta: &ObjectMeta) {
        if let (Some(key), Some(version)) = (key(meta), meta.resource_version.clone()) {
            let mut versions = lock(&self.versions);
            let latest = versions.entry(key).or_default();
            if latest.len() >= REMEMBERED_WRITES {
                latest.remove(0);
            }
            latest.push(version);
        }
    }

    /// Whether this is exactly a version one of keyrotor's latest writes produced.
    pub fn is_own(&self, meta: &ObjectMeta) -> bool {
        let (Some(key), Some(version)) = (key(meta), meta.resource_version.as_ref()) else {
            return false;
        };
        lock(&self.versions)
            .get(&key)
            .is_some_and(|latest| latest.contains(version))
    }

    fn forget(&self, meta: &ObjectMeta) {
        if let Some(key) = key(meta) {
            lock(&self.versions).remove(&key);
        }
    }

    /// Whether a watch event of this kind should trigger a reconcile: everything but
    /// keyrotor's own writes coming back.
    pub fn wants<K: kube::Resource>(&self, event: &Event<K>) -> bool {
        match event {
            Event::Apply(object) | Event::InitApply(object) => !self.is_own(object.meta()),
            Event::Delete(object) => {
                self.forget(object.meta());
                true
            }
            Event::Init | Event::InitDone => true,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.versions).len()
    }
}

/// What a reconcile reads from a policy besides its spec (covered by the generation)
/// and its status.
fn fingerprint(policy: &JwtSigningKey) -> u64 {
    let meta = &policy.metadata;
    let mut hasher = DefaultHasher::new();
    meta.uid.hash(&mut hasher);
    meta.generation.hash(&mut hasher);
    meta.deletion_timestamp.is_some().hash(&mut hasher);
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(ROTATE_REQUEST_ANNOTATION))
        .hash(&mut hasher);
    meta.labels.hash(&mut hasher);
    hasher.finish()
}

/// Decides which policy watch events trigger a reconcile; owned by the policy stream.
#[derive(Debug, Default)]
pub struct PolicyTriggers {
    seen: HashMap<Key, u64>,
}

impl PolicyTriggers {
    /// `written`: the status keyrotor last wrote for this policy, if any.
    pub fn wants(
        &mut self,
        event: &Event<JwtSigningKey>,
        written: impl FnOnce(&Key) -> Option<JwtSigningKeyStatus>,
    ) -> bool {
        let policy = match event {
            Event::Apply(policy) | Event::InitApply(policy) => policy,
            Event::Delete(policy) => {
                if let Some(key) = key(&policy.metadata) {
                    self.seen.remove(&key);
                }
                return true;
            }
            Event::Init | Event::InitDone => return true,
        };
        let Some(key) = key(&policy.metadata) else {
            return true;
        };
        let print = fingerprint(policy);
        let changed = self.seen.insert(key.clone(), print) != Some(print);
        if changed {
            return true;
        }
        match written(&key) {
            Some(status) => policy.status.as_ref() != Some(&status),
            None => true,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::JwtSigningKeySpec;
    use std::collections::BTreeMap;

    fn meta(name: &str, version: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(format!("uid-{name}")),
            resource_version: Some(version.into()),
            generation: Some(1),
            ..ObjectMeta::default()
        }
    }

    fn policy(version: &str) -> JwtSigningKey {
        let spec: JwtSigningKeySpec = serde_json::from_value(serde_json::json!({
            "rotationInterval": "24h",
            "maxTokenLifetime": "1h",
            "propagationDelay": "15m",
        }))
        .expect("spec");
        JwtSigningKey {
            metadata: meta("p", version),
            spec,
            status: None,
        }
    }

    fn status(kid: &str) -> JwtSigningKeyStatus {
        JwtSigningKeyStatus {
            active_key_id: Some(kid.into()),
            ..JwtSigningKeyStatus::default()
        }
    }

    #[test]
    fn own_writes_are_dropped_and_every_other_version_passes() {
        let own = OwnWrites::default();
        let secret = |version: &str| k8s_openapi::api::core::v1::Secret {
            metadata: meta("s", version),
            ..Default::default()
        };
        assert!(own.wants(&Event::Apply(secret("10"))), "unknown object");
        own.record(&meta("s", "11"));
        assert!(!own.wants(&Event::Apply(secret("11"))), "our own write");
        assert!(!own.wants(&Event::InitApply(secret("11"))), "relist of it");
        assert!(
            own.wants(&Event::Apply(secret("12"))),
            "someone else's write"
        );
        own.record(&meta("s", "13"));
        own.record(&meta("s", "14"));
        assert!(
            !own.wants(&Event::Apply(secret("13"))),
            "an earlier write of ours, arriving late"
        );
        assert!(own.wants(&Event::Delete(secret("11"))), "deletion");
        assert_eq!(own.len(), 0, "deleted objects are forgotten");
        assert!(own.wants(&Event::Apply(secret("11"))));
    }

    #[test]
    fn own_status_writes_are_dropped_other_changes_pass() {
        let mut triggers = PolicyTriggers::default();
        let none = |_: &Key| None;
        let ours = |_: &Key| Some(status("a"));
        let p = policy("1");
        assert!(
            triggers.wants(&Event::Apply(p.clone()), none),
            "first sight"
        );

        let mut written = p.clone();
        written.metadata.resource_version = Some("2".into());
        written.status = Some(status("a"));
        assert!(!triggers.wants(&Event::Apply(written.clone()), ours));
        assert!(!triggers.wants(&Event::InitApply(written.clone()), ours));

        let mut wiped = written.clone();
        wiped.status = None;
        assert!(triggers.wants(&Event::Apply(wiped), ours), "wiped status");
        assert!(
            triggers.wants(&Event::Apply(written.clone()), none),
            "a status keyrotor did not write"
        );

        let mut requested = written.clone();
        requested.metadata.annotations = Some(BTreeMap::from([(
            ROTATE_REQUEST_ANNOTATION.to_owned(),
            "now".to_owned(),
        )]));
        assert!(triggers.wants(&Event::Apply(requested.clone()), ours));
        assert!(!triggers.wants(&Event::Apply(requested.clone()), ours));

        let mut edited = requested.clone();
        edited.metadata.generation = Some(2);
        assert!(triggers.wants(&Event::Apply(edited.clone()), ours));

        let mut labelled = edited.clone();
        labelled.metadata.labels = Some(BTreeMap::from([("a".to_owned(), "b".to_owned())]));
        assert!(triggers.wants(&Event::Apply(labelled.clone()), ours));

        let mut deleting = labelled.clone();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        assert!(triggers.wants(&Event::Apply(deleting.clone()), ours));
        assert!(triggers.wants(&Event::Delete(deleting), ours));
        assert_eq!(triggers.len(), 0, "deleted policies are forgotten");
    }
}
