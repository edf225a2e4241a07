package nodebuild

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/socklb/socklb/tests/buildcache"
)

func TestParseRuncVersion(t *testing.T) {
	for _, tc := range []struct {
		out, want string
		err       bool
	}{
		{out: "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev\n", want: "1.1.5+ds1"},
		{out: "runc version 1.4.0-rc.1\n", want: "1.4.0-rc.1"},
		{out: "runc version 2.0.0\n", want: "2.0.0"},
		{out: "runc version 1.0.3\n", err: true}, // too old for the hybrid layout
		{out: "crun version 1.8\n", err: true},
		{out: "", err: true},
	} {
		got, err := parseRuncVersion(tc.out)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("parseRuncVersion(%q) = %q, %v; want %q, error %v", tc.out, got, err, tc.want, tc.err)
		}
	}
}

func TestCheckStaticRejectsDynamicBinaries(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	sh, _ = filepath.EvalSymlinks(sh)
	if out, _ := exec.Command("ldd", sh).CombinedOutput(); strings.Contains(string(out), "not a dynamic") {
		t.Skipf("%s is static here", sh)
	}
	if err := checkStatic(sh); err == nil {
		t.Errorf("checkStatic(%s) accepted a dynamic binary", sh)
	}
	if err := checkStatic(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("checkStatic accepted a missing file")
	}
}

// TestModulesPinWhatTheBuilderBuilds: ctrbin and dnsbin list exactly the
// packages the builder builds as tools and require the module at the
// version their doc.go's `go generate` gets.
func TestModulesPinWhatTheBuilderBuilds(t *testing.T) {
	for _, tc := range []struct {
		rel, module string
		pkgs        []buildcache.Package
		version     *regexp.Regexp
	}{
		{"tests/node/ctrbin", containerdModule, append(slices.Clone(containerdPackages), shimPackages...), regexp.MustCompile(`^v2\.3\.[0-9]+$`)},
		{"tests/node/dnsbin", corednsModule, corednsPackages, regexp.MustCompile(`^v1\.15\.[0-9]+$`)},
	} {
		ctx := context.Background()
		dir, err := buildcache.ModuleDir(ctx, tc.rel)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.CommandContext(ctx, "go", "mod", "edit", "-json")
		cmd.Dir = dir
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go mod edit -json in %s: %v", dir, err)
		}
		var mod struct {
			Tool []struct{ Path string }
		}
		if err := json.Unmarshal(out, &mod); err != nil {
			t.Fatal(err)
		}
		var tools, want []string
		for _, tl := range mod.Tool {
			tools = append(tools, tl.Path)
		}
		for _, p := range tc.pkgs {
			want = append(want, p.Path)
		}
		slices.Sort(tools)
		slices.Sort(want)
		if !slices.Equal(tools, want) {
			t.Errorf("%s tools %v, the builder builds %v", tc.rel, tools, want)
		}
		version, err := requiredVersion(ctx, dir, tc.module)
		if err != nil {
			t.Fatal(err)
		}
		if !tc.version.MatchString(version) {
			t.Errorf("%s requires %s %s, want %v", tc.rel, tc.module, version, tc.version)
		}
		doc, err := os.ReadFile(filepath.Join(dir, "doc.go"))
		if err != nil {
			t.Fatal(err)
		}
		if get := "//go:generate go get " + tc.module + "@" + version + "\n"; !strings.Contains(string(doc), get) {
			t.Errorf("%s/doc.go lacks %q: go generate would move the module", tc.rel, strings.TrimSpace(get))
		}
	}
}

func TestFindCNI(t *testing.T) {
	partial, full := t.TempDir(), t.TempDir()
	write := func(dir, name, script string, mode os.FileMode) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), mode); err != nil {
			t.Fatal(err)
		}
	}
	write(partial, "bridge", "#!/bin/sh\n", 0o755)
	write(partial, "host-local", "#!/bin/sh\n", 0o644) // not executable
	for _, p := range CNIPlugins {
		write(full, p, "#!/bin/sh\necho 'CNI "+p+" plugin v1.6.2' >&2\n", 0o755)
	}
	saved := cniDirs
	t.Cleanup(func() { cniDirs = saved })

	cniDirs = []string{partial}
	_, err := FindCNI(context.Background())
	if err == nil || !strings.Contains(err.Error(), filepath.Join(partial, "host-local")) || !strings.Contains(err.Error(), "containernetworking-plugins") {
		t.Errorf("FindCNI with host-local unusable and loopback missing: %v", err)
	}

	cniDirs = []string{partial, full}
	c, err := FindCNI(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if c.Dir != full || len(c.Plugins) != len(CNIPlugins) || c.Version != "v1.6.2" {
		t.Errorf("FindCNI = %+v, want %s with its %d plugins at v1.6.2", c, full, len(CNIPlugins))
	}
}
