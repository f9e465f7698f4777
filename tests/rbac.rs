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
use std::time::Duration;

use serde_json::Value;
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
        (&["get", "list", "watch"], "keyrotor.dev", "jwtsigningkeys"),
        (&["get", "patch"], "keyrotor.dev", "jwtsigningkeys/status"),
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

/// What no install grants, whatever the namespace. Listing Namespaces is granted only
/// to the JwksBundle controller (`bundles`: a cluster-wide install).
async fn assert_never(client: &Client, ns: &str, bundles: bool) {
    for (verb, group, resource) in [
        ("update", "", "secrets"),
        ("deletecollection", "", "secrets"),
        ("create", "keyrotor.dev", "jwtsigningkeys"),
        ("delete", "keyrotor.dev", "jwtsigningkeys"),
        ("update", "keyrotor.dev", "jwtsigningkeys"),
        ("patch", "keyrotor.dev", "jwtsigningkeys"),
        ("update", "keyrotor.dev", "jwtsigningkeys/status"),
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
    assert_eq!(
        can(client, "list", "", "namespaces", None, None).await,
        bundles,
        "list namespaces cluster-wide"
    );
    for (verb, group, resource) in [
        ("create", "", "namespaces"),
        ("delete", "", "namespaces"),
        ("patch", "", "namespaces"),
        ("list", "", "nodes"),
        ("create", "keyrotor.dev", "jwksbundles"),
        ("delete", "keyrotor.dev", "jwksbundles"),
        ("update", "keyrotor.dev", "jwksbundles"),
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
    assert_never(&operator, watched.name(), false).await;
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
    // No bundles here, so no Events in `default`, where a bundle's would go.
    for verb in ["create", "patch"] {
        assert!(
            !can(
                &operator,
                verb,
                "events.k8s.io",
                "events",
                Some("default"),
                None
            )
            .await,
            "{verb} Events in default allowed"
        );
    }

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
    assert_never(&operator, other.name(), true).await;
    assert_lease_rights(&operator, release_ns.name(), other.name()).await;
    // The JwksBundle controller: bundles, their status and finalizer, and Namespaces.
    for verb in ["list", "watch", "patch"] {
        assert!(can(&operator, verb, "keyrotor.dev", "jwksbundles", None, None).await);
    }
    assert!(
        can(
            &operator,
            "patch",
            "keyrotor.dev",
            "jwksbundles/status",
            None,
            None
        )
        .await
    );
    assert!(can(&operator, "watch", "", "namespaces", None, None).await);
    // A bundle is cluster-scoped: kube-runtime's recorder writes its Events in
    // `default` (create, then patch to count repeats).
    for verb in ["create", "patch"] {
        assert!(
            can(
                &operator,
                verb,
                "events.k8s.io",
                "events",
                Some("default"),
                None
            )
            .await,
            "denied {verb} Events in default"
        );
    }

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

/// Private fields of a JWK (RFC 7518): none may appear outside the Secret.
const PRIVATE_JWK_FIELDS: &[&str] = &["d", "p", "q", "dp", "dq", "qi"];

/// Every private value held in the signing Secret: the fields of each private JWK in
/// `private.jwk` and `ring.json`, and the base64 body lines of the PEM.
fn private_material(secret: &Secret) -> Vec<String> {
    let data = secret.data.clone().unwrap_or_default();
    let text = |key: &str| {
        data.get(key)
            .map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned())
            .unwrap_or_default()
    };
    let mut found = Vec::new();
    fn collect(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    if PRIVATE_JWK_FIELDS.contains(&key.as_str())
                        && let Some(s) = value.as_str()
                    {
                        found.push(s.to_owned());
                    }
                    collect(value, found);
                }
            }
            Value::Array(items) => items.iter().for_each(|item| collect(item, found)),
            _ => {}
        }
    }
    for key in ["private.jwk", "ring.json"] {
        if let Ok(json) = serde_json::from_str::<Value>(&text(key)) {
            collect(&json, &mut found);
        }
    }
    found.extend(
        text("private.pem")
            .lines()
            .filter(|line| !line.starts_with("-----") && line.len() >= 16)
            .map(str::to_owned),
    );
    found
}

#[tokio::test]
async fn the_operator_does_its_whole_job_with_only_the_charts_rbac() {
    let admin = support::client().await;
    chart_support::install_crds();
    let release_ns = TestNamespace::new(&admin, "rbac-job").await;
    let watched = TestNamespace::new(&admin, "rbac-job-watched").await;
    let outside = TestNamespace::new(&admin, "rbac-job-outside").await;
    let release = format!("kr-{}", release_ns.name());
    let rbac = install_rbac(
        &release,
        release_ns.name(),
        &[&format!("watchNamespaces={{{}}}", watched.name())],
    )
    .await;
    let kubeconfig = chart_support::token_kubeconfig(&rbac.token, &format!("{release}.kubeconfig"));
    let operator = chart_support::OperatorProcess::start(
        &kubeconfig,
        &format!("{release}-op"),
        &[&format!("--namespace={}", watched.name())],
    );

    // Ready once its first watch has synced.
    support::eventually("/readyz to pass", Duration::from_secs(30), || async {
        matches!(operator.get("/readyz").await, Some((200, _))).then_some(())
    })
    .await;

    let spec = serde_json::json!({
        "algorithm": "ES256",
        "rotationInterval": "12s",
        "propagationDelay": "4s",
        "maxTokenLifetime": "4s",
    });
    chart_support::apply_policy(watched.name(), "api-tokens", spec.clone());
    chart_support::apply_policy(outside.name(), "ignored", spec);

    let policy = support::eventually(
        "the policy to be Ready",
        Duration::from_secs(30),
        || async {
            chart_support::get_policy(&admin, watched.name(), "api-tokens")
                .await
                .filter(chart_support::is_ready)
        },
    )
    .await;
    let first_kid = policy["status"]["activeKeyID"]
        .as_str()
        .expect("an active kid")
        .to_owned();

    let secret = Api::<Secret>::namespaced(admin.clone(), watched.name())
        .get("api-tokens-signing-key")
        .await
        .expect("the signing Secret");
    // The first keys' private halves: the first one is erased from the Secret once it
    // retires, so remember it now.
    let first_private = private_material(&secret);
    let kid = secret
        .data
        .as_ref()
        .and_then(|data| data.get("kid"))
        .map(|kid| kid.0.clone());
    assert_eq!(kid.as_deref(), Some(first_kid.as_bytes()));
    let jwks = Api::<ConfigMap>::namespaced(admin.clone(), watched.name())
        .get("api-tokens-jwks")
        .await
        .expect("the JWKS ConfigMap");
    let jwks: Value = serde_json::from_str(&jwks.data.unwrap()["jwks.json"]).unwrap();
    let kids: Vec<_> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["kid"].as_str().unwrap().to_owned())
        .collect();
    assert!(kids.contains(&first_kid), "{kids:?}");

    // A rotation happens on schedule, and the metrics move with it.
    let labels = format!("namespace=\"{}\",name=\"api-tokens\"", watched.name());
    let rotations = |text: &str| -> f64 {
        text.lines()
            .filter(|line| line.starts_with("keyrotor_rotations_total{") && line.contains(&labels))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let gauge =
        |text: &str, name: &str| chart_support::sample(text, &format!("{name}{{{labels}}}"));
    let (_, before) = operator.get("/metrics").await.expect("/metrics answers");
    let rotated = support::eventually("a scheduled rotation", Duration::from_secs(40), || async {
        let policy = chart_support::get_policy(&admin, watched.name(), "api-tokens").await?;
        let active = policy["status"]["activeKeyID"].as_str()?.to_owned();
        (active != first_kid).then_some(policy)
    })
    .await;
    // The gauges are set just after the status write: poll until a scrape shows the
    // rotation counted and the new key's age restarted near zero.
    let metrics = support::eventually(
        "the metrics to show the rotation",
        Duration::from_secs(10),
        || async {
            let (_, text) = operator.get("/metrics").await?;
            let age = gauge(&text, "keyrotor_policy_active_key_age_seconds")?;
            (rotations(&text) > rotations(&before) && age < 6.0).then_some(text)
        },
    )
    .await;
    let writes =
        |text: &str| chart_support::sample(text, "keyrotor_api_writes_total{kind=\"secret\"}");
    assert!(
        writes(&metrics) > writes(&before),
        "Secret writes did not move"
    );
    assert!(
        chart_support::sample(&metrics, "keyrotor_reconciles_total")
            > chart_support::sample(&before, "keyrotor_reconciles_total")
    );
    // The next rotation is again about one interval away.
    let until =
        gauge(&metrics, "keyrotor_policy_seconds_until_next_rotation").expect("until gauge");
    assert!(
        until > 0.0 && until <= 12.0,
        "seconds until next rotation: {until}"
    );
    assert!(gauge(&metrics, "keyrotor_policy_keys_published").unwrap_or(0.0) >= 2.0);

    // It never touched the namespace it does not manage.
    assert!(
        Api::<Secret>::namespaced(admin.clone(), outside.name())
            .get_opt("ignored-signing-key")
            .await
            .unwrap()
            .is_none()
    );

    // Nothing it asked for was refused: the chart's RBAC is sufficient.
    let username = rbac.username();
    let requests: Vec<_> = support::audit_events()
        .into_iter()
        .filter(|event| event["user"]["username"] == username.as_str())
        .collect();
    let writes = requests
        .iter()
        .filter(|e| chart_support::is_policy_write(e))
        .count();
    assert!(writes >= 4, "only {writes} writes by {username}");
    let refused: Vec<_> = requests
        .iter()
        .filter(|event| event["responseStatus"]["code"] == 403)
        .map(|event| event["requestURI"].clone())
        .collect();
    assert!(refused.is_empty(), "requests refused: {refused:?}");
    let logs = operator.logs();
    assert!(
        !logs.to_lowercase().contains("forbidden"),
        "the operator logged a refusal:\n{logs}"
    );

    // No private material in its logs, metrics, Events, status or JWKS.
    let secret = Api::<Secret>::namespaced(admin.clone(), watched.name())
        .get("api-tokens-signing-key")
        .await
        .unwrap();
    let mut secrets = private_material(&secret);
    secrets.extend(first_private);
    secrets.sort();
    secrets.dedup();
    // Two ES256 keys at least (d of the active and the next), plus PEM lines.
    assert!(
        secrets.len() >= 4,
        "found too little private material to look for"
    );
    let events = support::run_kubectl(&[
        "get",
        "events.events.k8s.io",
        "--namespace",
        watched.name(),
        "-o",
        "json",
    ]);
    events.assert_success("listing Events");
    let jwks = Api::<ConfigMap>::namespaced(admin.clone(), watched.name())
        .get("api-tokens-jwks")
        .await
        .unwrap();
    let haystacks = [
        ("logs", operator.logs()),
        ("metrics", metrics),
        ("events", events.stdout),
        ("status", rotated["status"].to_string()),
        ("jwks", serde_json::to_string(&jwks.data).unwrap()),
    ];
    for (what, text) in &haystacks {
        assert!(!text.is_empty() || *what == "events", "{what} is empty");
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "private material in {what}"
            );
        }
        assert!(!text.contains("PRIVATE KEY"), "a PEM in {what}");
    }
}

#[tokio::test]
async fn readyz_fails_until_the_first_successful_watch() {
    let admin = support::client().await;
    chart_support::install_crds();
    let release_ns = TestNamespace::new(&admin, "rbac-ready").await;
    let watched = TestNamespace::new(&admin, "rbac-ready-watched").await;
    let release = format!("kr-{}", release_ns.name());
    let service_account = format!("{release}-keyrotor");
    // The ServiceAccount alone, without its roles: every watch is refused.
    support::run_kubectl(&[
        "create",
        "serviceaccount",
        &service_account,
        "--namespace",
        release_ns.name(),
    ])
    .assert_success("creating the ServiceAccount");
    let token = support::run_kubectl(&[
        "create",
        "token",
        &service_account,
        "--namespace",
        release_ns.name(),
        "--duration=1h",
    ]);
    token.assert_success("TokenRequest");
    let kubeconfig =
        chart_support::token_kubeconfig(token.stdout.trim(), &format!("{release}.kubeconfig"));
    let operator = chart_support::OperatorProcess::start(
        &kubeconfig,
        &format!("{release}-op"),
        &[&format!("--namespace={}", watched.name())],
    );

    support::eventually("/healthz", Duration::from_secs(20), || async {
        matches!(operator.get("/healthz").await, Some((200, _))).then_some(())
    })
    .await;
    for _ in 0..10 {
        let (status, body) = operator.get("/readyz").await.expect("/readyz answers");
        assert_eq!(status, 503, "ready without a successful watch: {body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Grant the chart's roles: the next watch attempt succeeds and readiness follows.
    let rbac = install_rbac(
        &release,
        release_ns.name(),
        &[&format!("watchNamespaces={{{}}}", watched.name())],
    )
    .await;
    assert_eq!(rbac.service_account, service_account);
    support::eventually("/readyz to pass", Duration::from_secs(60), || async {
        matches!(operator.get("/readyz").await, Some((200, _))).then_some(())
    })
    .await;
}

/// The JwksBundle controller publishes, follows a namespace label and cleans up with
/// nothing but the cluster-wide chart's RBAC.
#[tokio::test]
async fn bundles_work_with_only_the_charts_rbac() {
    use kube::api::{Patch, PatchParams};
    let admin = support::client().await;
    chart_support::install_crds();
    let release_ns = TestNamespace::new(&admin, "rbac-bundle").await;
    let source = TestNamespace::new(&admin, "rbac-bundle-src").await;
    let target = TestNamespace::new(&admin, "rbac-bundle-dst").await;
    let release = format!("kr-{}", release_ns.name());
    let rbac = install_rbac(&release, release_ns.name(), &[]).await;
    let kubeconfig = chart_support::token_kubeconfig(&rbac.token, &format!("{release}.kubeconfig"));
    let operator = chart_support::OperatorProcess::start(
        &kubeconfig,
        &format!("{release}-op"),
        &["--bundles", &format!("--namespace={}", source.name())],
    );
    support::eventually("/readyz to pass", Duration::from_secs(30), || async {
        matches!(operator.get("/readyz").await, Some((200, _))).then_some(())
    })
    .await;
    chart_support::apply_policy(
        source.name(),
        "api-tokens",
        serde_json::json!({ "algorithm": "ES256" }),
    );
    let label = format!("rbac-{}", release_ns.name());
    Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone())
        .patch(
            target.name(),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "metadata": { "labels": { "keyrotor.dev/jwks": label } }
            })),
        )
        .await
        .expect("labelling the target namespace");
    let bundles = Api::<keyrotor::bundle::api::JwksBundle>::all(admin.clone());
    let bundle: keyrotor::bundle::api::JwksBundle = serde_json::from_value(serde_json::json!({
        "apiVersion": "keyrotor.dev/v1alpha1",
        "kind": "JwksBundle",
        "metadata": { "name": release },
        "spec": {
            "sources": [{ "namespace": source.name(), "name": "api-tokens" }],
            "target": {
                "configMap": { "name": "platform-jwks" },
                "namespaceSelector": { "matchLabels": { "keyrotor.dev/jwks": label } },
            },
        },
    }))
    .expect("a JwksBundle");
    bundles
        .create(&PostParams::default(), &bundle)
        .await
        .expect("creating the bundle");
    let config_maps = Api::<ConfigMap>::namespaced(admin.clone(), target.name());
    support::eventually(
        "the bundle ConfigMap with both keys",
        Duration::from_secs(60),
        || async {
            let config_map = config_maps.get_opt("platform-jwks").await.ok()??;
            let text = config_map.data?.get("jwks.json")?.clone();
            let jwks: Value = serde_json::from_str(&text).ok()?;
            (jwks["keys"].as_array()?.len() == 2).then_some(())
        },
    )
    .await;
    // Its Event, in `default` (a bundle is cluster-scoped).
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(admin.clone(), "default");
    support::eventually(
        "the bundle's Published Event",
        Duration::from_secs(30),
        || async {
            let listed = events.list(&ListParams::default()).await.ok()?;
            listed
                .items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("Published")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                            == Some(release.as_str())
                })
                .then_some(())
        },
    )
    .await;
    bundles
        .delete(&release, &DeleteParams::default())
        .await
        .expect("deleting the bundle");
    support::eventually(
        "the bundle and its ConfigMap to go",
        Duration::from_secs(30),
        || async {
            let gone = matches!(bundles.get_opt(&release).await, Ok(None));
            let cleaned = matches!(config_maps.get_opt("platform-jwks").await, Ok(None));
            (gone && cleaned).then_some(())
        },
    )
    .await;
    let log = operator.logs();
    assert!(
        !log.contains("Forbidden") && !log.contains("forbidden"),
        "a request was forbidden:\n{log}"
    );
}
