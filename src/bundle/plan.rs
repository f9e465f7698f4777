//! The pure half of the bundle controller: which policies and namespaces a bundle
//! selects, the ConfigMap it writes, whether an existing ConfigMap is its own, the
//! status, and what a bundle tells a policy about where its keys are published.
//! No I/O, no clock reads.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    Condition, LabelSelector, ObjectMeta, OwnerReference,
};
use kube::Resource;
use kube::core::{Selector, SelectorExt};

use super::api::{BundleKeyStatus, JwksBundle, JwksBundleSpec, JwksBundleStatus};
use crate::controller::render::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::controller::status::{DEGRADED, READY, to_time};
use crate::jwks::{self, JwksError, JwksSource, MergedJwks};
use crate::keys::PublicJwk;
use crate::plan::TargetObservation;

/// Label naming the bundle a ConfigMap belongs to (with [`MANAGED_BY_LABEL`]).
pub const BUNDLE_LABEL: &str = "keyrotor.dev/bundle";
/// Annotation on a bundle ConfigMap: source → the kids it contributed.
pub const BUNDLE_SOURCES_ANNOTATION: &str = "keyrotor.dev/bundle-sources";
/// Finalizer that removes the bundle's ConfigMaps in every namespace before the bundle
/// goes.
pub const FINALIZER: &str = "keyrotor.dev/bundle-cleanup";
/// Source name of static keys in the merged JWKS and the status.
pub const STATIC_SOURCE: &str = "static";

/// A label selector that cannot be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector: {0}")]
pub struct SelectorError(String);

fn parse_selector(selector: &LabelSelector) -> Result<Selector, SelectorError> {
    Selector::try_from(selector.clone()).map_err(|e| SelectorError(e.to_string()))
}

/// Whether a label selector has no requirement at all.
pub fn is_empty_selector(selector: &LabelSelector) -> bool {
    selector
        .match_labels
        .as_ref()
        .is_none_or(BTreeMap::is_empty)
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(Vec::is_empty)
}

/// Whether the bundle's `namespaceSelector` picks a namespace with these labels. An
/// empty selector picks none, so nothing is published by accident.
pub fn selects_namespace(
    spec: &JwksBundleSpec,
    labels: &BTreeMap<String, String>,
) -> Result<bool, SelectorError> {
    let selector = &spec.target.namespace_selector;
    if is_empty_selector(selector) {
        return Ok(false);
    }
    Ok(parse_selector(selector)?.matches(labels))
}

/// Whether the bundle takes its keys (among others) from the policy `namespace/name`.
/// Sources with an invalid selector select nothing.
pub fn selects_policy(
    spec: &JwksBundleSpec,
    namespace: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    spec.sources.iter().any(|source| {
        if source
            .namespace
            .as_deref()
            .is_some_and(|ns| ns != namespace)
        {
            return false;
        }
        match (&source.name, &source.selector) {
            (Some(wanted), _) => wanted == name,
            (None, Some(selector)) => {
                parse_selector(selector).is_ok_and(|selector| selector.matches(labels))
            }
            (None, None) => false,
        }
    })
}

/// Why static keys were refused. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StaticKeysError {
    /// Not a JWKS, or a key with private members.
    #[error("{0}")]
    Jwks(#[from] JwksError),
    /// A key that is not a supported public JWK with its thumbprint as kid.
    #[error("key {index} is not a supported public JWK whose kid is its RFC 7638 thumbprint")]
    Unsupported {
        /// Position in `keys`.
        index: usize,
    },
}

/// Parses a `staticKeys` document: every key a validated public JWK.
pub fn parse_static_keys(text: &str) -> Result<Vec<PublicJwk>, StaticKeysError> {
    // Refuses anything that is not a JWKS and any key with private members.
    jwks::parse(text.as_bytes())?;
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        StaticKeysError::Jwks(JwksError::Malformed {
            line: e.line(),
            column: e.column(),
        })
    })?;
    let entries = value
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .cloned()
        .unwrap_or_default();
    entries
        .into_iter()
        .enumerate()
        .map(|(index, entry)| {
            serde_json::from_value::<PublicJwk>(entry)
                .ok()
                .filter(|jwk| jwk.validate().is_ok())
                .ok_or(StaticKeysError::Unsupported { index })
        })
        .collect()
}

/// The keys of one source, by name (`<namespace>/<policy>` or [`STATIC_SOURCE`]).
pub fn render(sources: &[JwksSource]) -> Result<MergedJwks, JwksError> {
    jwks::merge(sources)
}

/// Who a ConfigMap of the target name belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// No such ConfigMap: the bundle may create it.
    Absent,
    /// Written by keyrotor for this bundle.
    Ours,
    /// Anything else: never written, never deleted.
    Foreign(&'static str),
}

/// Classifies an existing ConfigMap for the bundle `bundle`.
pub fn ownership(existing: Option<&ObjectMeta>, bundle: &str) -> Ownership {
    let Some(meta) = existing else {
        return Ownership::Absent;
    };
    let labels = meta.labels.clone().unwrap_or_default();
    let managed = labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY);
    match (managed, labels.get(BUNDLE_LABEL)) {
        (true, Some(owner)) if owner == bundle => Ownership::Ours,
        (true, Some(_)) => Ownership::Foreign("belongs to another JwksBundle"),
        (true, None) => Ownership::Foreign("is the JWKS ConfigMap of a JwtSigningKey"),
        (false, _) => Ownership::Foreign("is not managed by keyrotor"),
    }
}

/// Whether a ConfigMap was written for some bundle (a policy must never adopt it).
pub fn is_bundle_config_map(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .is_some_and(|labels| labels.contains_key(BUNDLE_LABEL))
}

/// An owner reference to the bundle: a cluster-scoped owner is allowed for namespaced
/// objects, so the garbage collector also removes the ConfigMaps should the finalizer
/// ever be bypassed.
pub fn owner_reference(bundle: &JwksBundle) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: JwksBundle::api_version(&()).into_owned(),
        kind: JwksBundle::kind(&()).into_owned(),
        name: bundle.metadata.name.clone()?,
        uid: bundle.metadata.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: None,
    })
}

/// The bundle's ConfigMap in `namespace`.
pub fn config_map(bundle: &JwksBundle, namespace: &str, merged: &MergedJwks) -> ConfigMap {
    let name = bundle.metadata.name.clone().unwrap_or_default();
    let sources = serde_json::to_string(&merged.sources).unwrap_or_default();
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(bundle.spec.target.config_map.name.clone()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
                (BUNDLE_LABEL.to_owned(), name),
            ])),
            annotations: Some(BTreeMap::from([(
                BUNDLE_SOURCES_ANNOTATION.to_owned(),
                sources,
            )])),
            owner_references: owner_reference(bundle).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            bundle.spec.target.config_map.key.clone(),
            String::from_utf8_lossy(&merged.document).into_owned(),
        )])),
        ..ConfigMap::default()
    }
}

/// Whether `existing` already holds exactly what `desired` says (labels, annotation,
/// owner and the JWKS key; other data keys are not keyrotor's business).
pub fn config_map_is_current(existing: &ConfigMap, desired: &ConfigMap) -> bool {
    fn contains<V: PartialEq>(
        have: Option<&BTreeMap<String, V>>,
        want: Option<&BTreeMap<String, V>>,
    ) -> bool {
        want.into_iter()
            .flatten()
            .all(|(k, v)| have.and_then(|h| h.get(k)) == Some(v))
    }
    let uids = |meta: &ObjectMeta| -> BTreeSet<String> {
        meta.owner_references
            .iter()
            .flatten()
            .map(|r| r.uid.clone())
            .collect()
    };
    uids(&existing.metadata) == uids(&desired.metadata)
        && contains(
            existing.metadata.labels.as_ref(),
            desired.metadata.labels.as_ref(),
        )
        && contains(
            existing.metadata.annotations.as_ref(),
            desired.metadata.annotations.as_ref(),
        )
        && contains(existing.data.as_ref(), desired.data.as_ref())
}

/// Something the status reports as `Degraded`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Condition reason.
    pub reason: &'static str,
    /// Human message (names and kids only).
    pub message: String,
}

impl Problem {
    /// A problem with a reason and message.
    pub fn new(reason: &'static str, message: impl Into<String>) -> Problem {
        Problem {
            reason,
            message: message.into(),
        }
    }
}

/// What a reconcile did, as input to [`status`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The merged document written to every published namespace, with the source of
    /// each kid; `None` when nothing was written (invalid spec, too large).
    pub merged: Option<Vec<(String, String)>>,
    /// Namespaces whose ConfigMap now holds `merged`.
    pub published: BTreeSet<String>,
    /// Namespaces skipped because of a foreign ConfigMap.
    pub conflicts: BTreeSet<String>,
    /// What is wrong.
    pub problems: Vec<Problem>,
}

/// `(kid, source)` in document order, from a merge's sources map and document keys.
pub fn credited_kids(keys_in_order: &[String], merged: &MergedJwks) -> Vec<(String, String)> {
    let by_kid: BTreeMap<&str, &str> = merged
        .sources
        .iter()
        .flat_map(|(source, kids)| kids.iter().map(move |k| (k.as_str(), source.as_str())))
        .collect();
    keys_in_order
        .iter()
        .filter_map(|kid| {
            by_kid
                .get(kid.as_str())
                .map(|source| (kid.clone(), (*source).to_owned()))
        })
        .collect()
}

/// `at` rounded up to a whole second: a publication time is never earlier than the
/// writes it stands for.
pub fn ceil_second(at: DateTime<Utc>) -> DateTime<Utc> {
    let whole = DateTime::from_timestamp(at.timestamp(), 0).unwrap_or(at);
    if whole < at {
        whole + chrono::TimeDelta::seconds(1)
    } else {
        whole
    }
}

/// The bundle's status after a reconcile (`now`: after the ConfigMaps were written). Deterministic: times move only when a key
/// first appears everywhere or a condition changes. Without a written document the
/// previous keys and namespaces stand (the ConfigMaps were not touched).
pub fn status(
    generation: Option<i64>,
    previous: Option<&JwksBundleStatus>,
    outcome: &Outcome,
    now: DateTime<Utc>,
) -> JwksBundleStatus {
    let previous_keys: BTreeMap<&str, &BundleKeyStatus> = previous
        .iter()
        .flat_map(|s| s.keys.iter().map(|k| (k.kid.as_str(), k)))
        .collect();
    let (keys, namespaces) = match &outcome.merged {
        Some(credited) => (
            credited
                .iter()
                .map(|(kid, source)| BundleKeyStatus {
                    kid: kid.clone(),
                    source: source.clone(),
                    published_at: previous_keys
                        .get(kid.as_str())
                        .map_or_else(|| to_time(ceil_second(now)), |k| k.published_at.clone()),
                })
                .collect(),
            outcome.published.iter().cloned().collect::<Vec<_>>(),
        ),
        None => (
            previous.map(|s| s.keys.clone()).unwrap_or_default(),
            previous.map(|s| s.namespaces.clone()).unwrap_or_default(),
        ),
    };
    let previous_conditions: &[Condition] = previous.map_or(&[], |s| s.conditions.as_slice());
    let (ready, degraded) = match outcome.problems.first() {
        None => (
            (
                "True",
                "Published",
                format!(
                    "{} keys published in {} namespaces",
                    keys.len(),
                    namespaces.len()
                ),
            ),
            ("False", "AsExpected", String::new()),
        ),
        Some(first) => {
            let message = outcome
                .problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            (
                ("False", first.reason, message.clone()),
                ("True", first.reason, message),
            )
        }
    };
    let condition = |type_: &str, (status, reason, message): (&str, &str, String)| {
        let unchanged = previous_conditions
            .iter()
            .find(|c| c.type_ == type_)
            .filter(|c| c.status == status);
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: generation,
            last_transition_time: unchanged
                .map_or_else(|| to_time(now), |c| c.last_transition_time.clone()),
        }
    };
    JwksBundleStatus {
        observed_generation: generation,
        namespace_count: Some(i32::try_from(namespaces.len()).unwrap_or(i32::MAX)),
        namespaces,
        conflicts: outcome.conflicts.iter().cloned().collect(),
        key_count: Some(i32::try_from(keys.len()).unwrap_or(i32::MAX)),
        keys,
        conditions: vec![condition(READY, ready), condition(DEGRADED, degraded)],
    }
}

/// Whether an Event is routine or calls for attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Something the bundle did as asked (`Published`, `Unpublished`).
    Normal,
    /// A problem that newly appeared (its reason is the `Degraded` reason).
    Warning,
}

/// An Event to publish on the bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleEvent {
    /// Normal or Warning.
    pub severity: Severity,
    /// `Published`, `Unpublished`, or a problem's reason.
    pub reason: &'static str,
    /// Human note: namespaces, ConfigMap names, counts and kids only, at most
    /// [`EVENT_NOTE_LIMIT`] bytes.
    pub note: String,
}

/// Longest note the API server accepts on an `events.k8s.io/v1` Event, in bytes.
pub const EVENT_NOTE_LIMIT: usize = 1024;
/// Namespaces named in one note; the rest are counted.
const NOTE_NAMESPACES: usize = 10;

/// `note`, cut at a character boundary to fit [`EVENT_NOTE_LIMIT`].
fn bounded_note(note: String) -> String {
    const ELLIPSIS: &str = "…";
    if note.len() <= EVENT_NOTE_LIMIT {
        return note;
    }
    let mut end = EVENT_NOTE_LIMIT - ELLIPSIS.len();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ELLIPSIS}", &note[..end])
}

/// `namespace a` or `3 namespaces: a, b, c` (at most [`NOTE_NAMESPACES`] named).
fn namespaces_phrase(namespaces: &[&String]) -> String {
    match namespaces {
        [one] => format!("namespace {one}"),
        many => {
            let named: Vec<&str> = many
                .iter()
                .take(NOTE_NAMESPACES)
                .map(|n| n.as_str())
                .collect();
            let rest = many.len().saturating_sub(NOTE_NAMESPACES);
            let more = if rest > 0 {
                format!(" and {rest} more")
            } else {
                String::new()
            };
            format!("{} namespaces: {}{more}", many.len(), named.join(", "))
        }
    }
}

/// Whether `message` is one of the `"; "`-joined problem messages of a `Degraded`
/// condition.
fn was_reported(joined: &str, message: &str) -> bool {
    joined == message
        || joined.starts_with(&format!("{message}; "))
        || joined.ends_with(&format!("; {message}"))
        || joined.contains(&format!("; {message}; "))
}

/// The Events of one reconcile, from the status before it (`previous`), what it did
/// (`outcome`) and the status after it (`desired`, from [`status`]), so that each
/// change is told once:
///
/// - `Published` (Normal) when the bundle starts publishing `config_map` into namespaces
///   it did not publish to;
/// - `Unpublished` (Normal) when it removed its ConfigMap from namespaces it published
///   to (a namespace it lost to a foreign ConfigMap is told by the conflict's Warning);
/// - a Warning per problem that the previous `Degraded` condition did not already
///   report (same message), with the problem's reason, so a problem that persists is
///   not told again on every reconcile.
///
/// Notes name namespaces, the ConfigMap and counts (problem messages: names and kids),
/// never key material.
pub fn events(
    previous: Option<&JwksBundleStatus>,
    outcome: &Outcome,
    desired: &JwksBundleStatus,
    config_map: &str,
) -> Vec<BundleEvent> {
    let before: BTreeSet<&String> = previous.iter().flat_map(|s| &s.namespaces).collect();
    let after: BTreeSet<&String> = desired.namespaces.iter().collect();
    let conflicts: BTreeSet<&String> = desired.conflicts.iter().collect();
    let mut events = Vec::new();

    let added: Vec<&String> = after.difference(&before).copied().collect();
    if !added.is_empty() {
        let keys = desired.keys.len();
        let plural = if keys == 1 { "" } else { "s" };
        events.push(BundleEvent {
            severity: Severity::Normal,
            reason: "Published",
            note: format!(
                "published ConfigMap {config_map} with {keys} key{plural} in {}",
                namespaces_phrase(&added)
            ),
        });
    }
    let removed: Vec<&String> = before
        .difference(&after)
        .filter(|ns| !conflicts.contains(*ns))
        .copied()
        .collect();
    if !removed.is_empty() {
        events.push(BundleEvent {
            severity: Severity::Normal,
            reason: "Unpublished",
            note: format!(
                "removed the bundle's ConfigMap from {}: no longer selected",
                namespaces_phrase(&removed)
            ),
        });
    }

    let reported = previous
        .iter()
        .flat_map(|s| &s.conditions)
        .find(|c| c.type_ == DEGRADED && c.status == "True")
        .map(|c| c.message.as_str());
    for problem in &outcome.problems {
        if reported.is_some_and(|joined| was_reported(joined, &problem.message)) {
            continue;
        }
        events.push(BundleEvent {
            severity: Severity::Warning,
            reason: problem.reason,
            note: problem.message.clone(),
        });
    }
    for event in &mut events {
        event.note = bounded_note(std::mem::take(&mut event.note));
    }
    events
}

/// What the bundles that take keys from the policy `namespace/name` tell its planner:
/// one target per bundle, holding the kids the bundle's status reports as present in
/// every ConfigMap it publishes. A bundle being deleted no longer counts.
pub fn policy_targets<'a>(
    bundles: impl IntoIterator<Item = &'a JwksBundle>,
    namespace: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<TargetObservation> {
    let mut targets: Vec<TargetObservation> = bundles
        .into_iter()
        .filter(|b| b.metadata.deletion_timestamp.is_none())
        .filter(|b| selects_policy(&b.spec, namespace, name, labels))
        .map(|b| TargetObservation {
            name: format!(
                "JwksBundle {}",
                b.metadata.name.as_deref().unwrap_or_default()
            ),
            kids: Some(
                b.status
                    .iter()
                    .flat_map(|s| s.keys.iter().map(|k| k.kid.clone()))
                    .collect(),
            ),
            since: b
                .status
                .iter()
                .flat_map(|s| s.keys.iter())
                .filter_map(|k| {
                    let at = DateTime::from_timestamp(k.published_at.0.as_second(), 0)?;
                    Some((k.kid.clone(), at))
                })
                .collect(),
        })
        .collect();
    targets.sort_by(|a, b| a.name.cmp(&b.name));
    targets
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::api::{BundleConfigMap, BundleSource, BundleTarget};
    use crate::keys::{Algorithm, KeyGenerator, RsaBits, SeededKeyGenerator};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn match_labels(pairs: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: Some(labels(pairs)),
            match_expressions: None,
        }
    }

    fn spec(sources: Vec<BundleSource>, namespaces: LabelSelector) -> JwksBundleSpec {
        JwksBundleSpec {
            sources,
            target: BundleTarget {
                config_map: BundleConfigMap {
                    name: "platform-jwks".into(),
                    key: "jwks.json".into(),
                },
                namespace_selector: namespaces,
            },
        }
    }

    fn named(namespace: &str, name: &str) -> BundleSource {
        BundleSource {
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            ..BundleSource::default()
        }
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

    fn bundle(name: &str, spec: JwksBundleSpec) -> JwksBundle {
        let mut bundle = JwksBundle::new(name, spec);
        bundle.metadata.uid = Some(format!("uid-{name}"));
        bundle
    }

    #[test]
    fn empty_namespace_selector_selects_nothing() {
        let s = spec(vec![named("auth", "a")], LabelSelector::default());
        assert_eq!(selects_namespace(&s, &labels(&[("x", "y")])), Ok(false));
        assert_eq!(selects_namespace(&s, &BTreeMap::new()), Ok(false));
        let s = spec(vec![], match_labels(&[("keyrotor.dev/jwks", "platform")]));
        assert_eq!(
            selects_namespace(&s, &labels(&[("keyrotor.dev/jwks", "platform")])),
            Ok(true)
        );
        assert_eq!(
            selects_namespace(&s, &labels(&[("keyrotor.dev/jwks", "other")])),
            Ok(false)
        );
    }

    #[test]
    fn invalid_namespace_selector_is_an_error() {
        let selector = LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                    key: "a".into(),
                    operator: "Bogus".into(),
                    values: None,
                },
            ]),
        };
        let s = spec(vec![], selector);
        assert!(selects_namespace(&s, &BTreeMap::new()).is_err());
    }

    #[test]
    fn policies_by_name_and_by_selector() {
        let by_selector = BundleSource {
            selector: Some(match_labels(&[("keyrotor.dev/bundle", "platform")])),
            ..BundleSource::default()
        };
        let scoped_selector = BundleSource {
            namespace: Some("billing".into()),
            ..by_selector.clone()
        };
        let s = spec(
            vec![named("auth", "api-tokens"), by_selector],
            LabelSelector::default(),
        );
        let none = BTreeMap::new();
        let platform = labels(&[("keyrotor.dev/bundle", "platform")]);
        assert!(selects_policy(&s, "auth", "api-tokens", &none));
        assert!(!selects_policy(&s, "other", "api-tokens", &none));
        assert!(!selects_policy(&s, "auth", "other", &none));
        assert!(selects_policy(&s, "anywhere", "x", &platform));
        let s = spec(vec![scoped_selector], LabelSelector::default());
        assert!(selects_policy(&s, "billing", "x", &platform));
        assert!(!selects_policy(&s, "auth", "x", &platform));
    }

    #[test]
    fn static_keys_must_be_public_and_valid() {
        let key = keys(1, 1).remove(0);
        let good = serde_json::json!({ "keys": [key] }).to_string();
        assert_eq!(parse_static_keys(&good), Ok(vec![key.clone()]));

        let mut private = serde_json::to_value(&key).expect("json");
        private["d"] = serde_json::json!("c2VjcmV0");
        let bad = serde_json::json!({ "keys": [private] }).to_string();
        let err = parse_static_keys(&bad).expect_err("private member refused");
        assert!(matches!(
            err,
            StaticKeysError::Jwks(JwksError::PrivateMaterial { .. })
        ));
        assert!(!err.to_string().contains("c2VjcmV0"), "{err}");

        let mut wrong_kid = serde_json::to_value(&key).expect("json");
        wrong_kid["kid"] = serde_json::json!("partner-key-1");
        let bad = serde_json::json!({ "keys": [key, wrong_kid] }).to_string();
        assert_eq!(
            parse_static_keys(&bad),
            Err(StaticKeysError::Unsupported { index: 1 })
        );
        assert!(parse_static_keys("not json").is_err());
    }

    #[test]
    fn ownership_of_existing_config_maps() {
        assert_eq!(ownership(None, "b"), Ownership::Absent);
        let meta = |pairs: &[(&str, &str)]| ObjectMeta {
            labels: Some(labels(pairs)),
            ..ObjectMeta::default()
        };
        let ours = meta(&[(MANAGED_BY_LABEL, MANAGED_BY), (BUNDLE_LABEL, "b")]);
        assert_eq!(ownership(Some(&ours), "b"), Ownership::Ours);
        assert!(matches!(ownership(Some(&ours), "c"), Ownership::Foreign(_)));
        let policy_map = meta(&[(MANAGED_BY_LABEL, MANAGED_BY)]);
        assert!(matches!(
            ownership(Some(&policy_map), "b"),
            Ownership::Foreign(_)
        ));
        let foreign = meta(&[(BUNDLE_LABEL, "b")]);
        assert!(matches!(
            ownership(Some(&foreign), "b"),
            Ownership::Foreign(_)
        ));
        assert!(matches!(
            ownership(Some(&ObjectMeta::default()), "b"),
            Ownership::Foreign(_)
        ));
        assert!(is_bundle_config_map(&ours));
        assert!(!is_bundle_config_map(&policy_map));
    }

    #[test]
    fn rendering_is_deterministic_and_public() {
        let a = keys(2, 2);
        let b = keys(3, 1);
        let sources = vec![
            JwksSource {
                name: "payments/b".into(),
                keys: b.clone(),
            },
            JwksSource {
                name: "auth/a".into(),
                keys: a.clone(),
            },
        ];
        let mut reversed = sources.clone();
        reversed.reverse();
        let merged = render(&sources).expect("renders");
        assert_eq!(merged, render(&reversed).expect("renders"));
        let document = jwks::parse(&merged.document).expect("a JWKS");
        assert_eq!(document.len(), 3);
        let text = String::from_utf8(merged.document.clone()).expect("utf-8");
        for member in ["\"d\"", "\"p\"", "\"q\"", "PRIVATE KEY"] {
            assert!(!text.contains(member), "{member} in {text}");
        }
        let platform = bundle("platform", spec(vec![], LabelSelector::default()));
        let cm = config_map(&platform, "ns1", &merged);
        assert_eq!(cm.metadata.name.as_deref(), Some("platform-jwks"));
        assert_eq!(ownership(Some(&cm.metadata), "platform"), Ownership::Ours);
        assert!(config_map_is_current(&cm, &cm));
        let other = config_map(
            &platform,
            "ns1",
            &render(&sources[..1]).expect("renders one source"),
        );
        assert!(!config_map_is_current(&cm, &other));
        // Order of kids: auth/a first (sources ordered by name), credited correctly.
        let kids: Vec<String> = document.public_jwks().into_iter().map(|k| k.kid).collect();
        let credited = credited_kids(&kids, &merged);
        assert_eq!(credited[0], (a[0].kid.clone(), "auth/a".to_owned()));
        assert_eq!(credited[2], (b[0].kid.clone(), "payments/b".to_owned()));
    }

    #[test]
    fn status_keeps_times_and_reports_problems() {
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        let t1 = t0 + chrono::TimeDelta::seconds(30);
        let outcome = Outcome {
            merged: Some(vec![("k1".into(), "auth/a".into())]),
            published: ["ns1".to_owned(), "ns2".to_owned()].into(),
            conflicts: BTreeSet::new(),
            problems: vec![],
        };
        let first = status(Some(1), None, &outcome, t0);
        assert_eq!(first.namespaces, ["ns1", "ns2"]);
        assert_eq!(first.key_count, Some(1));
        assert_eq!(first.keys[0].published_at, to_time(t0));
        // Same outcome later: byte-identical status.
        assert_eq!(status(Some(1), Some(&first), &outcome, t1), first);

        let outcome2 = Outcome {
            merged: Some(vec![
                ("k1".into(), "auth/a".into()),
                ("k2".into(), "auth/a".into()),
            ]),
            conflicts: ["ns3".to_owned()].into(),
            problems: vec![Problem::new("ConfigMapConflict", "ns3/platform-jwks ...")],
            ..outcome.clone()
        };
        let second = status(Some(1), Some(&first), &outcome2, t1);
        assert_eq!(second.keys[0].published_at, to_time(t0));
        assert_eq!(second.keys[1].published_at, to_time(t1));
        assert_eq!(second.conflicts, ["ns3"]);
        let degraded = second
            .conditions
            .iter()
            .find(|c| c.type_ == DEGRADED)
            .expect("Degraded");
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "ConfigMapConflict")
        );
        let ready = second
            .conditions
            .iter()
            .find(|c| c.type_ == READY)
            .expect("Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.last_transition_time, to_time(t1));

        // Nothing written: the previous keys stand.
        let blocked = Outcome {
            merged: None,
            published: BTreeSet::new(),
            conflicts: BTreeSet::new(),
            problems: vec![Problem::new("JwksTooLarge", "too large")],
        };
        let third = status(Some(2), Some(&second), &blocked, t1);
        assert_eq!(third.keys, second.keys);
        assert_eq!(third.namespaces, second.namespaces);
    }

    fn published(namespaces: &[&str], problems: Vec<Problem>) -> Outcome {
        Outcome {
            merged: Some(vec![
                ("k1".into(), "auth/a".into()),
                ("k2".into(), "auth/a".into()),
            ]),
            published: namespaces.iter().map(|n| (*n).to_owned()).collect(),
            conflicts: BTreeSet::new(),
            problems,
        }
    }

    fn reasons(events: &[BundleEvent]) -> Vec<(Severity, &'static str)> {
        events.iter().map(|e| (e.severity, e.reason)).collect()
    }

    #[test]
    fn events_tell_each_change_once() {
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        let t1 = t0 + chrono::TimeDelta::seconds(30);

        // A new bundle: published into two namespaces.
        let first = published(&["ns1", "ns2"], vec![]);
        let s1 = status(Some(1), None, &first, t0);
        let events1 = events(None, &first, &s1, "platform-jwks");
        assert_eq!(
            events1,
            vec![BundleEvent {
                severity: Severity::Normal,
                reason: "Published",
                note: "published ConfigMap platform-jwks with 2 keys in 2 namespaces: ns1, ns2"
                    .into(),
            }]
        );
        // Nothing changed: no Event, whatever the time.
        let s1_again = status(Some(1), Some(&s1), &first, t1);
        assert!(events(Some(&s1), &first, &s1_again, "platform-jwks").is_empty());

        // One namespace joins, one leaves.
        let moved = published(&["ns1", "ns3"], vec![]);
        let s2 = status(Some(1), Some(&s1), &moved, t1);
        let events2 = events(Some(&s1), &moved, &s2, "platform-jwks");
        assert_eq!(
            reasons(&events2),
            [
                (Severity::Normal, "Published"),
                (Severity::Normal, "Unpublished")
            ]
        );
        assert_eq!(
            events2[0].note,
            "published ConfigMap platform-jwks with 2 keys in namespace ns3"
        );
        assert_eq!(
            events2[1].note,
            "removed the bundle's ConfigMap from namespace ns2: no longer selected"
        );
    }

    #[test]
    fn a_problem_is_warned_about_when_it_appears_not_while_it_persists() {
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        let missing = Problem::new("SourceMissing", "JwtSigningKey auth/b does not exist");
        let ok = published(&["ns1"], vec![]);
        let s0 = status(Some(1), None, &ok, t0);

        let broken = published(&["ns1"], vec![missing.clone()]);
        let s1 = status(Some(1), Some(&s0), &broken, t0);
        let warned = events(Some(&s0), &broken, &s1, "platform-jwks");
        assert_eq!(
            warned,
            vec![BundleEvent {
                severity: Severity::Warning,
                reason: "SourceMissing",
                note: missing.message.clone(),
            }]
        );
        // Still missing on the next reconciles: told once.
        let s2 = status(Some(1), Some(&s1), &broken, t0);
        assert!(events(Some(&s1), &broken, &s2, "platform-jwks").is_empty());

        // A second problem joins the first: only the new one is told, even though the
        // Degraded reason (the most serious) changes.
        let conflict = Problem::new(
            "ConfigMapConflict",
            "ConfigMap ns2/platform-jwks is not managed by keyrotor; keyrotor will not overwrite it",
        );
        let mut both = published(&["ns1"], vec![conflict.clone(), missing.clone()]);
        both.conflicts = ["ns2".to_owned()].into();
        let s3 = status(Some(1), Some(&s2), &both, t0);
        assert_eq!(
            reasons(&events(Some(&s2), &both, &s3, "platform-jwks")),
            [(Severity::Warning, "ConfigMapConflict")]
        );
        let s4 = status(Some(1), Some(&s3), &both, t0);
        assert!(events(Some(&s3), &both, &s4, "platform-jwks").is_empty());

        // Resolved, then back: told again.
        let s5 = status(Some(1), Some(&s4), &ok, t0);
        assert!(events(Some(&s4), &ok, &s5, "platform-jwks").is_empty());
        let s6 = status(Some(1), Some(&s5), &broken, t0);
        assert_eq!(
            reasons(&events(Some(&s5), &broken, &s6, "platform-jwks")),
            [(Severity::Warning, "SourceMissing")]
        );

        // A message that is only part of a reported one is a new problem.
        let other = Problem::new("SourceMissing", "JwtSigningKey auth/b does not");
        let partial = published(&["ns1"], vec![other]);
        let s7 = status(Some(1), Some(&s6), &partial, t0);
        assert_eq!(events(Some(&s6), &partial, &s7, "platform-jwks").len(), 1);
    }

    #[test]
    fn a_namespace_lost_to_a_foreign_config_map_is_told_by_the_conflict() {
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        let ok = published(&["ns1", "ns2"], vec![]);
        let s0 = status(Some(1), None, &ok, t0);
        let mut lost = published(
            &["ns1"],
            vec![Problem::new(
                "ConfigMapConflict",
                "ConfigMap ns2/platform-jwks is not managed by keyrotor; keyrotor will not overwrite it",
            )],
        );
        lost.conflicts = ["ns2".to_owned()].into();
        let s1 = status(Some(1), Some(&s0), &lost, t0);
        assert_eq!(
            reasons(&events(Some(&s0), &lost, &s1, "platform-jwks")),
            [(Severity::Warning, "ConfigMapConflict")]
        );
    }

    #[test]
    fn nothing_written_is_no_publication_change() {
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        let ok = published(&["ns1", "ns2"], vec![]);
        let s0 = status(Some(1), None, &ok, t0);
        let blocked = Outcome {
            merged: None,
            published: BTreeSet::new(),
            conflicts: BTreeSet::new(),
            problems: vec![Problem::new(
                "JwksTooLarge",
                "the bundle would hold 900 keys in 1100000 bytes, over the 1000000-byte limit; not written",
            )],
        };
        let s1 = status(Some(1), Some(&s0), &blocked, t0);
        assert_eq!(
            reasons(&events(Some(&s0), &blocked, &s1, "platform-jwks")),
            [(Severity::Warning, "JwksTooLarge")]
        );
    }

    #[test]
    fn event_notes_are_bounded_and_public() {
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        let many: Vec<String> = (0..400).map(|i| format!("namespace-ü-{i:03}")).collect();
        let names: Vec<&str> = many.iter().map(String::as_str).collect();
        let key = keys(4, 1).remove(0);
        let mut private = serde_json::to_value(&key).expect("json");
        private["d"] = serde_json::json!("c2VjcmV0LWQ");
        let refused = parse_static_keys(&serde_json::json!({ "keys": [private] }).to_string())
            .expect_err("private member refused");
        let long = Problem::new("ConfigMapConflict", "x".repeat(3000));
        let invalid = Problem::new(
            "InvalidStaticKeys",
            format!("spec.sources[0].staticKeys: {refused}; not published"),
        );
        let outcome = published(&names, vec![long, invalid]);
        let s = status(Some(1), None, &outcome, t0);
        let told = events(None, &outcome, &s, "platform-jwks");
        assert_eq!(told.len(), 3);
        assert!(
            told[0]
                .note
                .ends_with("namespace-ü-008, namespace-ü-009 and 390 more"),
            "{}",
            told[0].note
        );
        for event in &told {
            assert!(event.note.len() <= EVENT_NOTE_LIMIT, "{}", event.note.len());
            assert!(!event.note.contains("c2VjcmV0LWQ"), "{}", event.note);
        }
        assert!(told[1].note.ends_with('…'));
        assert!(told[2].note.contains("contains private key members"));
    }

    #[test]
    fn policies_see_one_target_per_selecting_bundle() {
        let mut selecting = bundle(
            "platform",
            spec(vec![named("auth", "a")], LabelSelector::default()),
        );
        selecting.status = Some(JwksBundleStatus {
            keys: vec![BundleKeyStatus {
                kid: "k1".into(),
                source: "auth/a".into(),
                published_at: to_time(DateTime::UNIX_EPOCH),
            }],
            ..JwksBundleStatus::default()
        });
        let fresh = bundle(
            "fresh",
            spec(vec![named("auth", "a")], LabelSelector::default()),
        );
        let unrelated = bundle(
            "other",
            spec(vec![named("auth", "b")], LabelSelector::default()),
        );
        let mut leaving = selecting.clone();
        leaving.metadata.name = Some("leaving".into());
        leaving.metadata.deletion_timestamp = Some(to_time(DateTime::UNIX_EPOCH));
        let bundles = [selecting, fresh, unrelated, leaving];
        let targets = policy_targets(bundles.iter(), "auth", "a", &BTreeMap::new());
        assert_eq!(
            targets,
            vec![
                TargetObservation {
                    name: "JwksBundle fresh".into(),
                    kids: Some(BTreeSet::new()),
                    since: BTreeMap::new(),
                },
                TargetObservation {
                    name: "JwksBundle platform".into(),
                    kids: Some(["k1".to_owned()].into()),
                    since: [("k1".to_owned(), DateTime::UNIX_EPOCH)].into(),
                },
            ]
        );
        assert!(policy_targets(bundles.iter(), "auth", "c", &BTreeMap::new()).is_empty());
    }
}
