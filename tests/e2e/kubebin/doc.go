// Package kubebin is a separate Go module that pins the Kubernetes and etcd
// binaries the e2e tests and benchmarks run (kube-apiserver,
// kube-controller-manager, kube-proxy and etcd) and those the test node
// adds (kubelet, kube-scheduler and kubectl), as `tool` directives, so
// that go.sum lists every module they need. All but etcd come from
// k8s.io/kubernetes, whose go.mod already selects every version, so adding
// one of its binaries adds go.sum lines and moves no other's dependencies.
//
// go.mod and go.sum are generated from Kubernetes' own go.mod; to move to
// another release, change the version below and run `go generate` here.
// The binaries are built and cached by
// github.com/socklb/socklb/tests/e2e/kubebuild.
package kubebin

//go:generate go run ./gen -version v1.37.2
