//! The `JwksBundle` custom resource (`keyrotor.dev/v1alpha1`, cluster-scoped): publish
//! the merged public keys of several policies (and static public JWKs) into a ConfigMap
//! in every namespace a label selector picks.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::api::DEFAULT_JWKS_KEY;

/// A cluster-scoped bundle of public keys published into many namespaces.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "keyrotor.dev",
    version = "v1alpha1",
    kind = "JwksBundle",
    plural = "jwksbundles",
    shortname = "jwksb",
    status = "JwksBundleStatus",
    derive = "PartialEq",
    doc = "A JWKS bundle: keyrotor publishes the public keys of the selected JwtSigningKeys (and static public JWKs) as one JWKS ConfigMap in every namespace the target's namespaceSelector picks.",
    printcolumn(
        name = "CONFIGMAP",
        type_ = "string",
        json_path = ".spec.target.configMap.name"
    ),
    printcolumn(
        name = "NAMESPACES",
        type_ = "integer",
        json_path = ".status.namespaceCount"
    ),
    printcolumn(name = "KEYS", type_ = "integer", json_path = ".status.keyCount"),
    printcolumn(
        name = "READY",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "AGE", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 63")
        .message("metadata.name of a JwksBundle must be at most 63 characters (it labels the bundle's ConfigMaps)"),
)]
#[serde(rename_all = "camelCase")]
pub struct JwksBundleSpec {
    /// Where the keys come from: JwtSigningKeys by namespace and name, by label
    /// selector, or static public JWKs.
    #[schemars(length(min = 1, max = 64))]
    pub sources: Vec<BundleSource>,
    /// Where the bundle is published.
    pub target: BundleTarget,
}

/// One source of public keys. Exactly one of `name` (with `namespace`), `selector`
/// (optionally limited to `namespace`) or `staticKeys`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.name) ? 1 : 0) + (has(self.selector) ? 1 : 0) + (has(self.staticKeys) ? 1 : 0) == 1")
        .message("a source sets exactly one of name (with namespace), selector or staticKeys"),
    validation = Rule::new("!has(self.name) || has(self.namespace)")
        .message("a source naming a JwtSigningKey also sets its namespace"),
    validation = Rule::new("!has(self.staticKeys) || !has(self.namespace)")
        .message("staticKeys take no namespace"),
)]
pub struct BundleSource {
    /// Namespace of the JwtSigningKey named by `name`; with `selector`, limits it to
    /// this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// A JwtSigningKey by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub name: Option<String>,
    /// JwtSigningKeys by label, in every namespace (or in `namespace`). Anyone who can
    /// create a labelled JwtSigningKey in a selected namespace adds a trusted key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// A JWKS document `{"keys":[…]}` of public keys managed elsewhere. Each key must be
    /// a public JWK of a supported algorithm whose kid is its RFC 7638 thumbprint;
    /// private members are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 262144))]
    pub static_keys: Option<String>,
}

/// The ConfigMap the bundle writes, and the namespaces it writes it to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BundleTarget {
    /// The ConfigMap in each selected namespace.
    pub config_map: BundleConfigMap,
    /// Namespaces that get the ConfigMap. An empty selector selects no namespace.
    #[serde(default)]
    pub namespace_selector: LabelSelector,
}

/// Name and data key of the bundle's ConfigMaps.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BundleConfigMap {
    /// ConfigMap name.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        length(min = 1, max = 253)
    )]
    pub name: String,
    /// Data key holding the JWKS document (default `jwks.json`).
    #[serde(default = "default_key")]
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"), length(min = 1, max = 253))]
    #[x_kube(
        validation = Rule::new("self != '.' && !self.startsWith('..')")
            .message("spec.target.configMap.key must be a valid ConfigMap key: not '.' and not starting with '..'")
    )]
    pub key: String,
}

fn default_key() -> String {
    DEFAULT_JWKS_KEY.to_owned()
}

/// Observed state of a bundle: public facts only.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct JwksBundleStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Namespaces whose ConfigMap holds the current bundle, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Number of `namespaces` (the NAMESPACES column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_count: Option<i32>,
    /// Selected namespaces where a ConfigMap of the target name exists that this bundle
    /// does not own: left untouched, not published to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<String>,
    /// The keys in every published ConfigMap, in JWKS order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<BundleKeyStatus>,
    /// Number of `keys` (the KEYS column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_count: Option<i32>,
    /// `Ready` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// One key of the bundle.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BundleKeyStatus {
    /// The key's kid.
    pub kid: String,
    /// Where it comes from: `<namespace>/<name>` of a JwtSigningKey, or `static`.
    pub source: String,
    /// When it was first seen in every published ConfigMap of the bundle.
    pub published_at: Time,
}
