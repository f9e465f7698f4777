//! The objects keyrotor writes, rendered from a plan, and the comparisons that decide
//! whether a write is needed. Pure: no I/O, no clock.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use crate::api::JwtSigningKey;
use crate::jwks::{self, JwksDocument, JwksError, JwksSource, MergedJwks};
use crate::keys::PublicJwk;

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "keyrotor";
/// Label on every object keyrotor writes; the watches select on it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "keyrotor";
/// Label naming the policy a Secret belongs to.
pub const POLICY_LABEL: &str = "keyrotor.dev/policy";
/// Annotation on a JWKS ConfigMap: policy name → the kids it contributed.
pub const SOURCES_ANNOTATION: &str = "keyrotor.dev/sources";
/// The label selector of keyrotor's own objects.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=keyrotor";

/// Secret type with certificates (`tls.crt`/`tls.key`).
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";
/// Secret type without certificates.
pub const OPAQUE_SECRET_TYPE: &str = "Opaque";

fn managed_labels(policy: Option<&str>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned())]);
    if let Some(policy) = policy {
        labels.insert(POLICY_LABEL.to_owned(), policy.to_owned());
    }
    labels
}

/// An owner reference to `policy`. `controller` only on the Secret: a shared ConfigMap
/// has several owners and none of them controls it. No `blockOwnerDeletion`, which
/// would need extra permissions and buys nothing here.
pub fn owner_reference(policy: &JwtSigningKey, controller: bool) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: JwtSigningKey::api_version(&()).into_owned(),
        kind: JwtSigningKey::kind(&()).into_owned(),
        name: policy.metadata.name.clone()?,
        uid: policy.metadata.uid.clone()?,
        controller: controller.then_some(true),
        block_owner_deletion: None,
    })
}

/// The signing Secret as keyrotor wants it.
pub fn secret(
    policy: &JwtSigningKey,
    name: &str,
    certificate: bool,
    data: BTreeMap<String, Vec<u8>>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: policy.metadata.namespace.clone(),
            labels: Some(managed_labels(policy.metadata.name.as_deref())),
            owner_references: owner_reference(policy, true).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        type_: Some(
            if certificate {
                TLS_SECRET_TYPE
            } else {
                OPAQUE_SECRET_TYPE
            }
            .to_owned(),
        ),
        data: Some(
            data.into_iter()
                .map(|(key, value)| (key, ByteString(value)))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// Whether `existing` already carries everything in `desired` (labels, owner
/// references, type and every data key keyrotor writes), so no write is needed.
pub fn secret_is_current(existing: &Secret, desired: &Secret) -> bool {
    metadata_is_current(&existing.metadata, &desired.metadata)
        && existing.type_.as_deref().unwrap_or(OPAQUE_SECRET_TYPE)
            == desired.type_.as_deref().unwrap_or(OPAQUE_SECRET_TYPE)
        && map_contains(existing.data.as_ref(), desired.data.as_ref())
}

/// The JWKS ConfigMap as keyrotor wants it.
pub fn config_map(
    namespace: &str,
    name: &str,
    key: &str,
    merged: &MergedJwks,
    owners: Vec<OwnerReference>,
) -> ConfigMap {
    // Serialising a map of strings cannot fail.
    let sources = serde_json::to_string(&merged.sources).unwrap_or_default();
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(managed_labels(None)),
            annotations: Some(BTreeMap::from([(SOURCES_ANNOTATION.to_owned(), sources)])),
            owner_references: Some(owners),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            key.to_owned(),
            String::from_utf8_lossy(&merged.document).into_owned(),
        )])),
        ..ConfigMap::default()
    }
}

/// Whether `existing` already matches `desired`: same owners (keyrotor owns the whole
/// list), labels, the sources annotation and the JWKS key.
pub fn config_map_is_current(existing: &ConfigMap, desired: &ConfigMap) -> bool {
    let owners = |meta: &ObjectMeta| -> BTreeSet<(String, String)> {
        meta.owner_references
            .iter()
            .flatten()
            .map(|r| (r.uid.clone(), r.name.clone()))
            .collect()
    };
    owners(&existing.metadata) == owners(&desired.metadata)
        && metadata_is_current(&existing.metadata, &desired.metadata)
        && map_contains(existing.data.as_ref(), desired.data.as_ref())
}

fn metadata_is_current(existing: &ObjectMeta, desired: &ObjectMeta) -> bool {
    let owners_present = desired.owner_references.iter().flatten().all(|want| {
        existing
            .owner_references
            .iter()
            .flatten()
            .any(|have| have.uid == want.uid && have.controller == want.controller)
    });
    owners_present
        && map_contains(existing.labels.as_ref(), desired.labels.as_ref())
        && map_contains(existing.annotations.as_ref(), desired.annotations.as_ref())
}

fn map_contains<V: PartialEq>(
    existing: Option<&BTreeMap<String, V>>,
    desired: Option<&BTreeMap<String, V>>,
) -> bool {
    desired.into_iter().flatten().all(|(key, want)| {
        existing
            .and_then(|have| have.get(key))
            .is_some_and(|have| have == want)
    })
}

/// Makes an apply of `desired` a guarded write of the object `read`: the API server
/// refuses it with a conflict if the object changed (`resourceVersion`) or was deleted
/// (`uid`) since. With the `resourceVersion` alone, an apply re-creates a deleted object.
pub fn guard_on(desired: &mut ObjectMeta, read: &ObjectMeta) {
    desired.resource_version = read.resource_version.clone();
    desired.uid = read.uid.clone();
}

/// Whether a Secret or ConfigMap carries keyrotor's label (so keyrotor may write it).
pub fn is_managed(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|labels| labels.get(MANAGED_BY_LABEL))
        .is_some_and(|value| value == MANAGED_BY)
}

/// Whether `meta` has an owner reference to the policy with this uid.
pub fn is_owned_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references.iter().flatten().any(|r| r.uid == uid)
}

/// What a JWKS ConfigMap holds, as far as keyrotor can read it.
#[derive(Clone, Debug, Default)]
pub struct TargetContent {
    /// The ConfigMap exists.
    pub exists: bool,
    /// The parsed JWKS (`None`: no such data key, or not a JWKS).
    pub document: Option<JwksDocument>,
    /// The sources annotation (`None`: absent or unreadable).
    pub sources: Option<BTreeMap<String, Vec<String>>>,
}

impl TargetContent {
    /// Reads the JWKS under `key` and the sources annotation.
    pub fn read(config_map: Option<&ConfigMap>, key: &str) -> TargetContent {
        let Some(config_map) = config_map else {
            return TargetContent::default();
        };
        let document = config_map
            .data
            .as_ref()
            .and_then(|data| data.get(key))
            .and_then(|text| jwks::parse(text.as_bytes()).ok());
        TargetContent {
            exists: true,
            document,
            sources: read_sources(&config_map.metadata),
        }
    }

    /// Kids in the document (`None` if there is no readable JWKS).
    pub fn kids(&self) -> Option<BTreeSet<String>> {
        self.document.as_ref().map(JwksDocument::kids)
    }

    /// Public keys the document attributes to `source`. When the sources annotation is
    /// unreadable and `source` is the only policy publishing here, every key counts as
    /// its own (the planner keeps only those that fit the policy).
    pub fn keys_of(&self, source: &str, only_member: bool) -> Vec<PublicJwk> {
        let Some(document) = &self.document else {
            return Vec::new();
        };
        match &self.sources {
            Some(sources) => sources
                .get(source)
                .into_iter()
                .flatten()
                .filter_map(|kid| document.public_jwk(kid).and_then(Result::ok))
                .collect(),
            None if only_member => document.public_jwks(),
            None => Vec::new(),
        }
    }
}

/// Whether the sources annotation names the policy `source`. A plain substring test
/// rules out most ConfigMaps before the annotation is parsed.
pub fn names_source(meta: &ObjectMeta, source: &str) -> bool {
    let quoted = format!("\"{source}\"");
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(SOURCES_ANNOTATION))
        .is_some_and(|text| text.contains(&quoted))
        && read_sources(meta).is_some_and(|s| s.contains_key(source))
}

/// Parses the sources annotation.
pub fn read_sources(meta: &ObjectMeta) -> Option<BTreeMap<String, Vec<String>>> {
    let text = meta.annotations.as_ref()?.get(SOURCES_ANNOTATION)?;
    serde_json::from_str(text).ok()
}

/// The merged JWKS of a shared ConfigMap: `own` keys for the policy `source`, plus the
/// keys the ConfigMap already attributes to each other policy in `members` (policies
/// that still publish here). Keys of policies that left are dropped.
pub fn merge_target(
    source: &str,
    own: &[PublicJwk],
    target: &TargetContent,
    members: &BTreeSet<String>,
) -> Result<MergedJwks, JwksError> {
    let mut sources = vec![JwksSource {
        name: source.to_owned(),
        keys: own.to_vec(),
    }];
    for other in members.iter().filter(|m| m.as_str() != source) {
        let keys = target.keys_of(other, false);
        if !keys.is_empty() {
            sources.push(JwksSource {
                name: other.clone(),
                keys,
            });
        }
    }
    jwks::merge(&sources)
}

/// The same merge without `source`: what a ConfigMap holds once a policy stops
/// publishing to it (possibly no keys, until the remaining members add theirs).
pub fn merge_without(
    source: &str,
    target: &TargetContent,
    members: &BTreeSet<String>,
) -> Result<MergedJwks, JwksError> {
    let sources: Vec<JwksSource> = members
        .iter()
        .filter(|m| m.as_str() != source)
        .map(|other| JwksSource {
            name: other.clone(),
            keys: target.keys_of(other, false),
        })
        .filter(|s| !s.keys.is_empty())
        .collect();
    jwks::merge(&sources)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::JwtSigningKeySpec;
    use crate::keys::{Algorithm, KeyGenerator, RsaBits, SeededKeyGenerator};

    fn policy(name: &str, uid: &str) -> JwtSigningKey {
        let spec: JwtSigningKeySpec =
            serde_json::from_value(serde_json::json!({})).expect("defaults");
        let mut policy = JwtSigningKey::new(name, spec);
        policy.metadata.namespace = Some("auth".into());
        policy.metadata.uid = Some(uid.into());
        policy
    }

    fn keys(seed: u64, count: usize) -> Vec<PublicJwk> {
        let generator = SeededKeyGenerator::new(seed);
        (0..count)
            .map(|_| {
                generator
                    .generate(Algorithm::ES256, RsaBits::default())
                    .expect("seeded key")
                    .public_jwk()
            })
            .collect()
    }

    fn members(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn written(merged: &MergedJwks, owners: Vec<OwnerReference>) -> ConfigMap {
        config_map("auth", "auth-jwks", "jwks.json", merged, owners)
    }

    #[test]
    fn secret_comparison_sees_every_difference() {
        let p = policy("a", "uid-a");
        let data = BTreeMap::from([("kid".to_owned(), b"k1".to_vec())]);
        let desired = secret(&p, "a-signing-key", false, data.clone());
        assert!(secret_is_current(&desired, &desired));

        let mut extra = desired.clone();
        extra
            .data
            .as_mut()
            .expect("data")
            .insert("other".into(), ByteString(b"x".to_vec()));
        assert!(
            secret_is_current(&extra, &desired),
            "foreign keys are ignored"
        );

        let changed = secret(
            &p,
            "a-signing-key",
            false,
            BTreeMap::from([("kid".to_owned(), b"k2".to_vec())]),
        );
        assert!(!secret_is_current(&changed, &desired));

        let mut no_owner = desired.clone();
        no_owner.metadata.owner_references = None;
        assert!(!secret_is_current(&no_owner, &desired));

        let tls = secret(&p, "a-signing-key", true, data);
        assert!(!secret_is_current(&desired, &tls));
    }

    #[test]
    fn shared_config_map_keeps_other_members_and_drops_leavers() {
        let (a, b, c) = (keys(1, 2), keys(2, 1), keys(3, 1));
        let all = members(&["a", "b", "c"]);
        let with_b = merge_target("b", &b, &TargetContent::default(), &all).expect("merge");
        let cm = written(&with_b, vec![]);
        let target = TargetContent::read(Some(&cm), "jwks.json");
        let with_a = merge_target("a", &a, &target, &all).expect("merge");
        assert_eq!(with_a.sources.len(), 2);
        assert_eq!(with_a.sources["b"], vec![b[0].kid.clone()]);
        assert_eq!(with_a.sources["a"].len(), 2);

        let cm = written(&with_a, vec![]);
        let target = TargetContent::read(Some(&cm), "jwks.json");
        let with_c = merge_target("c", &c, &target, &all).expect("merge");
        assert_eq!(
            with_c.sources.keys().collect::<Vec<_>>(),
            ["a", "b", "c"],
            "union of every member"
        );

        // b leaves: a's next render drops b's keys.
        let cm = written(&with_c, vec![]);
        let target = TargetContent::read(Some(&cm), "jwks.json");
        let without_b = merge_target("a", &a, &target, &members(&["a", "c"])).expect("merge");
        assert_eq!(without_b.sources.keys().collect::<Vec<_>>(), ["a", "c"]);
        let kids = jwks::parse(&without_b.document).expect("jwks").kids();
        assert!(!kids.contains(&b[0].kid));
        assert!(kids.contains(&c[0].kid) && kids.contains(&a[1].kid));

        // c moves elsewhere: what stays is a's keys only; once a is gone, nothing.
        let cm = written(&without_b, vec![]);
        let target = TargetContent::read(Some(&cm), "jwks.json");
        let left = merge_without("c", &target, &members(&["a"])).expect("merge");
        assert_eq!(left.sources.keys().collect::<Vec<_>>(), ["a"]);
        let empty = merge_without("a", &target, &members(&["a"])).expect("merge");
        assert!(empty.sources.is_empty());
        assert!(jwks::parse(&empty.document).expect("jwks").is_empty());
    }

    #[test]
    fn rendering_is_deterministic_and_comparable() {
        let a = keys(7, 2);
        let merged =
            merge_target("a", &a, &TargetContent::default(), &members(&["a"])).expect("merge");
        let owners = vec![owner_reference(&policy("a", "uid-a"), false).expect("owner")];
        let first = written(&merged, owners.clone());
        let again = written(
            &merge_target("a", &a, &TargetContent::default(), &members(&["a"])).expect("merge"),
            owners,
        );
        assert_eq!(first, again);
        assert!(config_map_is_current(&first, &again));

        let mut edited = first.clone();
        edited
            .data
            .as_mut()
            .expect("data")
            .insert("jwks.json".into(), "{\"keys\":[]}".into());
        assert!(!config_map_is_current(&edited, &first));

        let mut more_owners = first.clone();
        more_owners
            .metadata
            .owner_references
            .as_mut()
            .expect("owners")
            .push(owner_reference(&policy("b", "uid-b"), false).expect("owner"));
        assert!(
            !config_map_is_current(&more_owners, &first),
            "a departed owner must be removed"
        );
    }

    #[test]
    fn unreadable_sources_attribute_keys_only_to_a_sole_member() {
        let a = keys(9, 2);
        let merged =
            merge_target("a", &a, &TargetContent::default(), &members(&["a"])).expect("merge");
        let mut cm = written(&merged, vec![]);
        cm.metadata.annotations = None;
        let target = TargetContent::read(Some(&cm), "jwks.json");
        assert_eq!(target.keys_of("a", true).len(), 2);
        assert!(target.keys_of("a", false).is_empty());
        assert_eq!(target.kids().map(|k| k.len()), Some(2));
    }
}
