# socklb — run `make help` for the menu.
SHELL := /bin/bash
GO ?= go
CLANG ?= clang-19
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
BIN := bin/socklb-agent
GOFLAGS_BUILD := -trimpath -ldflags "-s -w -X main.version=$(VERSION)"

.PHONY: help generate verify-generated build test unit-test lint demo clean deps-clang e2e-bin e2e bench

help: ## this menu
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

deps-clang: ## install Debian's clang-19, llvm-19 and libbpf headers if missing
	@if ! command -v $(CLANG) >/dev/null || ! command -v llvm-strip-19 >/dev/null || [ ! -e /usr/include/bpf/bpf_helpers.h ]; then \
		echo "installing clang-19 llvm-19 libbpf-dev linux-libc-dev"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang-19 llvm-19 libbpf-dev linux-libc-dev >/dev/null; \
	fi

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

lint: ## gofmt, go vet, staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

unit-test: ## tests that need no privileges
	$(GO) test -count=1 -skip 'TestPrivileged' ./...

test: lint verify-generated build e2e-bin ## every test: unit, privileged and end to end (run as root)
	$(GO) test -count=1 -p 1 -timeout 30m ./...

e2e-bin: ## build once (cached in ~/.cache/socklb-e2e) kube-apiserver, kube-controller-manager, etcd v1.37.2
	$(GO) run ./tests/e2e/cmd/e2e-bin

e2e: build e2e-bin ## end-to-end tests against a real API server in a private netns (run as root)
	set -o pipefail; $(GO) test -count=1 -p 1 -timeout 30m -v ./tests/e2e/... 2>&1 | \
		grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|_test.go:[0-9]+:'

bench: build e2e-bin ## socklb vs kube-proxy (iptables, nftables) vs direct; QUICK=1 for a short run (root)
	$(GO) run ./tests/bench --agent $(BIN) $(if $(QUICK),--quick) $(BENCHFLAGS)

demo: build ## show ClusterIP balancing in a private netns and child cgroup, then clean up
	$(GO) run ./tests/demo --agent $(BIN) --services examples/demo.yaml

clean: ## remove build output
	rm -rf bin
