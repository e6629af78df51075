package balancer_test

import (
	"context"
	"errors"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// streamingEcho writes back each chunk as it arrives, so that a test can
// check a stream in the middle of its life.
func streamingEcho(s network.Stream) {
	defer s.Close()
	if _, err := io.Copy(s, s); err != nil {
		s.Reset()
	}
}

// TestUpdate: Update withdraws a backend's routes while its stream in flight
// goes on, lets a newly allowed backend register at once, narrows a grant to
// the routes it still covers, and changes nothing when an option is bad.
func TestUpdate(t *testing.T) {
	testnet.EachTransport(t, func(t *testing.T, tr testnet.Transport) {
		a, b := lbtest.NewIdentity(t), lbtest.NewIdentity(t)
		f := lbtest.New(t, tr, []lbtest.Identity{a})
		lbID := f.Host.ID()
		const svc = protocol.ID("/svc/1.0.0")
		ab, _ := f.NewBackend(a, map[protocol.ID]network.StreamHandler{svc: streamingEcho})
		lbtest.WaitRegistered(t, ab, svc)
		client := f.NewPeer()
		lbtest.WaitServed(t, client, lbID, true, svc)

		bh := testnet.NewHost(t, tr, testnet.Options{Key: b.Key, LinkPeers: []peer.ID{lbID}})
		testnet.Connect(t, bh, f.Host)
		if resp := lbtest.RawRequest(t, bh, lbID, &pb.RoutingRequest{Protocols: []string{"/keep/x"}}); resp.Status != pb.Status_PERMISSION_DENIED {
			t.Fatalf("b before it is allowed: %v", resp)
		}

		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		s, err := client.NewStream(ctx, lbID, svc)
		if err != nil {
			t.Fatal(err)
		}
		_ = s.SetDeadline(time.Now().Add(20 * time.Second))
		echoed := func(msg string) {
			t.Helper()
			if _, err := s.Write([]byte(msg)); err != nil {
				t.Fatalf("writing %q: %v", msg, err)
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(s, got); err != nil || string(got) != msg {
				t.Fatalf("echo of %q: %q, %v", msg, got, err)
			}
		}
		echoed("before the update")

		// a's permission withdrawn, b's granted.
		if err := f.LB.Update(balancer.WithAllow(b.ID)); err != nil {
			t.Fatal(err)
		}
		lbtest.WaitServed(t, client, lbID, false, svc)
		echoed("after the update")
		if resp := lbtest.RawRequest(t, bh, lbID, &pb.RoutingRequest{Protocols: []string{"/keep/x", "/svc/1.0.0"}}); resp.Status != pb.Status_OK {
			t.Fatalf("b once allowed: %v", resp)
		}
		ah := testnet.NewHost(t, tr, testnet.Options{Key: a.Key})
		testnet.Connect(t, ah, f.Host)
		if resp := lbtest.RawRequest(t, ah, lbID, &pb.RoutingRequest{Protocols: []string{"/svc/1.0.0"}}); resp.Status != pb.Status_PERMISSION_DENIED {
			t.Fatalf("a once withdrawn: %v", resp)
		}

		// A narrower grant keeps only the routes it covers.
		if err := f.LB.Update(balancer.WithAllow(b.ID, "/keep/*")); err != nil {
			t.Fatal(err)
		}
		if resp := lbtest.RawRequest(t, bh, lbID, &pb.RoutingRequest{}); !slices.Equal(resp.Protocols, []string{"/keep/x"}) {
			t.Fatalf("b's routes under the narrower grant: %v", resp.Protocols)
		}
		lbtest.WaitServed(t, client, lbID, false, svc)

		// A bad option is refused whole: b keeps its grant.
		var oe *balancer.OptionError
		if err := f.LB.Update(balancer.WithProbeInterval(-time.Second)); !errors.As(err, &oe) || oe.Setting != "probe interval" {
			t.Fatalf("bad update: %v", err)
		}
		if resp := lbtest.RawRequest(t, bh, lbID, &pb.RoutingRequest{Protocols: []string{"/keep/y"}}); resp.Status != pb.Status_OK {
			t.Fatalf("b after a refused update: %v", resp)
		}

		echoed("at the end")
		if err := s.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if rest, err := io.ReadAll(s); err != nil || len(rest) != 0 {
			t.Fatalf("end of the stream: %q, %v", rest, err)
		}
	})
}

// TestUpdateLimits: new limits judge the next stream, and the streams
// already admitted keep going.
func TestUpdateLimits(t *testing.T) {
	a := lbtest.NewIdentity(t)
	f := lbtest.New(t, testnet.TCP, []lbtest.Identity{a})
	lbID := f.Host.ID()
	const svc = protocol.ID("/svc/1.0.0")
	ab, _ := f.NewBackend(a, map[protocol.ID]network.StreamHandler{svc: streamingEcho})
	lbtest.WaitRegistered(t, ab, svc)
	client := f.NewPeer()
	lbtest.WaitServed(t, client, lbID, true, svc)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	open := func() (network.Stream, error) {
		s, err := client.NewStream(ctx, lbID, svc)
		if err != nil {
			return nil, err
		}
		_ = s.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := s.Write([]byte("x")); err != nil {
			return s, err
		}
		_, err = io.ReadFull(s, make([]byte, 1))
		return s, err
	}
	held, err := open()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.LB.Update(balancer.WithAllow(a.ID), balancer.WithLimits(balancer.Limits{Streams: 1})); err != nil {
		t.Fatal(err)
	}
	if s, err := open(); err == nil {
		s.Reset()
		t.Fatal("a second stream passed a balancer-wide limit of 1")
	}
	testnet.CheckRoundTrip(t, held, []byte("the held stream goes on"))
	if err := f.LB.Update(balancer.WithAllow(a.ID)); err != nil {
		t.Fatal(err)
	}
	s, err := open()
	if err != nil {
		t.Fatalf("after the limit was lifted: %v", err)
	}
	s.Close()
}

// TestUpdateStartsProbing: a Balancer started with probing off starts it
// when Update sets an interval, and disconnects a silent backend.
func TestUpdateStartsProbing(t *testing.T) {
	a := lbtest.NewIdentity(t)
	f := lbtest.New(t, testnet.TCP, []lbtest.Identity{a}, balancer.WithProbeInterval(0))
	d := silentBackend(t, f, a)
	if err := f.LB.Update(balancer.WithAllow(a.ID), balancer.WithProbeInterval(300*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	waitProbedOut(t, f, d)
}
