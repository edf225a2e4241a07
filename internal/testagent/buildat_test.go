package testagent

import (
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBuildAtMissingCommit: a commit the repository lacks is an error that
// names the cause, a shallow clone above all (CI must not skip the upgrade
// test silently there); nothing is built or checked out.
func TestBuildAtMissingCommit(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatalf("git is needed to build the agent at an older commit: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	top, err := git(ctx, "../..", "rev-parse", "--show-toplevel")
	if err != nil {
		t.Fatal(err)
	}
	const absent = "0123456789abcdef0123456789abcdef01234567"

	shallow := filepath.Join(t.TempDir(), "shallow")
	if _, err := git(ctx, top, "clone", "--quiet", "--depth=1", "file://"+top, shallow); err != nil {
		t.Fatal(err)
	}
	_, err = BuildAt(ctx, shallow, absent, t.TempDir())
	if !errors.Is(err, ErrCommitUnavailable) || !strings.Contains(err.Error(), "shallow clone") {
		t.Errorf("shallow clone: %v; want ErrCommitUnavailable naming the shallow clone", err)
	}

	_, err = BuildAt(ctx, top, absent, t.TempDir())
	if !errors.Is(err, ErrCommitUnavailable) {
		t.Errorf("unknown commit: %v; want ErrCommitUnavailable", err)
	}

	if _, err := BuildAt(ctx, t.TempDir(), absent, t.TempDir()); err == nil || !strings.Contains(err.Error(), "not in a git repository") {
		t.Errorf("outside a repository: %v", err)
	}
}
