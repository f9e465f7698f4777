//! The local control plane (tests/cluster/) really does what keyrotor relies on:
//! CRDs with OpenAPI and CEL validation, garbage collection through ownerReferences,
//! namespace deletion, ServiceAccount tokens from the TokenRequest API, RBAC, an audit
//! log of writes, and the preconditions of keyrotor's guarded writes.

mod support;

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use keyrotor::controller::write_guarded;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ObjectMeta, Patch,
    PatchParams, PostParams,
};
use kube::core::Status;
use serde_json::json;
use support::{TestNamespace, client, client_with_token, eventually};

const TIMEOUT: Duration = Duration::from_secs(60);

fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn config_map(name: &str, owner: Option<OwnerReference>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            owner_references: owner.map(|owner| vec![owner]),
            ..ObjectMeta::default()
        },
        data: Some([("k".to_string(), "v".to_string())].into()),
        ..ConfigMap::default()
    }
}

async fn is_gone<K>(api: &Api<K>, name: &str) -> bool
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get_opt(name).await {
        Ok(found) => found.is_none(),
        Err(err) => panic!("reading {name}: {err}"),
    }
}

#[tokio::test]
async fn serves_the_pinned_kubernetes_release() {
    let info = client().await.apiserver_version().await.expect("/version");
    assert_eq!(info.git_version, "v1.37.2");

    let output = support::run_kubectl(&["version", "-o", "json"]);
    output.assert_success("kubectl version");
    let version: serde_json::Value =
        serde_json::from_str(&output.stdout).expect("JSON from kubectl version");
    assert_eq!(version["clientVersion"]["gitVersion"], "v1.37.2");
    assert_eq!(version["serverVersion"]["gitVersion"], "v1.37.2");

    let can_i = support::run_kubectl(&["auth", "can-i", "*", "*"]);
    can_i.assert_success("kubectl auth can-i");
    assert_eq!(can_i.stdout.trim(), "yes");
}

#[tokio::test]
async fn crd_is_served_and_validates_objects() {
    let client = client().await;
    let namespace = TestNamespace::new(&client, "crd").await;
    // A group of its own per run, so concurrent runs never share the CRD.
    let group = format!("{}.test.keyrotor.dev", namespace.name());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": format!("widgets.{group}") },
        "spec": {
            "group": group,
            "names": { "plural": "widgets", "singular": "widget", "kind": "Widget" },
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "properties": { "spec": {
                        "type": "object",
                        "required": ["size"],
                        "properties": {
                            "size": { "type": "integer", "minimum": 1 },
                            "min": { "type": "integer" },
                            "max": { "type": "integer" }
                        },
                        "x-kubernetes-validations": [
                            { "rule": "!has(self.min) || !has(self.max) || self.min <= self.max",
                              "message": "min must not exceed max" }
                        ]
                    }}
                }}
            }]
        }
    }))
    .expect("a CRD");
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let crd_name = crd.metadata.name.clone().expect("named");
    crds.create(&PostParams::default(), &crd)
        .await
        .expect("creating the CRD");

    eventually("the CRD to be Established", TIMEOUT, || async {
        let crd = crds.get(&crd_name).await.expect("reading the CRD");
        let conditions = crd.status?.conditions?;
        conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;

    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(&group, "v1", "Widget"),
        "widgets",
    );
    let widgets =
        Api::<DynamicObject>::namespaced_with(client.clone(), namespace.name(), &resource);
    let widget = |name: &str, spec: serde_json::Value| {
        DynamicObject::new(name, &resource).data(json!({ "spec": spec }))
    };
    // Discovery of a new CRD can lag its Established condition by a moment.
    let created = eventually("the new resource to be served", TIMEOUT, || async {
        match widgets
            .create(
                &PostParams::default(),
                &widget("good", json!({ "size": 3, "min": 1, "max": 2 })),
            )
            .await
        {
            Ok(created) => Some(created),
            Err(kube::Error::Api(status)) if status.code == 404 => None,
            Err(err) => panic!("creating a valid widget: {err}"),
        }
    })
    .await;
    assert_eq!(created.data["spec"]["size"], 3);
    let listed = widgets
        .list(&Default::default())
        .await
        .expect("listing widgets");
    assert_eq!(listed.items.len(), 1);

    let wrong_type = api_error(
        widgets
            .create(
                &PostParams::default(),
                &widget("bad-type", json!({ "size": "three" })),
            )
            .await,
    );
    assert_eq!(wrong_type.code, 422, "{wrong_type:?}");
    assert!(
        wrong_type.message.contains("spec.size"),
        "{}",
        wrong_type.message
    );

    let too_small = api_error(
        widgets
            .create(
                &PostParams::default(),
                &widget("too-small", json!({ "size": 0 })),
            )
            .await,
    );
    assert_eq!(too_small.code, 422, "{too_small:?}");
    assert!(
        too_small.message.contains("spec.size"),
        "{}",
        too_small.message
    );

    let cel = api_error(
        widgets
            .create(
                &PostParams::default(),
                &widget("bad-range", json!({ "size": 1, "min": 5, "max": 2 })),
            )
            .await,
    );
    assert_eq!(cel.code, 422, "{cel:?}");
    assert!(
        cel.message.contains("min must not exceed max"),
        "{}",
        cel.message
    );

    let listed = widgets
        .list(&Default::default())
        .await
        .expect("listing widgets");
    assert_eq!(listed.items.len(), 1, "only the valid widget was stored");

    crds.delete(&crd_name, &DeleteParams::default())
        .await
        .expect("deleting the CRD");
    eventually("the CRD to be deleted", TIMEOUT, || async {
        is_gone(&crds, &crd_name).await.then_some(())
    })
    .await;
}

#[tokio::test]
async fn garbage_collector_deletes_dependents_of_a_deleted_owner() {
    let client = client().await;
    let namespace = TestNamespace::new(&client, "gc").await;
    let config_maps: Api<ConfigMap> = namespace.api();
    let secrets: Api<Secret> = namespace.api();

    let owner = config_maps
        .create(&PostParams::default(), &config_map("owner", None))
        .await
        .expect("creating the owner");
    let owner_ref = OwnerReference {
        api_version: "v1".to_string(),
        kind: "ConfigMap".to_string(),
        name: "owner".to_string(),
        uid: owner.metadata.uid.clone().expect("the owner has a uid"),
        ..OwnerReference::default()
    };
    config_maps
        .create(
            &PostParams::default(),
            &config_map("dependent", Some(owner_ref.clone())),
        )
        .await
        .expect("creating the dependent ConfigMap");
    let dependent_secret = Secret {
        metadata: ObjectMeta {
            name: Some("dependent".to_string()),
            owner_references: Some(vec![owner_ref]),
            ..ObjectMeta::default()
        },
        string_data: Some([("k".to_string(), "v".to_string())].into()),
        ..Secret::default()
    };
    secrets
        .create(&PostParams::default(), &dependent_secret)
        .await
        .expect("creating the dependent Secret");
    config_maps
        .create(&PostParams::default(), &config_map("unrelated", None))
        .await
        .expect("creating an unrelated ConfigMap");

    config_maps
        .delete("owner", &DeleteParams::background())
        .await
        .expect("deleting the owner");
    eventually(
        "the garbage collector to delete the dependents",
        TIMEOUT,
        || async {
            (is_gone(&config_maps, "dependent").await && is_gone(&secrets, "dependent").await)
                .then_some(())
        },
    )
    .await;
    assert!(
        !is_gone(&config_maps, "unrelated").await,
        "the garbage collector deleted an object with no owner"
    );
}

#[tokio::test]
async fn namespace_deletion_completes() {
    let client = client().await;
    let namespace = TestNamespace::new(&client, "nsdel").await;
    let name = namespace.name().to_string();
    namespace
        .api::<ConfigMap>()
        .create(&PostParams::default(), &config_map("content", None))
        .await
        .expect("creating a ConfigMap in the namespace");

    namespace.delete().await;
    let namespaces = Api::<Namespace>::all(client.clone());
    eventually(
        "the namespace controller to finish deleting",
        TIMEOUT,
        || async { is_gone(&namespaces, &name).await.then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn controller_manager_populates_new_namespaces() {
    let client = client().await;
    let namespace = TestNamespace::new(&client, "sa").await;
    let service_accounts: Api<ServiceAccount> = namespace.api();
    let config_maps: Api<ConfigMap> = namespace.api();
    eventually(
        "the serviceaccount controller to create `default`",
        TIMEOUT,
        || async {
            service_accounts
                .get_opt("default")
                .await
                .expect("reading ServiceAccounts")
        },
    )
    .await;
    let root_ca = eventually("kube-root-ca.crt to be published", TIMEOUT, || async {
        config_maps
            .get_opt("kube-root-ca.crt")
            .await
            .expect("reading ConfigMaps")
    })
    .await;
    let ca = root_ca
        .data
        .unwrap_or_default()
        .remove("ca.crt")
        .unwrap_or_default();
    assert!(
        ca.contains("BEGIN CERTIFICATE"),
        "kube-root-ca.crt holds {ca:?}"
    );
}

#[tokio::test]
async fn service_account_token_authenticates_and_rbac_limits_it() {
    let admin = client().await;
    let namespace = TestNamespace::new(&admin, "rbac").await;
    let ns = namespace.name().to_string();

    namespace
        .api::<ServiceAccount>()
        .create(
            &PostParams::default(),
            &ServiceAccount {
                metadata: ObjectMeta {
                    name: Some("reader".to_string()),
                    ..ObjectMeta::default()
                },
                ..ServiceAccount::default()
            },
        )
        .await
        .expect("creating the ServiceAccount");
    let role: Role = serde_json::from_value(json!({
        "metadata": { "name": "configmap-reader" },
        "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"] }]
    }))
    .expect("a Role");
    namespace
        .api::<Role>()
        .create(&PostParams::default(), &role)
        .await
        .expect("creating the Role");
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "reader" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader" },
        "subjects": [{ "kind": "ServiceAccount", "name": "reader", "namespace": ns }]
    }))
    .expect("a RoleBinding");
    namespace
        .api::<RoleBinding>()
        .create(&PostParams::default(), &binding)
        .await
        .expect("creating the RoleBinding");
    namespace
        .api::<ConfigMap>()
        .create(&PostParams::default(), &config_map("visible", None))
        .await
        .expect("creating a ConfigMap");

    let token_request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let issued = namespace
        .api::<ServiceAccount>()
        .create_token_request("reader", &PostParams::default(), &token_request)
        .await
        .expect("TokenRequest");
    let token = issued
        .status
        .and_then(|status| status.token)
        .expect("the TokenRequest returns a token");
    assert_eq!(token.split('.').count(), 3, "a JWT");

    let reader = client_with_token(&token).await;
    let review = Api::<SelfSubjectReview>::all(reader.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .expect("SelfSubjectReview with the token");
    let username = review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username);
    assert_eq!(
        username.as_deref(),
        Some(format!("system:serviceaccount:{ns}:reader").as_str())
    );

    // Granted by the Role.
    let config_maps: Api<ConfigMap> = Api::namespaced(reader.clone(), &ns);
    let visible = config_maps
        .get("visible")
        .await
        .expect("get a ConfigMap in its namespace");
    assert_eq!(
        visible
            .data
            .unwrap_or_default()
            .get("k")
            .map(String::as_str),
        Some("v")
    );
    config_maps
        .list(&Default::default())
        .await
        .expect("list ConfigMaps in its namespace");

    // Not granted: another verb, another resource, another namespace.
    let create = api_error(
        config_maps
            .create(&PostParams::default(), &config_map("new", None))
            .await,
    );
    assert_eq!(create.code, 403, "{create:?}");
    let secrets = api_error(
        Api::<Secret>::namespaced(reader.clone(), &ns)
            .list(&Default::default())
            .await,
    );
    assert_eq!(secrets.code, 403, "{secrets:?}");
    let elsewhere = api_error(
        Api::<ConfigMap>::namespaced(reader.clone(), "default")
            .list(&Default::default())
            .await,
    );
    assert_eq!(elsewhere.code, 403, "{elsewhere:?}");

    // A forged token is not accepted at all.
    let forged = client_with_token(&format!("{token}x")).await;
    let unauthenticated = api_error(
        Api::<ConfigMap>::namespaced(forged, &ns)
            .list(&Default::default())
            .await,
    );
    assert_eq!(unauthenticated.code, 401, "{unauthenticated:?}");
}

#[tokio::test]
async fn audit_log_records_writes() {
    let client = client().await;
    let namespace = TestNamespace::new(&client, "audit").await;
    let ns = namespace.name().to_string();
    namespace
        .api::<ConfigMap>()
        .create(&PostParams::default(), &config_map("audited", None))
        .await
        .expect("creating a ConfigMap");

    let event = eventually("the create to appear in the audit log", TIMEOUT, || async {
        support::audit_events().into_iter().find(|event| {
            event["verb"] == "create"
                && event["objectRef"]["resource"] == "configmaps"
                && event["objectRef"]["namespace"] == ns.as_str()
                && event["objectRef"]["name"] == "audited"
        })
    })
    .await;
    assert_eq!(event["level"], "Metadata");
    assert_eq!(event["responseStatus"]["code"], 201);
    assert!(
        event.get("requestObject").is_none(),
        "Metadata level logs no object bodies"
    );
}

fn secret_holding(value: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some("guarded".to_string()),
            ..ObjectMeta::default()
        },
        string_data: Some([("ring".to_string(), value.to_string())].into()),
        ..Secret::default()
    }
}

/// keyrotor's guarded write fails with a conflict, instead of writing, when the object
/// was created, changed or deleted after it was read. An apply that carries only the
/// stale resourceVersion re-creates a deleted object: the last step shows the API server
/// does that, which is why the guard carries the uid too.
#[tokio::test]
async fn guarded_write_fails_when_the_object_changed_or_was_deleted_since_it_was_read() {
    let client = client().await;
    let namespace = TestNamespace::new(&client, "guarded").await;
    let secrets: Api<Secret> = namespace.api();

    let write = |read: Option<ObjectMeta>, value: &'static str| {
        let secrets = secrets.clone();
        async move { write_guarded(&secrets, "guarded", read.as_ref(), secret_holding(value)).await }
    };
    let created = write(None, "one")
        .await
        .expect("creating when nothing was read");
    let again = write(None, "two").await;
    assert_eq!(
        api_error(again).code,
        409,
        "a create over an existing object"
    );

    let updated = write(Some(created.metadata.clone()), "two")
        .await
        .expect("writing over the object as read");
    let stale = write(Some(created.metadata), "three").await;
    assert_eq!(api_error(stale).code, 409, "a write over a changed object");

    secrets
        .delete("guarded", &DeleteParams::default())
        .await
        .expect("deleting the Secret");
    let resurrecting = write(Some(updated.metadata.clone()), "three").await;
    assert_eq!(
        api_error(resurrecting).code,
        409,
        "a write over a deleted object"
    );
    assert!(
        is_gone(&secrets, "guarded").await,
        "a guarded write re-created a deleted Secret"
    );

    let mut version_only = secret_holding("three");
    version_only.metadata.resource_version = updated.metadata.resource_version.clone();
    secrets
        .patch(
            "guarded",
            &PatchParams::apply("control-plane-test").force(),
            &Patch::Apply(&version_only),
        )
        .await
        .expect("an apply guarded by resourceVersion alone re-creates the deleted Secret");
}
