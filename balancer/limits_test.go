package balancer_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// holdHandler keeps every stream open until the test ends.
func holdHandler(t *testing.T) network.StreamHandler {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	return func(s network.Stream) {
		<-release
		s.Reset()
	}
}

// openHeld opens a stream on proto from d, writes a byte, and reports the
// stream reset code within a short wait: nil if the stream is still open.
func openHeld(t *testing.T, d host.Host, lbHost host.Host, proto protocol.ID) (network.Stream, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := d.NewStream(ctx, lbHost.ID(), proto)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { s.Reset() })
	if _, err := s.Write([]byte{1}); err != nil {
		return s, err
	}
	// A refused stream is reset at once; an accepted one stays silent.
	_ = s.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	_, err = s.Read(make([]byte, 1))
	_ = s.SetReadDeadline(time.Time{})
	if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		return s, nil
	}
	return s, err
}

func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

func resetCode(err error) network.StreamErrorCode {
	var se *network.StreamError
	if errors.As(err, &se) {
		return se.ErrorCode
	}
	return 0
}

// TestInboundLimits: the per-peer, rate and balancer-wide limits each
// refuse with their reset code, while other peers are served.
func TestInboundLimits(t *testing.T) {
	const held, echoed protocol.ID = "/test/held", "/test/echo"
	setup := func(t *testing.T, l balancer.Limits) (*lbtest.Fixture, host.Host, host.Host) {
		a := lbtest.NewIdentity(t)
		f := lbtest.New(t, testnet.TCP, []lbtest.Identity{a}, balancer.WithLimits(l))
		be, _ := f.NewBackend(a, map[protocol.ID]network.StreamHandler{held: holdHandler(t), echoed: testnet.Echo})
		lbtest.WaitRegistered(t, be, held, echoed)
		d1, d2 := f.NewPeer(), f.NewPeer()
		lbtest.WaitServed(t, d1, f.Host.ID(), true, held)
		lbtest.WaitServed(t, d2, f.Host.ID(), true, held)
		return f, d1, d2
	}
	t.Run("per peer", func(t *testing.T) {
		f, d1, d2 := setup(t, balancer.Limits{StreamsPerPeer: 2})
		for i := 0; i < 2; i++ {
			if _, err := openHeld(t, d1, f.Host, held); err != nil {
				t.Fatalf("stream %d within the limit: %v", i, err)
			}
		}
		_, err := openHeld(t, d1, f.Host, held)
		if resetCode(err) != network.StreamResourceLimitExceeded {
			t.Fatalf("third stream of one peer: %v, want a reset with code resource limit exceeded", err)
		}
		if err := f.EchoOnce(d2, echoed, []byte("other peer")); err != nil {
			t.Fatalf("another peer meanwhile: %v", err)
		}
	})
	t.Run("rate", func(t *testing.T) {
		f, d1, d2 := setup(t, balancer.Limits{NewStreamsPerSecondPerPeer: 5})
		var refused error
		for i := 0; i < 20 && refused == nil; i++ {
			if err := f.EchoOnce(d1, echoed, []byte("burst")); err != nil {
				refused = err
			}
		}
		if resetCode(refused) != network.StreamRateLimited {
			t.Fatalf("a burst of 20 streams at 5/s: %v, want a reset with code rate limited", refused)
		}
		if err := f.EchoOnce(d2, echoed, []byte("other peer")); err != nil {
			t.Fatalf("another peer meanwhile: %v", err)
		}
	})
	t.Run("balancer-wide", func(t *testing.T) {
		f, d1, d2 := setup(t, balancer.Limits{Streams: 2})
		for i := 0; i < 2; i++ {
			if _, err := openHeld(t, d1, f.Host, held); err != nil {
				t.Fatalf("stream %d within the limit: %v", i, err)
			}
		}
		_, err := openHeld(t, d2, f.Host, held)
		if resetCode(err) != network.StreamResourceLimitExceeded {
			t.Fatalf("third stream on the balancer: %v, want a reset with code resource limit exceeded", err)
		}
	})
	t.Run("per backend", func(t *testing.T) {
		f, d1, d2 := setup(t, balancer.Limits{StreamsPerBackend: 1})
		if _, err := openHeld(t, d1, f.Host, held); err != nil {
			t.Fatalf("first stream: %v", err)
		}
		_, err := openHeld(t, d2, f.Host, held)
		if resetCode(err) != network.StreamResourceLimitExceeded {
			t.Fatalf("second stream to a backend at its cap: %v, want a reset with code resource limit exceeded", err)
		}
	})
}

// TestBackendLimits: limits on what one backend may do refuse with
// RESOURCE_LIMIT_EXCEEDED and a text, and others are served meanwhile.
func TestBackendLimits(t *testing.T) {
	a, b := lbtest.NewIdentity(t), lbtest.NewIdentity(t)
	f := lbtest.New(t, testnet.TCP, []lbtest.Identity{a, b}, balancer.WithLimits(balancer.Limits{ProtocolsPerRequest: 3, RoutesPerBackend: 4, OutboundPerBackend: 1}), loopbackTargets)
	lbID := f.Host.ID()
	ah := testnet.NewHost(t, testnet.TCP, testnet.Options{Key: a.Key, LinkPeers: []peer.ID{lbID}})
	testnet.Connect(t, ah, f.Host)
	resp := lbtest.RawRequest(t, ah, lbID, &pb.RoutingRequest{Protocols: []string{"/1", "/2", "/3", "/4"}})
	if resp.Status != pb.Status_RESOURCE_LIMIT_EXCEEDED || resp.Text == "" {
		t.Fatalf("4 protocols in one request, limit 3: %v", resp)
	}
	for _, ps := range [][]string{{"/1", "/2", "/3"}, {"/4"}} {
		if resp := lbtest.RawRequest(t, ah, lbID, &pb.RoutingRequest{Protocols: ps}); resp.Status != pb.Status_OK {
			t.Fatalf("within the limits: %v", resp)
		}
	}
	if resp := lbtest.RawRequest(t, ah, lbID, &pb.RoutingRequest{Protocols: []string{"/5"}}); resp.Status != pb.Status_RESOURCE_LIMIT_EXCEEDED {
		t.Fatalf("a fifth route, limit 4: %v", resp)
	}

	// Outbound: one in flight per backend.
	e := testnet.NewHost(t, testnet.TCP, testnet.Options{})
	e.SetStreamHandler("/held", holdHandler(t))
	e.SetStreamHandler("/echo", testnet.Echo)
	ba, bah := f.NewBackend(a, nil)
	bb, bbh := f.NewBackend(b, nil)
	for _, h := range []host.Host{bah, bbh} {
		h.Peerstore().AddAddrs(e.ID(), e.Addrs(), time.Hour)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	first, err := ba.NewStream(ctx, e.ID(), "/held")
	if err != nil {
		t.Fatal(err)
	}
	defer first.Reset()
	_, err = ba.NewStream(ctx, e.ID(), "/echo")
	var se *wire.StatusError
	if !errors.As(err, &se) || se.Status != pb.Status_RESOURCE_LIMIT_EXCEEDED {
		t.Fatalf("second outbound stream of one backend: %v, want RESOURCE_LIMIT_EXCEEDED", err)
	}
	s, err := bb.NewStream(ctx, e.ID(), "/echo")
	if err != nil {
		t.Fatalf("another backend meanwhile: %v", err)
	}
	testnet.CheckRoundTrip(t, s, []byte("fine"))
}
