//go:build linux

package netfault_test

import (
	"syscall"
	"testing"
	"time"

	"github.com/libp2p-balancer/libp2p-balancer/internal/proctest"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
)

// TestBalancerProcessRestart: the balancer process is stopped and started
// again with the same identity and address while a sidecar is registered;
// the sidecar registers again by itself and new streams from a remote peer
// flow.
//
// Stopped with SIGTERM, the balancer closes its connections, the sidecar
// notices at once and is registered again within a second of the restart.
// Killed with SIGKILL, it says nothing: over TCP the kernel closes the
// sockets, so that is just as fast; over QUIC nothing tells the sidecar,
// which finds out when it next sends a packet large enough to be answered
// with a stateless reset (keep-alive PINGs are too small to be), which is
// its route extension at half the TTL (30 s with the default TTL of 1 m),
// or else when QUIC's idle timeout ends.
func TestBalancerProcessRestart(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		tr     testnet.Transport
		sig    syscall.Signal
		within time.Duration // how soon the sidecar must have registered again
	}{
		{testnet.TCP, syscall.SIGTERM, 5 * time.Second},
		{testnet.TCP, syscall.SIGKILL, 5 * time.Second},
		{testnet.QUIC, syscall.SIGTERM, 5 * time.Second},
		{testnet.QUIC, syscall.SIGKILL, 30*time.Second + 10*time.Second},
	} {
		name := string(c.tr) + "/" + map[syscall.Signal]string{syscall.SIGTERM: "stop", syscall.SIGKILL: "kill"}[c.sig]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			n := newNet(t)
			dir := t.TempDir()
			aKey, aID := proctest.KeyFile(t, dir, "a.key")
			lbKey := dir + "/lb.key"
			lb := n.serve(t, c.tr, lbKey, "--allow", aID.String())
			echo := n.startEcho(t)
			n.sidecar(t, aKey, lb.addr, "--route", cutProto+"="+echo.Addr)
			n.waitRoute(t, lb.addr, cutProto, 30*time.Second)

			if err := lb.Cmd.Process.Signal(c.sig); err != nil {
				t.Fatal(err)
			}
			lb.Wait(t, 20*time.Second)
			again := n.serve(t, c.tr, lbKey, "--allow", aID.String())
			started := time.Now()
			if again.addr != lb.addr {
				t.Fatalf("the restarted balancer prints %s, want %s", again.addr, lb.addr)
			}
			testnet.Eventually(t, c.within, func() bool { return again.CountErr("routes changed") > 0 },
				"the sidecar to register with the restarted balancer")
			registered := time.Since(started)
			n.waitRoute(t, again.addr, cutProto, 20*time.Second)
			t.Logf("%s: the sidecar registered again %v after the balancer restarted; a new stream flowed %v after",
				name, registered.Round(10*time.Millisecond), time.Since(started).Round(10*time.Millisecond))
		})
	}
}
