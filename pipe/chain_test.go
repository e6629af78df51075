package pipe_test

import (
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"

	"github.com/libp2p-balancer/libp2p-balancer/pipe"
)

const (
	frontProto = "/pipe-test/front/1.0.0" // A → M
	backProto  = "/pipe-test/back/1.0.0"  // M → B

	// waitFor bounds every wait in these tests. It is long because -race on
	// two busy cores is slow; the tests pass in far less. (20 s was cut
	// short once: TestRoundTrip/quic/16MiB under -race at load average 36.)
	waitFor = 60 * time.Second
)

// transport is one libp2p transport the chain can run over.
type transport struct {
	name   string
	listen string
	opt    libp2p.Option
}

var transports = []transport{
	{"tcp", "/ip4/127.0.0.1/tcp/0", libp2p.Transport(tcp.NewTCPTransport)},
	{"quic", "/ip4/127.0.0.1/udp/0/quic-v1", libp2p.Transport(libp2pquic.NewTransport)},
}

// forwarder is what M does with the stream from A and the stream it opened
// to B. The tests use pipe.Join; the benchmarks also compare others.
type forwarder func(fromA, toB network.Stream) pipe.Result

func joinWith(cfg *pipe.Config) forwarder {
	return func(a, b network.Stream) pipe.Result { return pipe.Join(a, b, cfg) }
}

// chain is three hosts A — M — B. A stream A opens to M on frontProto makes
// M open a stream to B on backProto and forward between the two.
type chain struct {
	A, M, B host.Host
	// results gets what M's forwarder returned, one per forwarded stream.
	results chan pipe.Result
	// backs gets B's end of each forwarded stream.
	backs chan network.Stream
}

func newHost(tb testing.TB, tr transport) host.Host {
	tb.Helper()
	h, err := libp2p.New(
		libp2p.ListenAddrStrings(tr.listen),
		tr.opt,
		// Every forwarded stream comes from one peer on one protocol; the
		// default limits would stop the idle-memory benchmark at ~64.
		libp2p.ResourceManager(&network.NullResourceManager{}),
		libp2p.DisableMetrics(),
	)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = h.Close() })
	return h
}

func newChain(tb testing.TB, tr transport, fwd forwarder) *chain {
	tb.Helper()
	c := &chain{
		A:       newHost(tb, tr),
		M:       newHost(tb, tr),
		B:       newHost(tb, tr),
		results: make(chan pipe.Result, 4096),
		backs:   make(chan network.Stream, 4096),
	}
	c.B.SetStreamHandler(backProto, func(s network.Stream) { c.backs <- s })
	c.M.SetStreamHandler(frontProto, func(s network.Stream) {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		toB, err := c.M.NewStream(ctx, c.B.ID(), backProto)
		if err != nil {
			_ = s.Reset()
			c.results <- pipe.Result{Err: err}
			return
		}
		c.results <- fwd(s, toB)
	})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := c.A.Connect(ctx, peer.AddrInfo{ID: c.M.ID(), Addrs: c.M.Addrs()}); err != nil {
		tb.Fatal(err)
	}
	if err := c.M.Connect(ctx, peer.AddrInfo{ID: c.B.ID(), Addrs: c.B.Addrs()}); err != nil {
		tb.Fatal(err)
	}
	return c
}

// open opens a stream from A to M. M only learns of it, and only then opens
// the stream to B, once A writes or closes (lazy multistream negotiation).
func (c *chain) open(tb testing.TB) network.Stream {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	s, err := c.A.NewStream(ctx, c.M.ID(), frontProto)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = s.Reset() })
	setTestDeadline(tb, s)
	return s
}

// setTestDeadline makes a stuck test fail instead of hanging. Benchmarks
// go without: yamux deadlines cost a timer per stream.
func setTestDeadline(tb testing.TB, s network.Stream) {
	if _, ok := tb.(*testing.T); ok {
		_ = s.SetDeadline(time.Now().Add(waitFor))
	}
}

// back returns B's end of the next forwarded stream.
func (c *chain) back(tb testing.TB) network.Stream {
	tb.Helper()
	select {
	case s := <-c.backs:
		tb.Cleanup(func() { _ = s.Reset() })
		setTestDeadline(tb, s)
		return s
	case <-time.After(waitFor):
		tb.Fatal("no stream reached B")
		return nil
	}
}

// result returns what M's forwarder returned for the next stream to end.
func (c *chain) result(tb testing.TB) pipe.Result {
	tb.Helper()
	select {
	case r := <-c.results:
		return r
	case <-time.After(waitFor):
		tb.Fatal("forwarder did not return")
		return pipe.Result{}
	}
}

// openEstablished opens a forwarded stream and moves one byte each way, so
// that both multistream negotiations are done and both directions of the
// Join are waiting in Read. The Result then counts one byte each way.
func (c *chain) openEstablished(tb testing.TB) (a, b network.Stream) {
	tb.Helper()
	a = c.open(tb)
	mustWrite(tb, a, []byte{'>'})
	b = c.back(tb)
	mustReadByte(tb, b, '>')
	mustWrite(tb, b, []byte{'<'})
	mustReadByte(tb, a, '<')
	return a, b
}

func mustWrite(tb testing.TB, s network.Stream, p []byte) {
	tb.Helper()
	if _, err := s.Write(p); err != nil {
		tb.Fatal(err)
	}
}

func mustReadByte(tb testing.TB, s network.Stream, want byte) {
	tb.Helper()
	var buf [1]byte
	if _, err := io.ReadFull(s, buf[:]); err != nil {
		tb.Fatal(err)
	}
	if buf[0] != want {
		tb.Fatalf("read %q, want %q", buf[0], want)
	}
}

// readErr waits for a Read on s to fail and returns its error; a deadline
// or a successful read is a test failure.
func readErr(tb testing.TB, s network.Stream) error {
	tb.Helper()
	_ = s.SetReadDeadline(time.Now().Add(waitFor))
	var buf [64]byte
	for {
		n, err := s.Read(buf[:])
		if n > 0 {
			tb.Fatalf("unexpected %d bytes read", n)
		}
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			tb.Fatalf("read did not fail within %v: %v", waitFor, err)
		}
		return err
	}
}

// pipeGoroutines counts live goroutines with a frame in package pipe, and
// those started by pipe.Join.
func pipeGoroutines() (inPipe, startedByJoin int) {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	const pkg = "github.com/libp2p-balancer/libp2p-balancer/pipe."
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "\n"+pkg) {
			inPipe++
		}
		if strings.Contains(g, "\ncreated by "+pkg+"Join") {
			startedByJoin++
		}
	}
	return inPipe, startedByJoin
}

// waitNoPipeGoroutines polls until no goroutine runs code of package pipe.
func waitNoPipeGoroutines(tb testing.TB) {
	tb.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		n, _ := pipeGoroutines()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%d goroutines still in package pipe", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
