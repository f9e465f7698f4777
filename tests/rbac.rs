//! The chart's RBAC, proven on the local control plane with a real token of the chart's
//! ServiceAccount (TokenRequest): what it may do, and what it is denied.

mod chart_support;
mod support;

use chart_support::install_rbac;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use support::TestNamespace;

/// What the API server's authorizer answers for this token.
async fn can(
    client: &Client,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> bool {
    let (resource, subresource) = match resource.split_once('/') {
        Some((resource, sub)) => (resource, Some(sub.to_owned())),
        None => (resource, None),
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.to_owned()),
                group: Some(group.to_owned()),
                resource: Some(resource.to_owned()),
                subresource,
                namespace: namespace.map(str::to_owned),
                name: name.map(str::to_owned),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SelfSubjectAccessReview");
    answer.status.expect("review status").allowed
}

/// The permissions every install needs inside a managed namespace.
async fn assert_manages(client: &Client, ns: &str) {
    for (verbs, group, resource) in [
        (
            &["get", "list", "watch", "create", "patch", "delete"][..],
            "",
            "secrets",
        ),
        (
            &["get", "list", "watch", "create", "patch", "delete"],
            "",
            "configmaps",
        ),
        (
            &["get", "list", "watch", "patch"],
            "keyrotor.dev",
            "jwtsigningkeys",
        ),
        (
            &["get", "patch", "update"],
            "keyrotor.dev",
            "jwtsigningkeys/status",
        ),
        (&["create", "patch"], "events.k8s.io", "events"),
    ] {
        for verb in verbs {
            assert!(
                can(client, verb, group, resource, Some(ns), None).await,
                "denied {verb} {group}/{resource} in {ns}"
            );
        }
    }
}

/// What no install grants, whatever the namespace.
async fn assert_never(client: &Client, ns: &str) {
    for (verb, group, resource) in [
        ("update", "", "secrets"),
        ("deletecollection", "", "secrets"),
        ("create", "keyrotor.dev", "jwtsigningkeys"),
        ("delete", "keyrotor.dev", "jwtsigningkeys"),
        ("update", "keyrotor.dev", "jwtsigningkeys"),
        ("list", "", "pods"),
        ("create", "", "pods"),
        ("create", "", "events"),
        ("list", "", "serviceaccounts"),
        ("create", "", "serviceaccounts/token"),
        ("list", "apps", "deployments"),
        ("create", "rbac.authorization.k8s.io", "rolebindings"),
        ("*", "", "secrets"),
        ("get", "*", "*"),
    ] {
        assert!(
            !can(client, verb, group, resource, Some(ns), None).await,
            "allowed {verb} {group}/{resource} in {ns}"
        );
    }
    for (verb, group, resource) in [
        ("list", "", "namespaces"),
        ("list", "", "nodes"),
        ("create", "rbac.authorization.k8s.io", "clusterrolebindings"),
        (
            "create",
            "apiextensions.k8s.io",
            "customresourcedefinitions",
        ),
    ] {
        assert!(
            !can(client, verb, group, resource, None, None).await,
            "allowed {verb} {group}/{resource} cluster-wide"
        );
    }
}

/// Leases: only the election Lease, only in the release namespace.
async fn assert_lease_rights(client: &Client, release_ns: &str, other_ns: &str) {
    let lease = |verb, ns, name| can(client, verb, "coordination.k8s.io", "leases", ns, name);
    assert!(lease("create", Some(release_ns), None).await);
    assert!(lease("get", Some(release_ns), Some("keyrotor-leader")).await);
    assert!(lease("update", Some(release_ns), Some("keyrotor-leader")).await);
    assert!(!lease("update", Some(release_ns), Some("another-lease")).await);
    assert!(!lease("delete", Some(release_ns), Some("keyrotor-leader")).await);
    assert!(!lease("list", Some(release_ns), None).await);
    assert!(!lease("create", Some(other_ns), None).await);
}

fn is_forbidden<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> bool {
    matches!(result, Err(kube::Error::Api(status)) if status.code == 403)
}

#[tokio::test]
async fn watched_namespaces_install_is_confined_to_its_namespaces() {
    let admin = support::client().await;
    let release_ns = TestNamespace::new(&admin, "rbac-op").await;
    let watched = TestNamespace::new(&admin, "rbac-watched").await;
    let outside = TestNamespace::new(&admin, "rbac-outside").await;
    let release = format!("kr-{}", release_ns.name());
    let rbac = install_rbac(
        &release,
        release_ns.name(),
        &[&format!("watchNamespaces={{{}}}", watched.name())],
    )
    .await;
    assert!(rbac.cluster_scoped.is_empty(), "{:?}", rbac.cluster_scoped);
    let operator = support::client_with_token(&rbac.token).await;

    assert_manages(&operator, watched.name()).await;
    assert_never(&operator, watched.name()).await;
    assert_lease_rights(&operator, release_ns.name(), watched.name()).await;

    // Outside its namespaces: nothing on secrets, configmaps or policies.
    for (verb, group, resource) in [
        ("get", "", "secrets"),
        ("list", "", "secrets"),
        ("get", "", "configmaps"),
        ("list", "keyrotor.dev", "jwtsigningkeys"),
    ] {
        assert!(!can(&operator, verb, group, resource, Some(outside.name()), None).await);
        assert!(
            !can(
                &operator,
                verb,
                group,
                resource,
                Some(release_ns.name()),
                None
            )
            .await,
            "{verb} {resource} allowed in the release namespace, which it does not manage"
        );
    }
    assert!(!can(&operator, "list", "", "secrets", None, None).await);
    assert!(!can(&operator, "watch", "", "secrets", None, None).await);

    // Real requests with the token: a Secret outside is unreadable, even by name ...
    let mut secret = Secret::default();
    secret.metadata.name = Some("not-yours".into());
    secret.string_data = Some([("k".to_owned(), "v".to_owned())].into());
    Api::<Secret>::namespaced(admin.clone(), outside.name())
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    assert!(is_forbidden(
        Api::<Secret>::namespaced(operator.clone(), outside.name())
            .get("not-yours")
            .await
    ));
    // ... listing Secrets cluster-wide is refused ...
    assert!(is_forbidden(
        Api::<Secret>::all(operator.clone())
            .list(&ListParams::default())
            .await
    ));
    assert!(is_forbidden(
        Api::<ConfigMap>::namespaced(operator.clone(), outside.name())
            .list(&ListParams::default())
            .await
    ));
    // ... while inside its namespace it creates, reads and deletes.
    let mine = Api::<Secret>::namespaced(operator.clone(), watched.name());
    secret.metadata.name = Some("mine".into());
    mine.create(&PostParams::default(), &secret).await.unwrap();
    mine.get("mine").await.unwrap();
    mine.delete("mine", &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn cluster_wide_install_reads_everywhere_but_grants_nothing_more() {
    let admin = support::client().await;
    let release_ns = TestNamespace::new(&admin, "rbac-cluster").await;
    let other = TestNamespace::new(&admin, "rbac-cluster-other").await;
    let release = format!("kr-{}", release_ns.name());
    let rbac = install_rbac(&release, release_ns.name(), &[]).await;
    assert_eq!(rbac.cluster_scoped.len(), 2, "{:?}", rbac.cluster_scoped);
    let operator = support::client_with_token(&rbac.token).await;

    // The controller watches its Secrets and ConfigMaps across all namespaces.
    for resource in ["secrets", "configmaps"] {
        assert!(can(&operator, "list", "", resource, None, None).await);
        assert!(can(&operator, "watch", "", resource, None, None).await);
    }
    assert!(
        can(
            &operator,
            "watch",
            "keyrotor.dev",
            "jwtsigningkeys",
            None,
            None
        )
        .await
    );
    assert_manages(&operator, other.name()).await;
    assert_never(&operator, other.name()).await;
    assert_lease_rights(&operator, release_ns.name(), other.name()).await;

    Api::<Secret>::all(operator.clone())
        .list(&ListParams::default().limit(1))
        .await
        .expect("cluster-wide list allowed");
    assert!(is_forbidden(
        Api::<k8s_openapi::api::core::v1::Pod>::all(operator.clone())
            .list(&ListParams::default())
            .await
    ));
}
