package main_test

import (
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p-balancer/libp2p-balancer/internal/proctest"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
)

// whoamiSetup is the README walk-through's processes: a balancer with its
// admin listener, whoami, and a sidecar routing /whoami/1.0.0 to it with the
// PROXY protocol, the route registered.
type whoamiSetup struct {
	dir             string
	lb, sidecar     *proctest.Proc
	lbAddr, admin   string
	lbKey, listenTo string
	allow           string
}

func newWhoamiSetup(t *testing.T, sidecarArgs ...string) *whoamiSetup {
	t.Helper()
	s := &whoamiSetup{dir: t.TempDir(), admin: freePort(t)}
	bKey, bID := proctest.KeyFile(t, s.dir, "backend.key")
	s.lbKey, s.allow = filepath.Join(s.dir, "lb.key"), bID.String()+"=/whoami/*"
	// Debug, for the balancer's line per registration answered DRAINING.
	s.lb, s.lbAddr = serve(t, "lb", "--identity", s.lbKey, "--allow", s.allow, "--admin", s.admin, "--log-level", "debug")
	s.listenTo = strings.TrimSuffix(s.lbAddr, "/p2p/"+peerOf(t, s.lbAddr).String())
	svc := freePort(t)
	startBin(t, whoamiBin, "whoami", proctest.Options{}, "--listen", svc)
	s.sidecar = start(t, "sidecar", proctest.Options{}, append([]string{"backend", "--identity", bKey, "--balancer", s.lbAddr,
		"--route", "/whoami/1.0.0=" + svc, "--proxy-protocol"}, sidecarArgs...)...)
	waitRoute(t, s.lbAddr, "/whoami/1.0.0", "probe\n", "probe\n")
	return s
}

// drainingAnswers counts the registrations the balancer p answered with
// DRAINING.
func drainingAnswers(p *proctest.Proc) int {
	return strings.Count(p.Stderr.String(), "status=DRAINING")
}

func readyz(t *testing.T, admin string) int {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// TestDrainKeepsSidecarStream is issue 14's repro: a stream through the
// sidecar is in flight when the balancer gets SIGINT; while it drains, the
// sidecar's registrations are answered DRAINING several times (the old
// balancer removed the protocol, and the sidecar took two such failures
// for a dead link and dropped its connections, stream and all). The
// stream's second line still arrives, dial exits 0, and /readyz says 503
// from the start of the drain.
func TestDrainKeepsSidecarStream(t *testing.T) {
	t.Parallel()
	s := newWhoamiSetup(t)
	dKey, _ := proctest.KeyFile(t, s.dir, "d.key")
	if code := readyz(t, s.admin); code != http.StatusOK {
		t.Fatalf("/readyz before the drain: %d", code)
	}
	d := start(t, "dial", proctest.Options{Pipe: true}, "dial", "--identity", dKey, s.lbAddr, "/whoami/1.0.0")
	io.WriteString(d.Stdin, "first\n")
	d.WaitOutput(t, "first\n", 20*time.Second)

	s.lb.Signal(t, syscall.SIGINT)
	testnet.Eventually(t, 10*time.Second, func() bool { return readyz(t, s.admin) == http.StatusServiceUnavailable },
		"/readyz to say 503 once the drain starts")
	// Three answers: the old sidecar dropped its connections after two.
	testnet.Eventually(t, 30*time.Second, func() bool { return drainingAnswers(s.lb) >= 3 },
		"three registrations answered DRAINING")
	if s.lb.Exited() {
		t.Fatal("serve exited with a stream in flight")
	}
	if code := readyz(t, s.admin); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz during the drain: %d", code)
	}
	io.WriteString(d.Stdin, "second\n")
	d.Stdin.Close()
	if code := d.Wait(t, 20*time.Second); code != 0 {
		t.Fatalf("dial exited %d: %s", code, d.Stderr.String())
	}
	if out := d.Stdout.String(); !strings.HasSuffix(out, "first\nsecond\n") {
		t.Fatalf("dial printed %q, want whoami's greeting, then first and second", out)
	}
	if code := s.lb.Wait(t, 20*time.Second); code != 0 {
		t.Fatalf("serve exited %d after draining", code)
	}
}

// sidecarLines counts the lines the sidecar wrote at info level or above
// (the test runs it at debug, to see its attempts).
func sidecarLines(p *proctest.Proc) int {
	n := 0
	for _, l := range strings.Split(p.Stderr.String(), "\n") {
		if l != "" && !strings.Contains(l, "level=DEBUG") {
			n++
		}
	}
	return n
}

// TestSidecarLogsThroughDrainAndRestart: through a drain (with a stream in
// flight), the balancer down and its restart, the sidecar writes at most 5
// lines per state change, however many attempts it makes (issue 14 saw 60
// to 95 lines in half a second), and each says when it really retries.
func TestSidecarLogsThroughDrainAndRestart(t *testing.T) {
	t.Parallel()
	s := newWhoamiSetup(t, "--log-level", "debug")
	attempts := func() int { return strings.Count(s.sidecar.Stderr.String(), "registration failed again") }
	phase := func(name string, from int) int {
		t.Helper()
		n := sidecarLines(s.sidecar) - from
		t.Logf("%s: %d lines", name, n)
		if n > 5 {
			t.Fatalf("%s: the sidecar wrote %d lines, want at most 5:\n%s", name, n, s.sidecar.Stderr.String())
		}
		return from + n
	}
	mark := sidecarLines(s.sidecar)

	d := start(t, "dial", proctest.Options{Pipe: true}, "dial", s.lbAddr, "/whoami/1.0.0")
	io.WriteString(d.Stdin, "first\n")
	d.WaitOutput(t, "first\n", 20*time.Second)
	s.lb.Signal(t, syscall.SIGINT)
	testnet.Eventually(t, 30*time.Second, func() bool { return drainingAnswers(s.lb) >= 4 }, "four registrations answered DRAINING")
	d.Stdin.Close()
	if code := d.Wait(t, 20*time.Second); code != 0 {
		t.Fatalf("dial exited %d: %s", code, d.Stderr.String())
	}
	if code := s.lb.Wait(t, 20*time.Second); code != 0 {
		t.Fatalf("serve exited %d", code)
	}
	mark = phase("drain", mark)

	before := attempts()
	testnet.Eventually(t, 40*time.Second, func() bool { return attempts() >= before+2 }, "two more attempts while the balancer is down")
	mark = phase("down", mark)
	for _, l := range strings.Split(s.sidecar.Stderr.String(), "\n") {
		if strings.Contains(l, "\\n") || strings.Contains(l, "retry_in=30s") {
			t.Fatalf("a line with a literal \\n, or the back-off's bound rather than the real delay: %s", l)
		}
	}

	lb := start(t, "lb-again", proctest.Options{}, "serve", "--identity", s.lbKey, "--allow", s.allow, "--listen", s.listenTo, "--admin", "127.0.0.1:0")
	lb.Lines(t, 1, 20*time.Second)
	waitRoute(t, s.lbAddr, "/whoami/1.0.0", "again\n", "again\n")
	registered := strings.Count(s.sidecar.Stderr.String(), `msg=registered`)
	testnet.Eventually(t, 20*time.Second, func() bool {
		return strings.Count(s.sidecar.Stderr.String(), `msg=registered`) > registered
	}, "one more registration after the restart")
	phase("restart", mark)
}
