package sandbox

import (
	"strings"
	"testing"
)

func TestParseMounts(t *testing.T) {
	const mounts = `tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
cgroup2 /mnt/with\040space cgroup2 rw 0 0
bpf /sys/fs/bpf bpf rw 0 0
`
	got, err := parseMounts(strings.NewReader(mounts), "cgroup2")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/sys/fs/cgroup/unified", "/mnt/with space"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("parseMounts = %q, want %q", got, want)
	}
	got, _ = parseMounts(strings.NewReader("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"), "cgroup2")
	if len(got) != 0 {
		t.Errorf("parseMounts without cgroup2 = %q, want none", got)
	}
}

func TestUnescapeMount(t *testing.T) {
	for in, want := range map[string]string{
		`/plain`:           "/plain",
		`/a\040b`:          "/a b",
		`/tab\011x\134y`:   "/tab\tx\\y",
		`/short\04`:        `/short\04`,
		`/not\999octal`:    `/not\999octal`,
		`/trailing\`:       `/trailing\`,
		`/two\040\040sp`:   "/two  sp",
		`/newline\012here`: "/newline\nhere",
	} {
		if got := UnescapeMount(in); got != want {
			t.Errorf("UnescapeMount(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseProcCgroup(t *testing.T) {
	tests := []struct {
		name, in, want string
		wantErr        bool
	}{
		{name: "hybrid root", in: "9:name=systemd:/\n4:memory:/x\n0::/\n", want: "/"},
		{name: "hybrid child", in: "1:cpu:/\n0::/socklb-test-abc\n", want: "/socklb-test-abc"},
		{name: "unified", in: "0::/user.slice/session-1.scope\n", want: "/user.slice/session-1.scope"},
		{name: "v1 only", in: "1:cpu:/\n", wantErr: true},
		{name: "deleted", in: "0::/gone (deleted)\n", wantErr: true},
		{name: "relative", in: "0::x\n", wantErr: true},
		{name: "outside cgroup namespace", in: "0::/../../x\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseProcCgroup(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("parseProcCgroup(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestCheckInetAddr(t *testing.T) {
	tests := []struct {
		network, addr string
		emptyOK       bool
		ok            bool
	}{
		{"tcp", "198.18.0.10:80", false, true},
		{"udp", "[2001:2::1]:53", false, true},
		{"tcp4", ":0", true, true},
		{"tcp4", ":0", false, false},
		{"tcp", "localhost:80", false, false},
		{"tcp", "example.com:80", true, false},
		{"unix", "/tmp/x", false, false},
		{"ip4:icmp", "198.18.0.10", false, false},
		{"tcp", "198.18.0.10", false, false},
	}
	for _, tt := range tests {
		err := checkInetAddr(tt.network, tt.addr, tt.emptyOK)
		if (err == nil) != tt.ok {
			t.Errorf("checkInetAddr(%q, %q, %v) = %v, want ok=%v", tt.network, tt.addr, tt.emptyOK, err, tt.ok)
		}
	}
}

func TestCheckPrefix(t *testing.T) {
	for prefix, ok := range map[string]bool{
		"socklb-t-":              true,
		"socklb-test-":           true,
		"":                       false,
		"../escape-":             false,
		"a/b-":                   false,
		".hidden-":               false,
		"nul\x00":                false,
		strings.Repeat("x", 201): false,
	} {
		if err := checkPrefix(prefix); (err == nil) != ok {
			t.Errorf("checkPrefix(%q) = %v, want ok=%v", prefix, err, ok)
		}
	}
}
