//go:build linux

package netfault_test

import (
	"context"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p-balancer/libp2p-balancer/internal/proctest"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
)

// TestLatencyAndLoss: with 50 ms of round-trip time and 1% packet loss on
// every link (remote peer D to the balancer, the balancer to backend A),
// streams in both directions arrive byte-exact: D's streams to A's service
// through the balancer (inbound), and connections to the sidecar's outbound
// listener carried to D through the balancer (outbound). Each payload is
// checked by SHA-256 where it lands and again after its echo returns.
func TestLatencyAndLoss(t *testing.T) {
	t.Parallel()
	for _, tr := range testnet.Transports {
		t.Run(string(tr), func(t *testing.T) {
			t.Parallel()
			testLatencyAndLoss(t, tr)
		})
	}
}

const (
	oneWayDelay = 25 * time.Millisecond
	lossRate    = 0.01
	// streamsEachWay streams of payloadSize bytes go each way at once.
	streamsEachWay = 2
	payloadSize    = 512 << 10
)

func testLatencyAndLoss(t *testing.T, tr testnet.Transport) {
	n := newNet(t)
	n.router.impair(oneWayDelay, lossRate)
	if rtt := n.measureRTT(t); rtt < 2*oneWayDelay || rtt > 2*oneWayDelay+time.Second {
		t.Fatalf("a TCP handshake between D and A took %v; the router should make it about %v", rtt, 2*oneWayDelay)
	}

	dir := t.TempDir()
	aKey, aID := proctest.KeyFile(t, dir, "a.key")
	const in, out = "/nf/in/1.0.0", "/nf/out/1.0.0"
	d := startIn(t, n.nsD, remoteBin, "remote-d", false, "--listen", listenAddr(tr, addrD, 4002), "--echo", out)
	dAddr := strings.TrimPrefix(d.Lines(t, 1, 30*time.Second)[0], "addr ")
	// D is on the namespaces' private network (10.77.1.2), which the
	// default dial policy refuses for outbound streams.
	lb := n.serve(t, tr, dir+"/lb.key", "--allow", aID.String(), "--dial-private")
	echo := n.startEcho(t)
	side := n.sidecar(t, aKey, lb.addr, "--route", in+"="+echo.Addr, "--outbound", "127.0.0.1:0="+dAddr+out)
	outAddr := side.Lines(t, 1, 30*time.Second)[0]
	n.waitRoute(t, lb.addr, in, 30*time.Second)
	drain(echo.Got) // the probes'
	passed, dropped := n.router.passed.Load(), n.router.dropped.Load()

	begin := time.Now()
	var wg sync.WaitGroup
	inbound := make([]proctest.Result, streamsEachWay)
	outbound := make([][]byte, streamsEachWay)
	outErr := make([]error, streamsEachWay)
	payloads := make([][]byte, 2*streamsEachWay)
	for i := range payloads {
		payloads[i] = randomBytes(payloadSize)
	}
	for i := range streamsEachWay {
		wg.Add(2)
		go func() {
			defer wg.Done()
			inbound[i] = n.dialD(t, payloads[i], 90*time.Second, "--timeout", "30s", lb.addr, in)
		}()
		go func() {
			defer wg.Done()
			outbound[i], outErr[i] = n.roundTrip(n.nsA, outAddr, payloads[streamsEachWay+i], 90*time.Second)
		}()
	}
	wg.Wait()
	took := time.Since(begin)

	// Inbound: what A's service received, and what D got back.
	var landed []testnet.Digest
	for range streamsEachWay {
		select {
		case g := <-echo.Got:
			landed = append(landed, g)
		case <-time.After(10 * time.Second):
			t.Fatal("A's service did not report every inbound stream")
		}
	}
	for i, res := range inbound {
		want := testnet.DigestOf(payloads[i])
		if res.Code != 0 || res.Stdout != string(payloads[i]) {
			t.Errorf("inbound stream %d: dial exited %d, got back %v, want %v; stderr %q", i, res.Code, testnet.DigestOf([]byte(res.Stdout)), want, res.Stderr)
		}
		if !containsDigest(landed, want) {
			t.Errorf("inbound stream %d: A's service received none of %v; it received %v", i, want, landed)
		}
	}
	// Outbound: what D received, and what came back to A's client.
	var atD []testnet.Digest
	for range streamsEachWay {
		f := d.Next(t, 10*time.Second, "echo")
		if len(f) != 4 {
			t.Fatalf("D reports %q", strings.Join(f, " "))
		}
		atD = append(atD, testnet.Digest{N: parseInt(t, f[2]), Sum: f[3]})
	}
	for i, got := range outbound {
		want := testnet.DigestOf(payloads[streamsEachWay+i])
		if outErr[i] != nil || testnet.DigestOf(got) != want {
			t.Errorf("outbound stream %d: %v; got back %v, want %v", i, outErr[i], testnet.DigestOf(got), want)
		}
		if !containsDigest(atD, want) {
			t.Errorf("outbound stream %d: D received none of %v; it received %v", i, want, atD)
		}
	}
	p, l := n.router.passed.Load()-passed, n.router.dropped.Load()-dropped
	t.Logf("%s: %d streams of %d KiB each way, echoed, in %v; the router passed %d packets and dropped %d (%.2f%%)",
		tr, streamsEachWay, payloadSize>>10, took.Round(time.Millisecond), p, l, 100*float64(l)/float64(p+l))
	if l == 0 {
		t.Fatalf("the router dropped no packet out of %d: the loss was not injected", p)
	}
}

// measureRTT times a TCP handshake from D to a listener in A, which takes
// one round trip through the router.
func (n *netw) measureRTT(t *testing.T) time.Duration {
	t.Helper()
	l := n.listen(n.nsA, addrA+":0")
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var best time.Duration
	for range 3 { // a lost SYN costs a second; take the best of three
		begin := time.Now()
		c, err := dialIn(ctx, n.nsD, "tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		took := time.Since(begin)
		c.Close()
		if best == 0 || took < best {
			best = took
		}
	}
	l.Close()
	return best
}

// roundTrip connects to addr from ns, sends payload, half-closes, and
// returns everything read until EOF.
func (n *netw) roundTrip(ns, addr string, payload []byte, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := dialIn(ctx, ns, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	sent := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		sent <- err
	}()
	got, err := io.ReadAll(c)
	if serr := <-sent; err == nil {
		err = serr
	}
	return got, err
}

func randomBytes(n int) []byte {
	var seed [32]byte
	for i := range seed {
		seed[i] = byte(rand.Uint32())
	}
	b := make([]byte, n)
	rand.NewChaCha8(seed).Read(b)
	return b
}

// drain empties c.
func drain(c chan testnet.Digest) {
	for {
		select {
		case <-c:
		default:
			return
		}
	}
}

func containsDigest(list []testnet.Digest, d testnet.Digest) bool {
	for _, x := range list {
		if x == d {
			return true
		}
	}
	return false
}
