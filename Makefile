# socklb — run `make help` for the menu.
SHELL := /bin/bash
GO ?= go
CLANG ?= clang-19
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
BIN := bin/socklb-agent
GOFLAGS_BUILD := -trimpath -ldflags "-s -w -X main.version=$(VERSION)"
IMAGE := bin/socklb-agent-image.tar
# The image's creation time and file times: the last commit's, so the same
# tree gives the same image digest.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)

.PHONY: help generate verify-generated build image test test-deps unit-test race fuzz lint demo clean deps deps-clang e2e-bin node-bin conformance-bin e2e node-e2e conformance bench

help: ## this menu
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

# Debian packages: CLANG_PKGS build bpf/; NODE_PKGS are what the test node
# takes from Debian (runc, the CNI plugins in /usr/lib/cni) and the C
# compiler and static libc its pause binary is built with; DEPS_PKGS is
# everything the build, the tests (iptables-save, nft and conntrack for
# kube-proxy parity, bpftool, ip, nsenter/unshare), the test node and the
# demo (bpftool) run.
CLANG_PKGS := clang-19 llvm-19 libbpf-dev linux-libc-dev
NODE_PKGS := runc containernetworking-plugins gcc libc6-dev
# CONFORMANCE_PKGS make the conformance run's agnhost image a Debian root
# filesystem (its specs run sh, nc, curl and nslookup inside it).
CONFORMANCE_PKGS := mmdebstrap
DEPS_PKGS := $(CLANG_PKGS) bpftool iproute2 util-linux iptables nftables conntrack $(NODE_PKGS) $(CONFORMANCE_PKGS)

# apt-install: install those of the Debian packages $(1) that are not
# installed yet, with one `apt-get update` first; nothing when none is missing.
define apt-install
	@missing=""; for p in $(1); do \
		dpkg-query -W -f='$${db:Status-Status}' "$$p" 2>/dev/null | grep -qx installed || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
endef

deps: ## install the Debian packages the build, tests and demo need, if missing (root)
	$(call apt-install,$(DEPS_PKGS))

deps-clang: ## install only Debian's clang-19, llvm-19 and libbpf headers, if missing (generate needs no more)
	$(call apt-install,$(CLANG_PKGS))

generate: deps-clang ## rebuild bpf_bpfel.go/.o from bpf/ with clang-19 (-Wall -Werror)
	$(GO) generate ./

verify-generated: deps-clang ## fail when the committed BPF objects differ from a fresh build
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	cp -r bpf socklb.go go.mod go.sum "$$tmp"/ && \
	(cd "$$tmp" && $(GO) generate ./ ) && \
	if cmp -s "$$tmp/bpf_bpfel.o" bpf_bpfel.o && cmp -s "$$tmp/bpf_bpfel.go" bpf_bpfel.go; then \
		echo "generated BPF objects are up to date"; \
	else \
		echo "bpf_bpfel.go/.o are stale: run 'make generate' and commit them" >&2; exit 1; \
	fi

build: ## build bin/socklb-agent (static)
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o $(BIN) ./cmd/agent

image: build ## write bin/socklb-agent-image.tar, the agent's container image (no Docker needed)
	$(GO) run ./tools/mkimage --binary $(BIN) --out $(IMAGE) --version $(VERSION) \
		--revision "$$(git rev-parse HEAD 2>/dev/null)" --created $(SOURCE_DATE_EPOCH)

# LINTTAGS: the node suites' build tags. No file is built only without
# them, so one pass with them covers every file (two passes analyzed the
# shared dependencies twice: minutes of a cold CI).
LINTTAGS := nodee2e,conformance

lint: ## gofmt, go vet, staticcheck (every file, the node suites' build tags included)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	@neg=$$(grep -l '^//go:build.*!\(nodee2e\|conformance\)' $$(git ls-files '*.go')); if [ -n "$$neg" ]; then echo "files built only without $(LINTTAGS) escape make lint: $$neg" >&2; exit 1; fi
	$(GO) vet -tags $(LINTTAGS) ./...
	$(GO) tool staticcheck -tags $(LINTTAGS) ./...

# NOVET turns off go test's own vet pass in the targets make test runs after
# make lint (which runs the full go vet): that pass analyzes every
# dependency again (printf facts), minutes of a cold CI.
NOVET := -vet=off

unit-test: ## tests that need no privileges
	$(GO) test -count=1 -skip 'TestPrivileged' ./...

# The upgrade test builds the agents of the commits it names (one per older
# map layout, `layoutVnCommit = "<hash>"`), offline.
UPGRADE_FROM = $(shell sed -n 's/^[[:space:]]*\(const \)\{0,1\}layoutV[0-9]*Commit = "\([0-9a-f]*\)".*/\2/p' tests/upgrade_test.go)

test-deps: ## fetch the Go modules of the older commits that the upgrade test builds
	@test -n "$(UPGRADE_FROM)" || { echo "no layoutVnCommit in tests/upgrade_test.go" >&2; exit 1; }
	@for c in $(UPGRADE_FROM); do \
		tmp=$$(mktemp -d) && \
		git archive $$c go.mod go.sum | tar -x -C "$$tmp" && \
		(cd "$$tmp" && $(GO) mod download) && rm -rf "$$tmp" && \
		echo "modules of $$c are in the module cache" || { rm -rf "$$tmp"; exit 1; }; \
	done

# FUZZ lists each fuzz target as package:Name:executions. The budgets are
# counts, not durations (about 20 s each on 2 cores): with a duration, Go
# 1.26's coordinator can fail a target at the deadline with "context
# deadline exceeded" and no crasher (go.dev/issue/75804, fixed in 1.27).
# Minimizing a new input is held to FUZZMINIMIZE executions; at the default
# 60 s it stalled FuzzDecode for tens of seconds at a time. FUZZTIME, when
# set (a duration or Nx), replaces every budget.
FUZZ := ./pkg/lb:FuzzCompute:100000 ./pkg/lb:FuzzComputer:1500 \
	./pkg/filesource:FuzzDecode:15000 ./pkg/filesource:FuzzParseContent:15000 \
	./pkg/reconciler:FuzzReconcilerWithinCapacity:30000
FUZZTIME ?=
FUZZMINIMIZE ?= 100x

race: ## the unprivileged packages under the race detector
	$(GO) test $(NOVET) -count=1 -race -skip 'TestPrivileged' ./cmd/... ./pkg/...

fuzz: ## each fuzz target for its budget of executions (FUZZTIME to override)
	@n=$$(grep -rhE '^func Fuzz[A-Za-z0-9_]*\(' --include='*_test.go' cmd pkg internal tests | wc -l); \
	if [ "$$n" -ne $(words $(FUZZ)) ]; then echo "the code has $$n fuzz targets, FUZZ lists $(words $(FUZZ)): add the new one" >&2; exit 1; fi
	@set -e; for t in $(FUZZ); do \
		pkg=$${t%%:*}; rest=$${t#*:}; name=$${rest%%:*}; budget=$${rest##*:}x; \
		if [ -n "$(FUZZTIME)" ]; then budget=$(FUZZTIME); fi; \
		echo "fuzz $$pkg $$name for $$budget"; \
		$(GO) test $(NOVET) -run '^$$' -fuzz "^$$name\$$" -fuzztime "$$budget" -fuzzminimizetime $(FUZZMINIMIZE) "$$pkg"; \
	done

test: deps lint verify-generated build e2e-bin test-deps race fuzz ## every test: deps, lint, race, fuzz, unit, privileged and end to end (run as root)
	$(GO) test $(NOVET) -count=1 -p 1 -timeout 30m ./...

e2e-bin: ## build once (cached in ~/.cache/socklb-e2e) kube-apiserver, kube-controller-manager, etcd v1.37.2
	$(GO) run ./tests/e2e/cmd/e2e-bin

node-bin: deps ## build once (cached in ~/.cache/socklb-e2e) the test node's kubelet, kube-scheduler, kubectl, containerd, CoreDNS, pause; find runc, CNI plugins
	$(GO) run ./tests/node/cmd/node-bin

e2e: build e2e-bin ## end-to-end tests against a real API server in a private netns (run as root)
	set -o pipefail; $(GO) test -count=1 -p 1 -timeout 30m -v ./tests/e2e/... 2>&1 | \
		grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|_test.go:[0-9]+:'

node-e2e: image node-bin ## deploy/ on a real node (kubelet, containerd, CoreDNS, no kube-proxy) in private namespaces: the README's "Try it on a real node" (root)
	set -o pipefail; $(GO) test $(NOVET) -tags nodee2e -count=1 -p 1 -timeout 30m -v ./tests/node/... 2>&1 | \
		grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|\.go:[0-9]+:'

conformance-bin: deps ## build once (cached in ~/.cache/socklb-e2e) e2e.test and agnhost of v1.37.2, and agnhost's Debian root filesystem
	$(GO) run ./tests/conformance/cmd/conformance-bin

conformance: image node-bin conformance-bin ## Kubernetes' own Services conformance specs (upstream e2e.test) on the real node, no kube-proxy: the README's "Conformance" (root)
	$(GO) test $(NOVET) -tags nodee2e,conformance -count=1 -p 1 -timeout 60m -v -run '^TestConformance$$' ./tests/node/e2e/

.PHONY: deps-vm vm-test
deps-vm: ## install qemu and busybox-static for vm-test if missing
	@if ! command -v qemu-system-x86_64 >/dev/null || ! busybox --list >/dev/null 2>&1 || ldd "$$(command -v busybox)" >/dev/null 2>&1; then \
		echo "installing qemu-system-x86 busybox-static"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86 busybox-static >/dev/null; \
	fi

vm-test: deps-vm build ## privileged tests on Debian's 6.1 and 6.12 kernels under qemu and natively here (root; VMFLAGS for more)
	$(GO) run ./tests/vm --agent $(BIN) $(VMFLAGS)

bench: build e2e-bin ## socklb vs kube-proxy (iptables, nftables) vs direct; QUICK=1 for a short run (root)
	$(GO) run ./tests/bench --agent $(BIN) $(if $(QUICK),--quick) $(BENCHFLAGS)

demo: deps build ## show ClusterIP balancing in a private netns and child cgroup, then clean up
	$(GO) run ./tests/demo --agent $(BIN) --services examples/demo.yaml

clean: ## remove build output
	rm -rf bin
