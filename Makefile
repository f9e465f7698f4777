# keyrotor development targets.
#
#   make tools          build kubectl, helm, etcd, kube-apiserver, kube-controller-manager
#                       from the pinned Go modules (tests/cluster/; first run only)
#   make cluster-up     start the local control plane (target/cluster/), print KUBECONFIG
#   make cluster-down   stop it
#   make lint           rustfmt and clippy
#   make test           everything: a fresh control plane, every step of TEST_STEPS
#                       inside it, the control plane always stopped afterwards
#   make bench          scale, memory and API cost on a fresh control plane (~10 min,
#                       not part of `make test`): a table and target/bench/results.json
#
# Adding a test step: write a target and append it to TEST_STEPS below (or with
# `TEST_STEPS += my-step` further down). tests/run starts the control plane, runs
# `make <step>` for each step with KUBECONFIG, PATH (kubectl, helm) and
# KEYROTOR_AUDIT_LOG exported from target/cluster/env, keeps going past a failed step,
# prints a summary, stops the control plane (also on failure or Ctrl-C) and exits
# non-zero if any step failed. A step can also be run alone against a running
# control plane: `make cluster-up && source target/cluster/env && make <step>`.

SHELL := /bin/bash
CARGO ?= cargo

TEST_STEPS := lint cargo-test

.PHONY: tools cluster-up cluster-down lint cargo-test test

tools:
	tests/cluster/build-tools

cluster-up: tools
	tests/cluster/up

cluster-down:
	tests/cluster/down

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# Unit, property and integration tests (integration tests need KUBECONFIG: the
# control plane is started by `make test`, or by hand with `make cluster-up`).
# Doc tests first, so the run ends on the summary of the real test suites.
cargo-test:
	$(CARGO) test --doc
	$(CARGO) test --all-targets

test: tools
	MAKE="$(MAKE)" tests/run $(TEST_STEPS)

# PyJWT and jose accept our JWKs and verify tokens signed from our PEM and private
# JWK, for every algorithm (tests/interop/; needs python3 and node, no cluster).
test-interop:
	CARGO="$(CARGO)" tests/interop/run

TEST_STEPS += test-interop
.PHONY: test-interop

# --- the CRD and the demo --------------------------------------------------------------
#   make crds           regenerate crds/jwtsigningkey.yaml and crds/jwksbundle.yaml from
#                       the code (and the chart's copies in charts/keyrotor/crds/)
#   make check-crds     fail when crds/ differs from what `keyrotor crd` prints, or the
#                       chart's charts/keyrotor/crds/ differs from crds/
#   make demo           control plane + CRD + operator + examples/quickstart.yaml, watched

.PHONY: crds check-crds demo

crds:
	$(CARGO) run --quiet --bin keyrotor -- crd jwtsigningkey > crds/jwtsigningkey.yaml
	$(CARGO) run --quiet --bin keyrotor -- crd jwksbundle > crds/jwksbundle.yaml
	cp crds/jwtsigningkey.yaml crds/jwksbundle.yaml charts/keyrotor/crds/

check-crds:
	@$(CARGO) run --quiet --bin keyrotor -- crd jwtsigningkey | diff -u crds/jwtsigningkey.yaml - \
		|| { echo "crds/jwtsigningkey.yaml is out of date: run 'make crds'"; exit 1; }
	@$(CARGO) run --quiet --bin keyrotor -- crd jwksbundle | diff -u crds/jwksbundle.yaml - \
		|| { echo "crds/jwksbundle.yaml is out of date: run 'make crds'"; exit 1; }
	@diff -ru crds charts/keyrotor/crds \
		|| { echo "charts/keyrotor/crds differs from crds/: run 'make crds'"; exit 1; }

demo: tools
	scripts/demo

TEST_STEPS += check-crds

# End-to-end suite (tests/e2e/; README "End-to-end suite"): the keyrotor binary against
# the control plane, token issuers and verifiers (Rust jsonwebtoken, PyJWT, jose) across
# rotations and faults; report in target/e2e/report.json. KEYROTOR_E2E_SCENARIOS=a,b
# runs a subset. Verifier libraries install into $HOME/.cache/keyrotor/.
e2e:
	eval "$$(tests/e2e/deps)" && KEYROTOR_E2E=1 $(CARGO) test --test e2e

TEST_STEPS += e2e
.PHONY: e2e

# --- the bench ------------------------------------------------------------------------
# The release operator and the bench driver are built before the control plane starts;
# tests/bench/cluster.rs runs the phases against it.
bench: tools
	$(CARGO) build --release --bin keyrotor
	$(CARGO) bench --bench cluster --no-run
	MAKE="$(MAKE)" tests/run bench-cluster

# One bench run against the running control plane (`make cluster-up` first).
bench-cluster:
	$(CARGO) bench --bench cluster

.PHONY: bench bench-cluster
