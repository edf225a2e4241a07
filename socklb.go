// Package socklb holds the BPF objects of socklb, compiled from bpf/ by
// bpf2go. The generated files are committed so that building the agent needs
// nothing but Go; `make generate` rebuilds them with the pinned clang.
package socklb

//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -target bpfel -output-stem bpf -type svc_key -type svc_value -type backend -type svc_counters -type svc_name -type sock_state -type affinity_key -type affinity_value -type departure -type vip_key -type vip_value -type svc_member -type backend_stats -type ejection -type outcome_event -type socklb_consts -type socklb_svc_flags -type socklb_sock_flags -type socklb_event_kind Bpf bpf/socklb.c -- -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu
