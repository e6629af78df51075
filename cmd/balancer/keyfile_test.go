package main_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p-balancer/libp2p-balancer/internal/proctest"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
)

// TestKeyFileOpenToOthers: a key file that group or others may read is
// reported on standard error by id and by serve, which still start (the
// warning is ssh's, the refusal is not, see keyfile.CheckMode); a key file
// of mode 0600 is not.
func TestKeyFileOpenToOthers(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path, _ := proctest.KeyFile(t, dir, "open.key")
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	p := start(t, "id", proctest.Options{}, "id", "--identity", path)
	if code := p.Wait(t, 20*time.Second); code != 0 {
		t.Fatalf("id exited %d", code)
	}
	if !strings.Contains(p.Stderr.String(), "chmod 600 "+path) {
		t.Fatalf("id on a 0644 key file said %q, want a warning", p.Stderr.String())
	}
	s, _ := serve(t, "serve", "--identity", path)
	testnet.Eventually(t, 20*time.Second, func() bool { return strings.Contains(s.Stderr.String(), "open to other users") },
		"serve's warning about the key file")

	closed, _ := proctest.KeyFile(t, dir, "closed.key")
	p = start(t, "id", proctest.Options{}, "id", "--identity", closed)
	if code := p.Wait(t, 20*time.Second); code != 0 || p.Stderr.String() != "" {
		t.Fatalf("id on a 0600 key file: exit %d, stderr %q", code, p.Stderr.String())
	}
}

// TestKeyFilesIgnored: the key files that the commands create in a checkout
// (serve with the example config writes balancer.key at the root) are
// ignored by git, so that they are not committed by mistake.
func TestKeyFilesIgnored(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("no git")
	}
	if err := exec.Command("git", "-C", root, "rev-parse", "--git-dir").Run(); err != nil {
		t.Skip("not a git checkout")
	}
	for _, f := range []string{"balancer.key", "backend.key", "examples/whoami/id.key"} {
		if out, err := exec.Command("git", "-C", root, "check-ignore", f).CombinedOutput(); err != nil {
			t.Errorf("git check-ignore %s: %v %s; want it ignored", f, err, out)
		}
	}
}
