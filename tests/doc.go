// Package tests holds socklb's end-to-end tests: the real programs in the
// kernel, real sockets in a private network namespace, clients in a child
// cgroup, and the agent as a separate process. They need root.
package tests
