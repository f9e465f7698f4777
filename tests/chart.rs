//! The Helm chart: lint, render, server-side dry run and install on the local control
//! plane.

mod chart_support;
mod support;

use std::collections::BTreeSet;

use chart_support::{documents, helm, of_kind, one_of_kind, render, strings};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use serde_json::Value;
use support::TestNamespace;

/// (apiGroup, resource, verbs) the operator needs on the namespaces it manages.
const MANAGED_RULES: &[(&str, &str, &[&str])] = &[
    ("keyrotor.dev", "jwtsigningkeys", &["get", "list", "watch"]),
    ("keyrotor.dev", "jwtsigningkeys/status", &["get", "patch"]),
    (
        "",
        "secrets",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    (
        "",
        "configmaps",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    ("events.k8s.io", "events", &["create", "patch"]),
];

type Grant = (String, String, Option<String>, String);

/// Every (group, resource, resourceName, verb) a role grants.
fn grants(role: &Value) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        let names = strings(&rule["resourceNames"]);
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    if names.is_empty() {
                        out.insert((group.into(), resource.into(), None, verb.into()));
                    }
                    for name in &names {
                        out.insert((
                            group.into(),
                            resource.into(),
                            Some((*name).into()),
                            verb.into(),
                        ));
                    }
                }
            }
        }
    }
    out
}

fn managed_grants() -> BTreeSet<Grant> {
    MANAGED_RULES
        .iter()
        .flat_map(|(group, resource, verbs)| {
            verbs.iter().map(|verb| {
                (
                    group.to_string(),
                    resource.to_string(),
                    None,
                    verb.to_string(),
                )
            })
        })
        .collect()
}

/// What the JwksBundle controller adds (cluster-wide only).
fn bundle_grants() -> BTreeSet<Grant> {
    let grant = |group: &str, resource: &str, verb: &str| {
        (
            group.to_string(),
            resource.to_string(),
            None,
            verb.to_string(),
        )
    };
    let mut out = BTreeSet::new();
    for verb in ["get", "list", "watch", "patch"] {
        out.insert(grant("keyrotor.dev", "jwksbundles", verb));
    }
    for verb in ["get", "patch"] {
        out.insert(grant("keyrotor.dev", "jwksbundles/status", verb));
    }
    for verb in ["list", "watch"] {
        out.insert(grant("", "namespaces", verb));
    }
    out
}

#[test]
fn bundles_can_be_turned_off() {
    let docs = documents(&render(
        "keyrotor",
        "keyrotor-system",
        &["bundles.enabled=false"],
    ));
    assert_eq!(grants(one_of_kind(&docs, "ClusterRole")), managed_grants());
    let args = strings(&container(&docs)["args"]);
    assert!(!args.contains(&"--bundles"), "{args:?}");
}

fn leader_grants() -> BTreeSet<Grant> {
    let lease = |name: Option<&str>, verb: &str| {
        (
            "coordination.k8s.io".to_string(),
            "leases".to_string(),
            name.map(str::to_string),
            verb.to_string(),
        )
    };
    [
        lease(None, "create"),
        lease(Some("keyrotor-leader"), "get"),
        lease(Some("keyrotor-leader"), "update"),
    ]
    .into()
}

fn no_wildcards(docs: &[Value]) {
    for kind in ["Role", "ClusterRole"] {
        for role in of_kind(docs, kind) {
            for rule in role["rules"].as_array().unwrap() {
                for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                    assert!(
                        !strings(&rule[field]).contains(&"*"),
                        "wildcard in {kind} {}: {rule}",
                        role["metadata"]["name"]
                    );
                }
            }
        }
    }
}

fn container(docs: &[Value]) -> &Value {
    let deployment = one_of_kind(docs, "Deployment");
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 1);
    &containers[0]
}

/// The chart ships exactly the generated CRDs of `crds/` (`keyrotor crd`). After
/// regenerating them: `make crds` (which also copies them into the chart).
#[test]
fn chart_crds_match_the_generated_crds() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let names = |dir: &str| -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(root.join(dir))
            .unwrap_or_else(|err| panic!("reading {dir}: {err}"))
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".yaml"))
            .collect();
        names.sort();
        names
    };
    let generated = names("crds");
    assert!(!generated.is_empty());
    assert_eq!(names("charts/keyrotor/crds"), generated);
    for name in &generated {
        let read = |dir: &str| std::fs::read(root.join(dir).join(name)).unwrap();
        assert!(
            read("charts/keyrotor/crds") == read("crds"),
            "charts/keyrotor/crds/{name} differs from crds/{name}: run `make crds`"
        );
    }
}

#[test]
fn lint_passes_for_default_values_and_for_watched_namespaces() {
    let chart = chart_dir_str();
    for sets in [
        vec![],
        vec!["watchNamespaces={team-a,team-b}"],
        vec![
            "metrics.serviceMonitor.enabled=true",
            "networkPolicy.enabled=true",
            "networkPolicy.egress.enabled=true",
            "networkPolicy.egress.apiServerCIDRs={10.0.0.1/32}",
        ],
    ] {
        let mut args = vec!["lint", "--strict", chart.as_str()];
        for set in &sets {
            args.extend(["--set", set]);
        }
        let (ok, stdout, stderr) = helm(&args);
        assert!(ok, "helm lint {sets:?} failed:\n{stdout}\n{stderr}");
        assert!(stdout.contains("0 chart(s) failed"), "{stdout}");
    }
}

fn chart_dir_str() -> String {
    chart_support::chart_dir().to_string_lossy().into_owned()
}

#[test]
fn default_render_is_cluster_wide_least_privilege_and_hardened() {
    let docs = documents(&render("keyrotor", "keyrotor-system", &[]));
    no_wildcards(&docs);

    let cluster_role = one_of_kind(&docs, "ClusterRole");
    let mut expected = managed_grants();
    expected.extend(bundle_grants());
    assert_eq!(grants(cluster_role), expected);
    let binding = one_of_kind(&docs, "ClusterRoleBinding");
    assert_eq!(binding["subjects"][0]["kind"], "ServiceAccount");
    assert_eq!(binding["subjects"][0]["name"], "keyrotor");
    assert_eq!(binding["subjects"][0]["namespace"], "keyrotor-system");

    // The only namespaced Role is the one for the election Lease, in the release namespace.
    let role = one_of_kind(&docs, "Role");
    assert_eq!(role["metadata"]["namespace"], "keyrotor-system");
    assert_eq!(grants(role), leader_grants());

    let deployment = one_of_kind(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "keyrotor");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );

    let container = container(&docs);
    assert_eq!(container["image"], "keyrotor:0.1.0");
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][bound][resource].is_string(),
                "no {bound}.{resource}"
            );
        }
    }
    let args = strings(&container["args"]);
    assert_eq!(args[0], "run");
    assert!(args.contains(&"--bundles"), "{args:?}");
    assert!(args.contains(&"--leader-elect"), "{args:?}");
    assert!(args.contains(&"--lease-name=keyrotor-leader"), "{args:?}");
    assert!(args.contains(&"--concurrency=16"), "{args:?}");
    assert!(
        !args.iter().any(|arg| arg.starts_with("--namespace")),
        "{args:?}"
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");

    assert_eq!(
        one_of_kind(&docs, "PodDisruptionBudget")["spec"]["minAvailable"],
        1
    );
    assert_eq!(
        one_of_kind(&docs, "Service")["spec"]["ports"][0]["port"],
        8080
    );
    assert!(of_kind(&docs, "ServiceMonitor").is_empty());
    assert!(of_kind(&docs, "NetworkPolicy").is_empty());

    // The CRDs ship with the chart.
    let crds = of_kind(&docs, "CustomResourceDefinition");
    assert!(
        crds.iter()
            .any(|crd| crd["metadata"]["name"] == "jwtsigningkeys.keyrotor.dev"),
        "chart has no JwtSigningKey CRD"
    );
}

#[test]
fn watched_namespaces_get_roles_and_nothing_cluster_wide() {
    let docs = documents(&render(
        "keyrotor",
        "keyrotor-system",
        &["watchNamespaces={team-a,team-b}"],
    ));
    no_wildcards(&docs);
    assert!(of_kind(&docs, "ClusterRole").is_empty());
    assert!(of_kind(&docs, "ClusterRoleBinding").is_empty());
    // Bundles need cluster-wide rights: off with watched namespaces.
    let args = strings(&container(&docs)["args"]);
    assert!(!args.contains(&"--bundles"), "{args:?}");

    let roles = of_kind(&docs, "Role");
    let by_namespace = |ns: &str| {
        roles
            .iter()
            .filter(|role| role["metadata"]["namespace"] == ns)
            .map(|role| grants(role))
            .collect::<Vec<_>>()
    };
    assert_eq!(by_namespace("team-a"), [managed_grants()]);
    assert_eq!(by_namespace("team-b"), [managed_grants()]);
    assert_eq!(by_namespace("keyrotor-system"), [leader_grants()]);
    for binding in of_kind(&docs, "RoleBinding") {
        assert_eq!(binding["roleRef"]["kind"], "Role");
        assert_eq!(binding["subjects"][0]["namespace"], "keyrotor-system");
    }
    assert_eq!(of_kind(&docs, "RoleBinding").len(), 3);

    let args = strings(&container(&docs)["args"]);
    let namespaces: Vec<_> = args
        .iter()
        .filter(|arg| arg.starts_with("--namespace="))
        .collect();
    assert_eq!(namespaces, [&"--namespace=team-a", &"--namespace=team-b"]);
}

#[test]
fn unsafe_or_incomplete_values_are_refused() {
    let chart = chart_dir_str();
    for (sets, why) in [
        (
            vec!["leaderElection.enabled=false"],
            "replicaCount > 1 needs leaderElection.enabled",
        ),
        (
            vec![
                "networkPolicy.enabled=true",
                "networkPolicy.egress.enabled=true",
            ],
            "needs networkPolicy.egress.apiServerCIDRs",
        ),
        (
            vec!["concurrency=-1"],
            "concurrency must be a whole number from 0 (unbounded) to 65535, not -1",
        ),
        (
            vec!["concurrency=2.5"],
            "concurrency must be a whole number from 0 (unbounded) to 65535, not 2.5",
        ),
        (
            vec!["concurrency=70000"],
            "concurrency must be a whole number from 0 (unbounded) to 65535, not 70000",
        ),
    ] {
        let mut args = vec!["template", "keyrotor", chart.as_str()];
        for set in &sets {
            args.extend(["--set", set]);
        }
        let (ok, _, stderr) = helm(&args);
        assert!(!ok, "helm template {sets:?} should fail");
        assert!(stderr.contains(why), "{stderr}");
    }
    // One replica without election is fine.
    render(
        "keyrotor",
        "default",
        &["replicaCount=1", "leaderElection.enabled=false"],
    );
    // 0 is unbounded, and a chosen bound reaches the operator.
    for value in ["0", "4", "65535"] {
        let docs = documents(&render(
            "keyrotor",
            "default",
            &[&format!("concurrency={value}")],
        ));
        let args = strings(&container(&docs)["args"]);
        assert!(
            args.contains(&format!("--concurrency={value}").as_str()),
            "{args:?}"
        );
    }
}

#[test]
fn optional_objects_render_when_enabled() {
    let docs = documents(&render(
        "keyrotor",
        "keyrotor-system",
        &[
            "metrics.serviceMonitor.enabled=true",
            "metrics.serviceMonitor.labels.release=prometheus",
            "networkPolicy.enabled=true",
            "networkPolicy.egress.enabled=true",
            "networkPolicy.egress.apiServerCIDRs={10.0.0.1/32}",
            "replicaCount=1",
        ],
    ));
    let monitor = one_of_kind(&docs, "ServiceMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    let policy = one_of_kind(&docs, "NetworkPolicy");
    assert_eq!(
        strings(&policy["spec"]["policyTypes"]),
        ["Ingress", "Egress"]
    );
    assert_eq!(
        policy["spec"]["egress"][1]["to"][0]["ipBlock"]["cidr"],
        "10.0.0.1/32"
    );
    // One replica: no disruption budget (it would block every node drain).
    assert!(of_kind(&docs, "PodDisruptionBudget").is_empty());
}

/// `kubectl apply --dry-run=server`; returns what kubectl printed on stderr (warnings).
fn dry_run(manifests: &str) -> String {
    let output =
        support::run_kubectl_with_stdin(&["apply", "--dry-run=server", "-f", "-"], Some(manifests));
    output.assert_success("kubectl apply --dry-run=server");
    output.stderr
}

#[tokio::test]
async fn rendered_manifests_pass_a_server_side_dry_run() {
    let client = support::client().await;
    let release_ns = TestNamespace::new(&client, "chart-dry").await;
    let watched = TestNamespace::new(&client, "chart-dry-watched").await;
    let release = format!("kr-{}", release_ns.name());
    // Pod Security admission judges the Deployment's pod template against `restricted`.
    support::run_kubectl(&[
        "label",
        "namespace",
        release_ns.name(),
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    ])
    .assert_success("labelling the namespace");

    let default = render(&release, release_ns.name(), &[]);
    let warnings = dry_run(&default);
    assert!(!warnings.contains("PodSecurity"), "{warnings}");
    let namespaced = render(
        &release,
        release_ns.name(),
        &[&format!("watchNamespaces={{{}}}", watched.name())],
    );
    let warnings = dry_run(&namespaced);
    assert!(!warnings.contains("PodSecurity"), "{warnings}");
    // The optional NetworkPolicy, with egress limits (a ServiceMonitor needs the
    // prometheus-operator CRD, absent here: it is checked by rendering only).
    dry_run(&render(
        &release,
        release_ns.name(),
        &[
            "networkPolicy.enabled=true",
            "networkPolicy.egress.enabled=true",
            "networkPolicy.egress.apiServerCIDRs={10.0.0.1/32}",
        ],
    ));

    // The check above can fail: a weakened pod is reported.
    let weakened = render(
        &release,
        release_ns.name(),
        &["securityContext.allowPrivilegeEscalation=true"],
    );
    let warnings = dry_run(&weakened);
    assert!(
        warnings.contains("would violate PodSecurity")
            && warnings.contains("allowPrivilegeEscalation"),
        "no PodSecurity warning for a weakened pod: {warnings}"
    );
}

#[tokio::test]
async fn helm_install_creates_the_release() {
    let client = support::client().await;
    let ns = TestNamespace::new(&client, "chart-install").await;
    let release = format!("kr-{}", ns.name());
    let chart = chart_dir_str();
    // Helm applies the chart's CRD server-side. Other tests applied the same CRD with
    // other field managers (kubectl), which makes Helm's apply conflict on identical
    // fields; a cluster whose CRD came from kubectl needs the same flag (or --skip-crds).
    let (ok, stdout, stderr) = helm(&[
        "install",
        &release,
        &chart,
        "--namespace",
        ns.name(),
        "--force-conflicts",
    ]);
    assert!(ok, "helm install failed:\n{stdout}\n{stderr}");

    // The objects exist (pods never start: the control plane has no nodes).
    let fullname = format!("{release}-keyrotor");
    let deployment = ns.api::<Deployment>().get(&fullname).await.unwrap();
    assert_eq!(deployment.spec.replicas, Some(2));
    ns.api::<ServiceAccount>().get(&fullname).await.unwrap();
    ns.api::<Service>()
        .get(&format!("{fullname}-metrics"))
        .await
        .unwrap();

    let (ok, stdout, stderr) = helm(&["status", &release, "--namespace", ns.name()]);
    assert!(ok && stdout.contains("deployed"), "{stdout}\n{stderr}");

    // An upgrade that changes values applies them.
    let (ok, stdout, stderr) = helm(&[
        "upgrade",
        &release,
        &chart,
        "--namespace",
        ns.name(),
        "--set",
        "replicaCount=3",
        "--force-conflicts",
    ]);
    assert!(ok, "helm upgrade failed:\n{stdout}\n{stderr}");
    let deployment = ns.api::<Deployment>().get(&fullname).await.unwrap();
    assert_eq!(deployment.spec.replicas, Some(3));

    // Uninstall removes the cluster-wide objects too.
    let (ok, _, stderr) = helm(&["uninstall", &release, "--namespace", ns.name()]);
    assert!(ok, "helm uninstall failed: {stderr}");
    let roles = kube::Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(client.clone());
    assert!(roles.get_opt(&fullname).await.unwrap().is_none());
}
