package testagent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ErrCommitUnavailable: the commit to build is not in the repository, as
// happens in a shallow clone.
var ErrCommitUnavailable = errors.New("commit not in the repository")

// BuildAt builds ./cmd/agent of the git repository that holds moduleRoot
// as it was at commit, into dir, and returns the binary's path. It checks
// the commit out into a temporary worktree (the repository's index and
// branch are untouched), builds there like `make build` does (static,
// -trimpath, so the build cache of the current tree serves the
// dependencies; the committed BPF objects, so no clang) and removes the
// worktree again. A commit the repository lacks is an error wrapping
// ErrCommitUnavailable that says how to get it.
func BuildAt(ctx context.Context, moduleRoot, commit, dir string) (string, error) {
	if _, err := exec.LookPath("git"); err != nil {
		return "", fmt.Errorf("build agent at %s: %w", commit, err)
	}
	top, err := git(ctx, moduleRoot, "rev-parse", "--show-toplevel")
	if err != nil {
		return "", fmt.Errorf("build agent at %s: %s is not in a git repository: %w", commit, moduleRoot, err)
	}
	if _, err := git(ctx, top, "cat-file", "-e", commit+"^{commit}"); err != nil {
		if shallow, _ := git(ctx, top, "rev-parse", "--is-shallow-repository"); shallow == "true" {
			return "", fmt.Errorf("build agent at %s: %w: %s is a shallow clone; run `git fetch --unshallow` there", commit, ErrCommitUnavailable, top)
		}
		return "", fmt.Errorf("build agent at %s: %w (fetch it into %s): %w", commit, ErrCommitUnavailable, top, err)
	}

	tmp, err := os.MkdirTemp("", "socklb-agent-at-")
	if err != nil {
		return "", fmt.Errorf("build agent at %s: %w", commit, err)
	}
	defer os.RemoveAll(tmp)
	src := filepath.Join(tmp, "src")
	// Registered before the add, which may fail half-way (ctx cancelled)
	// and leave an entry in .git/worktrees; both commands accept a
	// missing worktree. Cleanup must run even when ctx is done.
	defer func() {
		_, _ = git(context.Background(), top, "worktree", "remove", "--force", src)
		_, _ = git(context.Background(), top, "worktree", "prune")
	}()
	if _, err := git(ctx, top, "worktree", "add", "--detach", src, commit); err != nil {
		return "", fmt.Errorf("build agent at %s: %w", commit, err)
	}

	bin := filepath.Join(dir, "socklb-agent-"+shortName(commit))
	// -mod=mod: an old go.sum may lack a line a newer go wants; the
	// worktree is thrown away, so go may add it.
	cmd := exec.CommandContext(ctx, "go", "build", "-mod=mod", "-buildvcs=false", "-trimpath", "-o", bin, "./cmd/agent")
	cmd.Dir = src
	// No downloads while tests run: `make test-deps` fetches the old
	// commit's modules beforehand.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOPROXY=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build agent at %s (modules missing? run `make test-deps`): %w\n%s", commit, err, out)
	}
	return bin, nil
}

// git runs git in dir and returns its trimmed standard output.
func git(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

// shortName makes a file name from a commit name ("HEAD~3", a hash).
func shortName(commit string) string {
	name := strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' {
			return r
		}
		return '_'
	}, commit)
	return name[:min(len(name), 12)]
}
