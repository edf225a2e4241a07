// Package e2e proves socklb on a real node (package harness): the
// DaemonSets of deploy/, applied with kubectl through the kustomize
// overlays in tests/node/deploy, on a kubelet with containerd and runc,
// with CoreDNS as kube-dns and no kube-proxy; real pods reach Services by
// DNS name. The scenarios are the subtests of TestPrivilegedNode; each
// logs what it measured.
//
// It needs root, the agent image (`make image`) and the node's binaries
// (`make node-bin`), and is behind the nodee2e build tag:
//
//	make node-e2e
//
// or, with those built,
//
//	go test -tags nodee2e -count=1 -v ./tests/node/e2e/
package e2e
