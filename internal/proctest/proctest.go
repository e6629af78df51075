// Package proctest helps tests that run the project's binaries as separate
// processes: building them once, and collecting their output safely.
package proctest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Build compiles pkg to out. The binaries are built without the race
// detector, which makes each process several times slower to start and run
// (cmd/balancer's end-to-end set took 45 s instead of 11 s on two cores);
// the packages they are made of run their own tests in-process under -race.
// Set BALANCER_E2E_RACE=1 to build them with -race when the tests have it.
func Build(out, pkg string) error {
	args := []string{"build", "-o", out}
	if raceEnabled && os.Getenv("BALANCER_E2E_RACE") != "" {
		args = append(args, "-race")
	}
	cmd := exec.Command(goTool(), append(args, pkg)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	return nil
}

// goTool is the go command of the toolchain running the tests.
func goTool() string {
	p := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return "go"
}

// SyncBuffer is a bytes.Buffer safe for a process's writes and the test's
// reads.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p.
func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Bytes returns a copy of everything written so far.
func (b *SyncBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

// KeyFile writes a new Ed25519 identity to dir/name, in the format of
// `balancer --identity`, and returns its path and peer ID.
func KeyFile(t testing.TB, dir, name string) (string, peer.ID) {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := crypto.MarshalPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return path, id
}

// Binary is a program to build for a test binary's processes.
type Binary struct {
	Name string  // the file name
	Pkg  string  // the package to build, as for go build
	Path *string // set to where it was built
}

// Main is the body of a TestMain for tests that run the project's
// binaries: it builds bins, all at once, into a new temporary directory,
// runs the tests, removes the directory and exits.
func Main(m *testing.M, bins ...Binary) {
	dir, err := os.MkdirTemp("", "balancer-proctest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	errs := make([]error, len(bins))
	var wg sync.WaitGroup
	for i, b := range bins {
		*b.Path = filepath.Join(dir, b.Name)
		wg.Go(func() { errs[i] = Build(*b.Path, b.Pkg) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
