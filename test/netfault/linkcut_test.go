//go:build linux

package netfault_test

import (
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/libp2p-balancer/libp2p-balancer/internal/proctest"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
)

const cutProto = "/nf/echo/1.0.0"

// cutSetup is a balancer, a sidecar in front of an echo service in A, and a
// remote peer in D watching the balancer's identify, with the route
// registered.
type cutSetup struct {
	n       *netw
	lb      *balancerProc
	sidecar *proctest.Proc
	watcher *proctest.Proc
}

func newCutSetup(t *testing.T, tr testnet.Transport, ttl string) *cutSetup {
	t.Helper()
	n := newNet(t)
	dir := t.TempDir()
	aKey, aID := proctest.KeyFile(t, dir, "a.key")
	lb := n.serve(t, tr, dir+"/lb.key", "--allow", aID.String(), "--ttl-default", ttl)
	echo := n.startEcho(t)
	side := n.sidecar(t, aKey, lb.addr, "--route", cutProto+"="+echo.Addr)
	w := n.watcher(t, lb.addr, cutProto)
	w.Next(t, 30*time.Second, "served")
	return &cutSetup{n: n, lb: lb, sidecar: side, watcher: w}
}

// refused checks that a new stream from D on the protocol is refused at
// negotiation.
func (s *cutSetup) refused(t *testing.T) {
	t.Helper()
	res := s.n.dialD(t, []byte("x"), 30*time.Second, "--timeout", "10s", s.lb.addr, cutProto)
	if res.Code == 0 || !strings.Contains(res.Stderr, "protocols not supported") {
		t.Fatalf("a new stream while the route is down: dial exited %d, stderr %q; want it refused (protocols not supported)", res.Code, res.Stderr)
	}
}

// TestLinkCutWithinTTL: backend A's link is cut (its veth goes down: no
// packet passes, no side is told) and restored before its routes' TTL runs
// out. The balancer notices only when the connection's keepalive gives up
// (yamux over TCP: 30 s without a frame received, then a ping unanswered
// for 10 s; QUIC: its 30 s idle timeout, counted from the first packet the
// balancer sends into the silence, here the forward handshake of a new
// stream). Until then the protocol is still advertised, and a new stream is
// accepted and reset when its forward handshake with A times out. Then the
// balancer suspends A's routes: a remote peer sees the protocol leave
// identify, a new stream is refused, the stream D had open through A is
// reset, and the route is still in the table (suspended, not expired).
// Once the link is back the sidecar reconnects by itself and the routes
// resume without a new registration. Over QUIC that can take up to 15 s:
// the balancer's idle timeout closed the connection without a word, and the
// sidecar, whose own idle timeout runs later, keeps sending keep-alive PINGs
// on it that are too small to draw a stateless reset.
func TestLinkCutWithinTTL(t *testing.T) {
	t.Parallel()
	for _, tr := range testnet.Transports {
		t.Run(string(tr), func(t *testing.T) {
			t.Parallel()
			s := newCutSetup(t, tr, "3m")
			n, lb := s.n, s.lb

			// A stream in flight through A, which also shows that the
			// route works.
			long := startIn(t, n.nsD, bin, "dial-long", true, "dial", lb.addr, cutProto)
			io.WriteString(long.Stdin, "before the cut\n")
			testnet.Eventually(t, 20*time.Second, func() bool { return long.Stdout.String() == "before the cut\n" },
				"the stream in flight to echo")

			n.cut()
			cut := time.Now()
			// Until the balancer notices, the protocol is still advertised:
			// a new stream is accepted, offered to A, and fails when the
			// forward handshake times out (5 s by default).
			begin := time.Now()
			blind := n.dialD(t, []byte("during the cut"), 30*time.Second, "--timeout", "10s", lb.addr, cutProto)
			if blind.Code == 0 || !strings.Contains(blind.Stderr, "reset") {
				t.Fatalf("a new stream during the cut: dial exited %d, stderr %q; want it reset", blind.Code, blind.Stderr)
			}
			t.Logf("%s: a new stream during the cut was reset after %v", tr, time.Since(begin).Round(10*time.Millisecond))
			gone := at(t, s.watcher.Next(t, 70*time.Second, "unserved"))
			t.Logf("%s: the protocol left the balancer's identify %v after the cut", tr, gone.Sub(cut).Round(10*time.Millisecond))
			if r, ok := lb.route(t, cutProto); !ok || r.Connected {
				t.Fatalf("after the cut the balancer has route %+v (present: %v); want it present and suspended", r, ok)
			}
			if lb.CountErr("routes suspended") != 1 {
				t.Fatalf("the balancer did not log the suspension once:\n%s", lb.Stderr.String())
			}
			if code := long.Wait(t, 15*time.Second); code == 0 {
				t.Fatal("the stream in flight through the cut link ended cleanly; want it reset")
			}
			t.Logf("%s: D's stream in flight was reset %v after the cut", tr, long.Ended().Sub(cut).Round(10*time.Millisecond))
			s.refused(t)

			n.restore()
			restored := time.Now()
			back := at(t, s.watcher.Next(t, 30*time.Second, "served"))
			t.Logf("%s: the protocol was back in identify %v after the link came back", tr, back.Sub(restored).Round(10*time.Millisecond))
			if r, ok := lb.route(t, cutProto); !ok || !r.Connected {
				t.Fatalf("after the restore the balancer has route %+v (present: %v); want it resumed", r, ok)
			}
			if got := lb.CountErr("routes resumed"); got != 1 {
				t.Fatalf("the balancer logged %d resumptions, want 1:\n%s", got, lb.Stderr.String())
			}
			if got := lb.CountErr("routes changed"); got != 1 {
				t.Fatalf("the balancer logged %d route set changes, want 1 (the first registration; a resumption is not a new one):\n%s", got, lb.Stderr.String())
			}
			n.waitRoute(t, lb.addr, cutProto, 20*time.Second)
		})
	}
}

// TestLinkCutPastTTL: every packet to or from backend A is dropped (the
// router's "loss 100%" for A) for longer than its routes' TTL (2 s here),
// but not long enough for the keepalives to drop the connection. The routes expire: the protocol leaves identify within the
// TTL, a new stream is refused, and the route is gone from the table. The
// sidecar keeps trying (each attempt times out after 5 s, then backs off);
// once the link is back, its next attempt registers the routes again
// without anyone's help.
func TestLinkCutPastTTL(t *testing.T) {
	t.Parallel()
	for _, tr := range testnet.Transports {
		t.Run(string(tr), func(t *testing.T) {
			t.Parallel()
			s := newCutSetup(t, tr, "2s")
			n, lb := s.n, s.lb
			n.waitRoute(t, lb.addr, cutProto, 30*time.Second)

			n.router.isolate(netip.MustParseAddr(addrA))
			cut := time.Now()
			gone := at(t, s.watcher.Next(t, 20*time.Second, "unserved"))
			t.Logf("%s: the protocol left the balancer's identify %v after the cut (TTL 2s)", tr, gone.Sub(cut).Round(10*time.Millisecond))
			if r, ok := lb.route(t, cutProto); ok {
				t.Fatalf("after the TTL the balancer still has route %+v; want it expired", r)
			}
			if lb.CountErr("route expired") != 1 {
				t.Fatalf("the balancer did not log the expiry:\n%s", lb.Stderr.String())
			}
			s.refused(t)
			// The sidecar has noticed, and retries on its own.
			testnet.Eventually(t, 30*time.Second, func() bool { return s.sidecar.CountErr("registration failed") > 0 },
				"the sidecar to log a failed registration")

			n.router.isolate(netip.Addr{})
			restored := time.Now()
			back := at(t, s.watcher.Next(t, 30*time.Second, "served"))
			t.Logf("%s: the protocol was back in identify %v after the link came back", tr, back.Sub(restored).Round(10*time.Millisecond))
			if got := lb.CountErr("routes changed"); got != 2 {
				t.Fatalf("the balancer logged %d route set changes, want 2 (the registration, then the new one after the expiry):\n%s", got, lb.Stderr.String())
			}
			if lb.CountErr("routes suspended") != 0 {
				t.Fatalf("the connection was dropped during a cut shorter than the keepalive:\n%s", lb.Stderr.String())
			}
			n.waitRoute(t, lb.addr, cutProto, 20*time.Second)
		})
	}
}
