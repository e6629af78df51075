package balancer_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/backend"
	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// TestRouteLifecycle drives registration by hand: a route not extended
// expires and leaves the remote peer's identify view; an extension keeps it;
// a release removes it at once; an empty request queries.
func TestRouteLifecycle(t *testing.T) {
	testnet.EachTransport(t, func(t *testing.T, tr testnet.Transport) {
		a := lbtest.NewIdentity(t)
		f := lbtest.New(t, tr, []lbtest.Identity{a}, balancer.WithTTL(time.Second, 10*time.Second))
		ah := testnet.NewHost(t, tr, testnet.Options{Key: a.Key, LinkPeers: []peer.ID{f.Host.ID()}})
		testnet.Connect(t, ah, f.Host)
		d := f.NewPeer()
		lbID := f.Host.ID()

		const expiring, kept, released protocol.ID = "/test/expiring", "/test/kept", "/test/released"
		resp := lbtest.RawRequest(t, ah, lbID, &pb.RoutingRequest{Protocols: []string{string(expiring), string(kept), string(released)}, TtlSeconds: 2})
		if resp.Status != pb.Status_OK || resp.TtlSeconds != 2 || len(resp.Protocols) != 3 {
			t.Fatalf("register: %v", resp)
		}
		lbtest.WaitServed(t, d, lbID, true, expiring, kept, released)

		// Release at once.
		resp = lbtest.RawRequest(t, ah, lbID, &pb.RoutingRequest{Release: []string{string(released)}})
		if resp.Status != pb.Status_OK || slices.Contains(resp.Protocols, string(released)) {
			t.Fatalf("release: %v", resp)
		}
		lbtest.WaitServed(t, d, lbID, false, released)

		// Keep extending one route past the other's expiry.
		start := time.Now()
		for time.Since(start) < 4*time.Second {
			resp = lbtest.RawRequest(t, ah, lbID, &pb.RoutingRequest{Protocols: []string{string(kept)}, TtlSeconds: 2})
			if resp.Status != pb.Status_OK {
				t.Fatalf("extend: %v", resp)
			}
			if slices.Contains(resp.Protocols, string(expiring)) {
				continue
			}
			break
		}
		lbtest.WaitServed(t, d, lbID, false, expiring)
		lbtest.WaitServed(t, d, lbID, true, kept)
		if time.Since(start) < time.Second {
			t.Fatalf("route expired after %v, before its 2 s TTL", time.Since(start))
		}

		// The TTL is capped by the balancer's maximum; 0 asks for the default.
		resp = lbtest.RawRequest(t, ah, lbID, &pb.RoutingRequest{Protocols: []string{string(kept)}, TtlSeconds: 3600})
		if resp.TtlSeconds != 10 {
			t.Fatalf("TTL granted for 3600 s: %d, want the 10 s maximum", resp.TtlSeconds)
		}
		resp = lbtest.RawRequest(t, ah, lbID, &pb.RoutingRequest{Protocols: []string{string(kept)}})
		if resp.TtlSeconds != 1 {
			t.Fatalf("TTL granted for 0: %d, want the 1 s default", resp.TtlSeconds)
		}
		// An empty request is a query.
		resp = lbtest.RawRequest(t, ah, lbID, &pb.RoutingRequest{})
		if resp.Status != pb.Status_OK || !slices.Equal(resp.Protocols, []string{string(kept)}) {
			t.Fatalf("query: %v", resp)
		}
	})
}

// TestSeveralRequestsOnOneStream: one stream carries request/response pairs
// in turn, and closing it removes no route.
func TestSeveralRequestsOnOneStream(t *testing.T) {
	a := lbtest.NewIdentity(t)
	f := lbtest.New(t, testnet.TCP, []lbtest.Identity{a})
	ah := testnet.NewHost(t, testnet.TCP, testnet.Options{Key: a.Key, LinkPeers: []peer.ID{f.Host.ID()}})
	testnet.Connect(t, ah, f.Host)
	s, err := ah.NewStream(context.Background(), f.Host.ID(), wire.RoutingRequestID)
	if err != nil {
		t.Fatal(err)
	}
	r := wire.NewReader(s)
	for i, p := range []string{"/one", "/two", "/three"} {
		if err := wire.WriteMsg(s, &pb.RoutingRequest{Protocols: []string{p}}); err != nil {
			t.Fatal(err)
		}
		var resp pb.RoutingResponse
		if err := r.ReadMsg(&resp); err != nil {
			t.Fatal(err)
		}
		if resp.Status != pb.Status_OK || len(resp.Protocols) != i+1 {
			t.Fatalf("request %d: %v", i, &resp)
		}
	}
	s.Close()
	resp := lbtest.RawRequest(t, ah, f.Host.ID(), &pb.RoutingRequest{})
	if len(resp.Protocols) != 3 {
		t.Fatalf("after closing the stream: %v, want 3 routes", resp.Protocols)
	}
}

// TestPermissions: a peer that is not allowed gets PERMISSION_DENIED for
// registration and for outbound; an allowed backend limited to a prefix gets
// it for other protocols, all or nothing; reserved protocols get
// PROTOCOL_RESERVED.
func TestPermissions(t *testing.T) {
	testnet.EachTransport(t, func(t *testing.T, tr testnet.Transport) {
		a := lbtest.NewIdentity(t)
		f := lbtest.New(t, tr, nil, balancer.WithAllow(a.ID, "/allowed/*", "/exact"), loopbackTargets)
		lbID := f.Host.ID()

		stranger := lbtest.NewIdentity(t)
		sh := testnet.NewHost(t, tr, testnet.Options{Key: stranger.Key})
		testnet.Connect(t, sh, f.Host)
		if resp := lbtest.RawRequest(t, sh, lbID, &pb.RoutingRequest{Protocols: []string{"/x"}}); resp.Status != pb.Status_PERMISSION_DENIED {
			t.Fatalf("stranger registers: %v", resp)
		}
		// A stranger cannot use the balancer as an open proxy either.
		e := testnet.NewHost(t, tr, testnet.Options{})
		e.SetStreamHandler("/exact", testnet.Echo)
		sb, err := backend.New(sh, []peer.AddrInfo{f.Info()})
		if err != nil {
			t.Fatal(err)
		}
		defer sb.Close()
		sh.Peerstore().AddAddrs(e.ID(), e.Addrs(), time.Hour)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = sb.NewStream(ctx, e.ID(), "/exact")
		if !errors.Is(err, &wire.StatusError{Status: pb.Status_PERMISSION_DENIED}) {
			t.Fatalf("stranger outbound: err = %v, want PERMISSION_DENIED", err)
		}

		ah := testnet.NewHost(t, tr, testnet.Options{Key: a.Key, LinkPeers: []peer.ID{lbID}})
		testnet.Connect(t, ah, f.Host)
		resp := lbtest.RawRequest(t, ah, lbID, &pb.RoutingRequest{Protocols: []string{"/allowed/one", "/exact", "/other"}})
		if resp.Status != pb.Status_PERMISSION_DENIED || !strings.Contains(resp.Text, "/other") {
			t.Fatalf("partly allowed request: %v", resp)
		}
		if resp := lbtest.RawRequest(t, ah, lbID, &pb.RoutingRequest{}); len(resp.Protocols) != 0 {
			t.Fatalf("a refused request changed routes: %v", resp.Protocols)
		}
		if resp := lbtest.RawRequest(t, ah, lbID, &pb.RoutingRequest{Protocols: []string{"/allowed/one", "/exact"}}); resp.Status != pb.Status_OK {
			t.Fatalf("allowed request: %v", resp)
		}
		for _, p := range []string{"/ipfs/id/1.0.0", "/libp2p/balancer/routing-request", "/libp2p/balancer/anything"} {
			if resp := lbtest.RawRequest(t, ah, lbID, &pb.RoutingRequest{Protocols: []string{p}}); resp.Status != pb.Status_PROTOCOL_RESERVED {
				t.Fatalf("reserved %s: %v", p, resp)
			}
		}
		// Outbound on a protocol not allowed to the backend.
		ab, err := backend.New(ah, []peer.AddrInfo{f.Info()})
		if err != nil {
			t.Fatal(err)
		}
		defer ab.Close()
		ah.Peerstore().AddAddrs(e.ID(), e.Addrs(), time.Hour)
		if _, err := ab.NewStream(ctx, e.ID(), "/other"); !errors.Is(err, &wire.StatusError{Status: pb.Status_PERMISSION_DENIED}) {
			t.Fatalf("outbound on a protocol not allowed: err = %v, want PERMISSION_DENIED", err)
		}
		s, err := ab.NewStream(ctx, e.ID(), "/exact")
		if err != nil {
			t.Fatalf("outbound on an allowed protocol: %v", err)
		}
		testnet.CheckRoundTrip(t, s, []byte("allowed"))
	})
}

// TestMalformedMessages: oversized, garbled and invalid requests get
// MALFORMED_MESSAGE, and the balancer goes on serving.
func TestMalformedMessages(t *testing.T) {
	testnet.EachTransport(t, func(t *testing.T, tr testnet.Transport) {
		a := lbtest.NewIdentity(t)
		f := lbtest.New(t, tr, []lbtest.Identity{a})
		lbID := f.Host.ID()
		ah := testnet.NewHost(t, tr, testnet.Options{Key: a.Key, LinkPeers: []peer.ID{lbID}})
		testnet.Connect(t, ah, f.Host)

		send := func(proto protocol.ID, raw []byte) *pb.RoutingResponse {
			t.Helper()
			s, err := ah.NewStream(context.Background(), lbID, proto)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			_ = s.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := s.Write(raw); err != nil {
				t.Fatal(err)
			}
			// Both response types share field numbers 1 (status) and text's
			// position differs, so read into the routing response and check
			// the status only.
			var resp pb.RoutingResponse
			if err := wire.NewReader(s).ReadMsg(&resp); err != nil {
				t.Fatalf("no response to a malformed message: %v", err)
			}
			// The stream ends after a malformed message.
			if _, err := s.Read(make([]byte, 1)); err == nil {
				t.Fatal("stream still open after MALFORMED_MESSAGE")
			}
			return &resp
		}
		oversized := binary.AppendUvarint(nil, wire.MaxMessageSize+1)
		oversized = append(oversized, make([]byte, 64)...)
		garbled := []byte{4, 0xff, 0xff, 0xff, 0xff}
		var badProto []byte
		{
			msg := &pb.RoutingRequest{Protocols: []string{"no-slash"}}
			var buf strings.Builder
			_ = wire.WriteMsg(&buf, msg)
			badProto = []byte(buf.String())
		}
		for name, raw := range map[string][]byte{"oversized": oversized, "garbled": garbled, "bad protocol ID": badProto} {
			if resp := send(wire.RoutingRequestID, raw); resp.Status != pb.Status_MALFORMED_MESSAGE {
				t.Fatalf("registration, %s: %v", name, resp)
			}
		}
		for name, raw := range map[string][]byte{"oversized": oversized, "garbled": garbled} {
			if resp := send(wire.ForwardID, raw); resp.Status != pb.Status_MALFORMED_MESSAGE {
				t.Fatalf("outbound, %s: %v", name, resp)
			}
		}
		// The balancer still serves.
		if resp := lbtest.RawRequest(t, ah, lbID, &pb.RoutingRequest{Protocols: []string{"/fine"}}); resp.Status != pb.Status_OK {
			t.Fatalf("after malformed messages: %v", resp)
		}
	})
}

// TestForgedForwardIsReset: a peer that is not a configured balancer cannot
// deliver a forward stream to a backend, so it cannot impersonate a remote
// peer.
func TestForgedForwardIsReset(t *testing.T) {
	testnet.EachTransport(t, func(t *testing.T, tr testnet.Transport) {
		a := lbtest.NewIdentity(t)
		f := lbtest.New(t, tr, []lbtest.Identity{a})
		called := make(chan struct{}, 1)
		_, ah := f.NewBackend(a, map[protocol.ID]network.StreamHandler{"/p": func(s network.Stream) { called <- struct{}{}; s.Reset() }})
		forger := testnet.NewHost(t, tr, testnet.Options{})
		ah.Peerstore().AddAddrs(forger.ID(), forger.Addrs(), time.Hour) // not needed to dial, but harmless
		forger.Peerstore().AddAddrs(ah.ID(), nil, time.Hour)
		testnet.Connect(t, ah, forger)
		s, err := forger.NewStream(context.Background(), ah.ID(), wire.ForwardID)
		if err != nil {
			t.Fatal(err)
		}
		_ = s.SetDeadline(time.Now().Add(10 * time.Second))
		_ = wire.WriteMsg(s, &pb.Forward{Peer: []byte(f.Host.ID()), Protocols: []string{"/p"}})
		_, err = io.ReadAll(s)
		if err == nil {
			t.Fatal("forged forward stream was not reset")
		}
		select {
		case <-called:
			t.Fatal("a forged forward stream reached the handler")
		default:
		}
	})
}
