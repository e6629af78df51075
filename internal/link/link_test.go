package link_test

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"

	"github.com/libp2p-balancer/libp2p-balancer/internal/link"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
)

// pair starts a server host over tr and n client hosts, each connected to
// it once, and returns the server and the client side of each connection.
// The clients have no resource limits: the stream caps of the transports
// are what the tests look at. The server echoes wire.ForwardID streams.
func pair(t *testing.T, tr testnet.Transport, n int) (host.Host, []network.Conn) {
	t.Helper()
	srv := testnet.NewHost(t, tr, testnet.Options{Unlimited: true})
	srv.SetStreamHandler(wire.ForwardID, testnet.Echo)
	var conns []network.Conn
	for range n {
		c := testnet.NewHost(t, tr, testnet.Options{Unlimited: true, NoListen: true})
		testnet.Connect(t, c, srv)
		cs := c.Network().ConnsToPeer(srv.ID())
		if len(cs) != 1 {
			t.Fatalf("%d connections from a client, want 1", len(cs))
		}
		conns = append(conns, cs[0])
		// Identify's streams come and go right after the connection is
		// up; the tests count streams, so they start once those ended.
		testnet.Eventually(t, 10*time.Second, func() bool { return cs[0].Stat().NumStreams == 0 },
			"identify's streams to end (%d open)", cs[0].Stat().NumStreams)
	}
	return srv, conns
}

// outbound counts this side's open streams on c.
func outbound(c network.Conn) int {
	n := 0
	for _, s := range c.GetStreams() {
		if s.Stat().Direction == network.DirOutbound {
			n++
		}
	}
	return n
}

func open(t *testing.T, o *link.Opener, conns []network.Conn) network.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := o.Open(ctx, func() []network.Conn { return conns }, wire.ForwardID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Reset() })
	return s
}

// TestStreamCap: QUIC connections are capped at 256 streams this side may
// open; TCP (yamux) connections have no fixed cap.
func TestStreamCap(t *testing.T) {
	for tr, want := range map[testnet.Transport]int{testnet.QUIC: 256, testnet.TCP: 0} {
		_, conns := pair(t, tr, 1)
		if got := link.StreamCap(conns[0]); got != want {
			t.Errorf("StreamCap of a %s connection = %d, want %d", tr, got, want)
		}
	}
}

// TestOpenPicksMostRoom: the Opener puts each new stream on the connection
// with the most room, so a connection that already carries streams is
// passed over until the other has as many. (Room is first counted with the
// streams of both directions, see TestOpenCountsOwnStreamsWhenFull.)
func TestOpenPicksMostRoom(t *testing.T) {
	testnet.EachTransport(t, func(t *testing.T, tr testnet.Transport) {
		_, conns := pair(t, tr, 2)
		busy, free := conns[0], conns[1]
		// Four streams on busy, opened directly, not through the Opener.
		for range 4 {
			s, err := busy.NewStream(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Reset() })
		}
		var o link.Opener
		for i := range 4 {
			if s := open(t, &o, conns); s.Conn() != free {
				t.Fatalf("stream %d went on the connection with %d streams, not the one with %d", i, outbound(busy), outbound(free)-1)
			}
		}
		// Level now: the next two go one on each.
		a, b := open(t, &o, conns), open(t, &o, conns)
		if a.Conn() == b.Conn() {
			t.Fatalf("two streams on level connections both went on one (%d and %d streams)", outbound(busy), outbound(free))
		}
	})
}

// TestOpenWaitsAtQUICCap: with 256 streams open on the only QUIC
// connection, Open waits for room until its context ends; once a stream
// ends, Open succeeds again.
func TestOpenWaitsAtQUICCap(t *testing.T) {
	_, conns := pair(t, testnet.QUIC, 1)
	var o link.Opener
	streams := make([]network.Stream, 256)
	for i := range streams {
		streams[i] = open(t, &o, conns)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if s, err := o.Open(ctx, func() []network.Conn { return conns }, wire.ForwardID); !errors.Is(err, context.DeadlineExceeded) {
		if s != nil {
			s.Reset()
		}
		t.Fatalf("Open at the cap = %v, want it to wait until context.DeadlineExceeded", err)
	}
	streams[0].Reset()
	open(t, &o, conns)
}

// TestOpenNoConnection: with no connection at all Open fails at once
// rather than wait (backends dial the balancer, not the other way round).
func TestOpenNoConnection(t *testing.T) {
	var o link.Opener
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := o.Open(ctx, func() []network.Conn { return nil }, wire.ForwardID)
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Open with no connection = %v, want an error at once", err)
	}
}

// TestOpenNegotiatesLazily: a stream from Open carries data both ways on a
// protocol the peer speaks and reports that protocol; on one it does not
// speak, Open still returns, and the refusal shows on the first read.
func TestOpenNegotiatesLazily(t *testing.T) {
	testnet.EachTransport(t, func(t *testing.T, tr testnet.Transport) {
		srv, conns := pair(t, tr, 1)
		var o link.Opener
		s := open(t, &o, conns)
		if s.Protocol() != wire.ForwardID || s.Conn().RemotePeer() != srv.ID() {
			t.Fatalf("stream on %s to %s, want %s to %s", s.Protocol(), s.Conn().RemotePeer(), wire.ForwardID, srv.ID())
		}
		testnet.CheckRoundTrip(t, s, []byte("negotiated with the first write"))

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		bad, err := o.Open(ctx, func() []network.Conn { return conns }, "/not/spoken")
		if err != nil {
			t.Fatalf("Open on a protocol the peer does not speak failed before any I/O: %v", err)
		}
		defer bad.Reset()
		_ = bad.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = bad.Write([]byte("x"))
		if _, err := io.ReadAll(bad); err == nil {
			t.Fatal("reading a stream on a protocol the peer does not speak succeeded")
		}
	})
}

// TestOpenCountsOwnStreamsWhenFull: a QUIC connection that carries 256
// streams the *other* side opened still has room for 256 of this side's
// (the cap is per direction). The Opener's cheap count, all streams on the
// connection, says it is full; Open must then count exactly and use it
// rather than wait for room.
func TestOpenCountsOwnStreamsWhenFull(t *testing.T) {
	const proto = "/test/held"
	srv := testnet.NewHost(t, testnet.QUIC, testnet.Options{Unlimited: true})
	srv.SetStreamHandler(wire.ForwardID, testnet.Echo)
	cli := testnet.NewHost(t, testnet.QUIC, testnet.Options{Unlimited: true, NoListen: true})
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	cli.SetStreamHandler(proto, func(s network.Stream) { <-release; s.Reset() })
	testnet.Connect(t, cli, srv)
	cs := cli.Network().ConnsToPeer(srv.ID())
	if len(cs) != 1 {
		t.Fatalf("%d connections, want 1", len(cs))
	}
	for range 256 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s, err := srv.NewStream(ctx, cli.ID(), proto)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Write([]byte{1}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Reset() })
	}
	testnet.Eventually(t, 10*time.Second, func() bool { return cs[0].Stat().NumStreams >= 256 },
		"the client to see the server's 256 streams (%d)", cs[0].Stat().NumStreams)
	o := link.Opener{FullWait: 2 * time.Second}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := o.Open(ctx, func() []network.Conn { return cs }, wire.ForwardID)
	if err != nil {
		t.Fatalf("open on a connection full of the other side's streams: %v", err)
	}
	defer s.Reset()
	if _, err := s.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = s.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [1]byte
	if _, err := io.ReadFull(s, b[:]); err != nil || b[0] != 'x' {
		t.Fatalf("echo: %q, %v", b, err)
	}
}
