// Package dnsbin is a separate Go module that pins the cluster DNS a test
// node runs: CoreDNS, as a `tool` directive of github.com/coredns/coredns
// (its main package, with the plugins of its plugin.cfg compiled in), so
// that go.sum lists every module it needs at the versions CoreDNS's own
// go.mod selects (its go.mod has no replace directives to copy). It is a
// module of its own, not part of ctrbin or kubebin, so that no other binary
// moves CoreDNS's dependencies (client-go among them).
//
// Its go line is CoreDNS's own: a tool's GODEBUG defaults come from the go
// line of the module it is built in (`go get` raises it when a release
// needs more; keep the two equal). To move to another release, change the
// version below and run `go generate` here. The binary is built (CGO off,
// stripped, tag grpcnotrace, as CoreDNS's Makefile does) and cached by
// github.com/socklb/socklb/tests/node/nodebuild.
package dnsbin

//go:generate go get github.com/coredns/coredns@v1.15.0
//go:generate go mod tidy
