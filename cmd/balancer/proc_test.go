package main_test

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p-balancer/libp2p-balancer/internal/proctest"
)

// bin and whoamiBin are the binaries under test, built once by TestMain.
var bin, whoamiBin string

func TestMain(m *testing.M) {
	proctest.Main(m,
		proctest.Binary{Name: "balancer", Pkg: ".", Path: &bin},
		proctest.Binary{Name: "whoami", Pkg: "../../examples/whoami", Path: &whoamiBin})
}

// start runs the balancer binary with args.
func start(t *testing.T, name string, o proctest.Options, args ...string) *proctest.Proc {
	t.Helper()
	if len(args) > 0 && args[0] == "serve" && !slices.Contains(args, "--admin") {
		// Several balancers run at once: each takes a free admin port
		// rather than the default 8242.
		args = append(args, "--admin", "127.0.0.1:0")
	}
	return startBin(t, bin, name, o, args...)
}

// startBin runs the binary at path with args.
func startBin(t *testing.T, path, name string, o proctest.Options, args ...string) *proctest.Proc {
	t.Helper()
	return proctest.Start(t, name, exec.Command(path, args...), o)
}

// serve starts `balancer serve` on a free loopback TCP port with args, and
// returns it with its printed address.
func serve(t *testing.T, name string, args ...string) (*proctest.Proc, string) {
	t.Helper()
	p := start(t, name, proctest.Options{}, append([]string{"serve", "--listen", "/ip4/127.0.0.1/tcp/0"}, args...)...)
	addr := p.Lines(t, 1, 20*time.Second)[0]
	if !strings.Contains(addr, "/p2p/") {
		t.Fatalf("%s printed %q, want a multiaddr ending in /p2p/<peer ID>", name, addr)
	}
	return p, addr
}

// dialOnce runs `balancer dial args...` with input on standard input to
// completion.
func dialOnce(t *testing.T, input string, args ...string) proctest.Result {
	t.Helper()
	p := start(t, "dial", proctest.Options{Stdin: []byte(input)}, append([]string{"dial"}, args...)...)
	return p.Finish(t, 60*time.Second)
}

// waitRoute dials until a stream on proto through addr round-trips input,
// which is how a test knows that a sidecar has registered.
func waitRoute(t *testing.T, addr, proto, input, want string) {
	t.Helper()
	proctest.WaitRoute(t, 30*time.Second, proto+" through "+addr, want, func() proctest.Result {
		return dialOnce(t, input, "--timeout", "5s", addr, proto)
	})
}

// oneLine checks that a failed command printed exactly one line on standard
// error, containing every string of want.
func oneLine(t *testing.T, stderr string, want ...string) {
	t.Helper()
	lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
	if len(lines) != 1 || lines[0] == "" {
		t.Fatalf("standard error has %d lines, want one:\n%s", len(lines), stderr)
	}
	for _, w := range want {
		if !strings.Contains(lines[0], w) {
			t.Fatalf("error line %q does not contain %q", lines[0], w)
		}
	}
}
