// Package ctrbin is a separate Go module that pins the container runtime a
// test node runs: containerd, its runc shim (containerd-shim-runc-v2) and
// ctr, as `tool` directives of github.com/containerd/containerd/v2, so that
// go.sum lists every module they need at the versions containerd's own
// go.mod selects (its go.mod has no replace directives to copy).
//
// Its go line is containerd's own: a tool's GODEBUG defaults come from the
// go line of the module it is built in (`go get` raises it when a release
// needs more; keep the two equal). To move to another release, change the
// version below and run `go generate` here. The binaries are built (CGO
// off, tags `urfave_cli_no_docs no_btrfs no_devmapper no_zfs`, plus
// `no_grpc` for the shim, as containerd's Makefile does) and cached by
// github.com/socklb/socklb/tests/node/nodebuild.
package ctrbin

//go:generate go get github.com/containerd/containerd/v2@v2.3.7
//go:generate go mod tidy
