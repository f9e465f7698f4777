# Sourced by the cluster scripts: the pinned tool versions (read from the go.mod files,
# so bumping a pin there moves to a fresh cache directory) and where the tools live.
# shellcheck shell=bash
_cluster_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

_gomod_version() { # module go.mod-file
    awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit }
                   $1 == "require" && $2 == m { print $3; exit }' "$2"
}

K8S_VERSION="$(_gomod_version k8s.io/kubernetes "$_cluster_dir/go.mod")"
ETCD_VERSION="$(_gomod_version go.etcd.io/etcd/server/v3 "$_cluster_dir/go.mod")"
HELM_VERSION="$(_gomod_version helm.sh/helm/v4 "$_cluster_dir/helm/go.mod")"
# Release date of the pinned Kubernetes tag, used as the binaries' buildDate.
K8S_RELEASE_DATE="2026-10-27T12:01:04Z"

TOOLS_KEY="k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION"
TOOLS_DIR="${KEYROTOR_CACHE:-$HOME/.cache/keyrotor}/tools/$TOOLS_KEY"
TOOLS_BIN="$TOOLS_DIR/bin"
