package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func execute(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	root := newRootCmd(&out, &out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// TestEverySubcommandReadsTheSameKeys shows that flags, SOCKLB_* variables
// and the --config file all reach inspect and cleanup, in that precedence.
func TestEverySubcommandReadsTheSameKeys(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte("bpffs-path: "+dir+"/from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		env  string
		args []string
		want string
	}{
		{"file", "", []string{"--config", cfg}, "from-file"},
		{"env over file", dir + "/from-env", []string{"--config", cfg}, "from-env"},
		{"flag over env", dir + "/from-env", []string{"--config", cfg, "--bpffs-path", dir + "/from-flag"}, "from-flag"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv("SOCKLB_BPFFS_PATH", tc.env)
			}
			_, err := execute(t, append([]string{"inspect"}, tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("inspect: %v, want an error naming %s", err, tc.want)
			}
			// cleanup of a path with nothing pinned is a no-op that
			// succeeds, and says which path it looked at.
			out, err := execute(t, append([]string{"cleanup"}, tc.args...)...)
			if err != nil || !strings.Contains(out, tc.want) {
				t.Errorf("cleanup: %v, output %q, want it to name %s", err, out, tc.want)
			}
		})
	}
}

func TestRunRejectsBadConfig(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{

		{[]string{"run", "--source=nfs"}, `source "nfs"`},
		{[]string{"run", "--source=file"}, "--services-file is required"},
		{[]string{"run", "--service-selector=env in (a"}, "selector"},
		{[]string{"run", "--source=kubernetes"}, "in-cluster config"},
		{[]string{"run", "--log-format=xml"}, "log-format"},
		{[]string{"run", "--log-level=loud"}, "log-level"},
		{[]string{"run", "--sync-burst=0"}, "sync-burst"},
		{[]string{"run", "--config=/nonexistent/socklb.yaml"}, "read config"},
		{[]string{"inspect", "extra"}, "unknown command"},
	} {
		// Should a case ever get past configuration, these paths make
		// the load fail before anything is attached anywhere.
		args := append(tc.args, "--bpffs-path="+t.TempDir(), "--cgroup-path="+t.TempDir())
		_, err := execute(t, args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error containing %q", args, err, tc.want)
		}
	}
}

func TestVersion(t *testing.T) {
	out, err := execute(t, "version")
	if err != nil || !strings.HasPrefix(out, "socklb-agent ") {
		t.Errorf("version: %q, %v", out, err)
	}
}
