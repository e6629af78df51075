package balancer_test

import (
	"context"
	"io"
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

// rawBackend is a backend driven by hand: it registers with explicit
// requests and accepts every forward stream, then echoes.
func rawBackend(t *testing.T, f *lbtest.Fixture, who lbtest.Identity) host.Host {
	t.Helper()
	h := testnet.NewHost(t, f.Transport, testnet.Options{Key: who.Key, LinkPeers: []peer.ID{f.Host.ID()}, NoListen: true})
	h.SetStreamHandler(wire.ForwardID, func(s network.Stream) {
		var req pb.Forward
		if err := wire.NewReader(s).ReadMsg(&req); err != nil {
			s.Reset()
			return
		}
		if err := wire.WriteMsg(s, &pb.ForwardResponse{Status: pb.Status_OK, Protocol: req.Protocols[0]}); err != nil {
			s.Reset()
			return
		}
		testnet.Echo(s)
	})
	testnet.Connect(t, h, f.Host)
	return h
}

// TestSuspendAndResume: when the balancer loses its last connection to a
// backend, the backend's protocols leave identify at once; when it
// reconnects within the TTL they come back without a new registration.
func TestSuspendAndResume(t *testing.T) {
	testnet.EachTransport(t, func(t *testing.T, tr testnet.Transport) {
		a := lbtest.NewIdentity(t)
		f := lbtest.New(t, tr, []lbtest.Identity{a})
		ah := rawBackend(t, f, a)
		const proto protocol.ID = "/test/suspend"
		if resp := lbtest.RawRequest(t, ah, f.Host.ID(), &pb.RoutingRequest{Protocols: []string{string(proto)}, TtlSeconds: 60}); resp.Status != pb.Status_OK {
			t.Fatalf("register: %v", resp)
		}
		d := f.NewPeer()
		lbtest.WaitServed(t, d, f.Host.ID(), true, proto)
		openAndEcho(t, d, f.Host.ID(), proto, []byte("before"))

		if err := ah.Network().ClosePeer(f.Host.ID()); err != nil {
			t.Fatal(err)
		}
		lbtest.WaitServed(t, d, f.Host.ID(), false, proto)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if s, err := d.NewStream(ctx, f.Host.ID(), proto); err == nil {
			// Lazy negotiation: the refusal shows on the first read.
			_, err = io.ReadAll(s)
			if err == nil {
				t.Fatal("a suspended protocol was accepted")
			}
		}

		testnet.Connect(t, ah, f.Host)
		lbtest.WaitServed(t, d, f.Host.ID(), true, proto)
		openAndEcho(t, d, f.Host.ID(), proto, []byte("after"))
	})
}

// TestExpiryKeepsStreams: a route that expires stops new streams but never
// cuts one already forwarded.
func TestExpiryKeepsStreams(t *testing.T) {
	a := lbtest.NewIdentity(t)
	f := lbtest.New(t, testnet.TCP, []lbtest.Identity{a}, balancer.WithTTL(time.Second, time.Minute))
	ah := rawBackend(t, f, a)
	const proto protocol.ID = "/test/expiring"
	if resp := lbtest.RawRequest(t, ah, f.Host.ID(), &pb.RoutingRequest{Protocols: []string{string(proto)}, TtlSeconds: 1}); resp.Status != pb.Status_OK {
		t.Fatalf("register: %v", resp)
	}
	d := f.NewPeer()
	lbtest.WaitServed(t, d, f.Host.ID(), true, proto)
	s, err := d.NewStream(context.Background(), f.Host.ID(), proto)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte("first half, ")); err != nil {
		t.Fatal(err)
	}
	lbtest.WaitServed(t, d, f.Host.ID(), false, proto)
	if f.LB.ActiveStreams() != 1 {
		t.Fatalf("active streams after expiry: %d, want 1", f.LB.ActiveStreams())
	}
	if _, err := s.Write([]byte("second half")); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	_ = s.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(s)
	if err != nil || string(got) != "first half, second half" {
		t.Fatalf("stream across expiry: %q, %v", got, err)
	}
}

// TestProbeDisconnectsSilentBackend: a backend whose connection is up but
// which never answers (here: its host stops reading, as on a cut link) is
// disconnected by the balancer's probe and its routes suspended, well before
// go-libp2p's keepalives would notice.
func TestProbeDisconnectsSilentBackend(t *testing.T) {
	a := lbtest.NewIdentity(t)
	f := lbtest.New(t, testnet.TCP, []lbtest.Identity{a}, balancer.WithProbeInterval(300*time.Millisecond))
	d := silentBackend(t, f, a)
	waitProbedOut(t, f, d)
}

// probedProto is the protocol silentBackend registers.
const probedProto protocol.ID = "/test/probed"

// silentBackend registers probedProto for a with a raw backend whose ping
// handler never answers (connected but silent, as on a cut link), and
// returns a remote peer that sees the protocol served.
func silentBackend(t *testing.T, f *lbtest.Fixture, a lbtest.Identity) host.Host {
	t.Helper()
	ah := rawBackend(t, f, a)
	if resp := lbtest.RawRequest(t, ah, f.Host.ID(), &pb.RoutingRequest{Protocols: []string{string(probedProto)}, TtlSeconds: 60}); resp.Status != pb.Status_OK {
		t.Fatalf("register: %v", resp)
	}
	d := f.NewPeer()
	lbtest.WaitServed(t, d, f.Host.ID(), true, probedProto)
	hold := make(chan struct{})
	t.Cleanup(func() { close(hold) })
	ah.SetStreamHandler("/ipfs/ping/1.0.0", func(s network.Stream) { <-hold; s.Reset() })
	return d
}

// waitProbedOut waits until the probe disconnected the silent backend: its
// protocol leaves d's view and its route stays, suspended.
func waitProbedOut(t *testing.T, f *lbtest.Fixture, d host.Host) {
	t.Helper()
	lbtest.WaitServed(t, d, f.Host.ID(), false, probedProto)
	if routes := f.LB.Routes(); len(routes) != 1 || routes[0].Connected {
		t.Fatalf("routes after the probe: %+v, want one, suspended", routes)
	}
}
