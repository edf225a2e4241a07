// Package sandbox builds private, disposable test environments on a shared
// machine: named network namespaces with only lo up, child cgroups of the
// cgroup2 mount, fresh bpffs mounts, backend "pods" that answer with their
// name, and processes started inside a namespace and cgroup.
//
// The package exists to enforce socklb's safety rules for tests, demos and
// benchmarks (DESIGN.md, "Safety on shared machines"):
//
//   - Nothing is ever attached to or put in the host's cgroup2 root: cgroups
//     are uniquely named children of the cgroup2 mount, and [CheckChildCgroup]
//     refuses the root before any operation.
//   - Every socket that may talk to a service address is created inside a
//     network namespace made here, which has only lo (no route out of the
//     machine). [Netns.Dial] and [Netns.Listen] accept IP literals only, so
//     no name lookup can leak out of the namespace from another thread.
//   - Everything created is removed in t.Cleanup, also when the test fails,
//     or by the returned cleanup func for programs. Processes are killed only
//     by the pidfd/PID of a process this package started.
//
// Every constructor taking a testing.TB registers its cleanup; its Create*/
// Run*/Start*In counterpart returns (thing, cleanup, error) for programs such
// as the demo. Call cleanups in reverse order of creation.
//
// Linux only; the functions need root (CAP_SYS_ADMIN, CAP_NET_ADMIN).
package sandbox
