package balancer_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// TestCannotReleaseOthersRoutes: a backend's release names only its own
// routes; another backend's route of the same protocol stays.
func TestCannotReleaseOthersRoutes(t *testing.T) {
	a, b := lbtest.NewIdentity(t), lbtest.NewIdentity(t)
	f := lbtest.New(t, testnet.TCP, []lbtest.Identity{a, b})
	lbID := f.Host.ID()
	ah := testnet.NewHost(t, testnet.TCP, testnet.Options{Key: a.Key, LinkPeers: []peer.ID{lbID}})
	bh := testnet.NewHost(t, testnet.TCP, testnet.Options{Key: b.Key, LinkPeers: []peer.ID{lbID}})
	testnet.Connect(t, ah, f.Host)
	testnet.Connect(t, bh, f.Host)
	if resp := lbtest.RawRequest(t, ah, lbID, &pb.RoutingRequest{Protocols: []string{"/mine"}}); resp.Status != pb.Status_OK {
		t.Fatal(resp)
	}
	if resp := lbtest.RawRequest(t, bh, lbID, &pb.RoutingRequest{Release: []string{"/mine"}}); resp.Status != pb.Status_OK || len(resp.Protocols) != 0 {
		t.Fatalf("release of another backend's route: %v", resp)
	}
	routes := f.LB.Routes()
	if len(routes) != 1 || routes[0].Backend != a.ID || routes[0].Protocol != "/mine" {
		t.Fatalf("routes after the foreign release: %+v", routes)
	}
}

// TestBadRequests: each kind of bad input gets its documented status, and
// the balancer keeps serving.
func TestBadRequests(t *testing.T) {
	a := lbtest.NewIdentity(t)
	f := lbtest.New(t, testnet.TCP, []lbtest.Identity{a})
	lbID := f.Host.ID()
	ah := testnet.NewHost(t, testnet.TCP, testnet.Options{Key: a.Key, LinkPeers: []peer.ID{lbID}})
	testnet.Connect(t, ah, f.Host)

	many := make([]string, 2000)
	for i := range many {
		many[i] = fmt.Sprintf("/p%d", i)
	}
	cases := []struct {
		name   string
		protos []string
		want   pb.Status
	}{
		{"empty protocol ID", []string{""}, pb.Status_MALFORMED_MESSAGE},
		{"no leading slash", []string{"abc"}, pb.Status_MALFORMED_MESSAGE},
		{"control character", []string{"/a\nb"}, pb.Status_MALFORMED_MESSAGE},
		{"non-ASCII", []string{"/é"}, pb.Status_MALFORMED_MESSAGE},
		{"1025-byte protocol ID", []string{"/" + strings.Repeat("x", 1024)}, pb.Status_MALFORMED_MESSAGE},
		{"2000 protocols, over the per-request limit", many, pb.Status_RESOURCE_LIMIT_EXCEEDED},
	}
	for _, c := range cases {
		if resp := lbtest.RawRequest(t, ah, lbID, &pb.RoutingRequest{Protocols: c.protos}); resp.Status != c.want {
			t.Errorf("%s: %v, want %v", c.name, resp.Status, c.want)
		}
	}

	// Unknown fields (a newer backend) are ignored, not refused.
	var raw []byte
	raw = protowire.AppendTag(raw, 1, protowire.BytesType)
	raw = protowire.AppendString(raw, "/known")
	raw = protowire.AppendTag(raw, 99, protowire.BytesType)
	raw = protowire.AppendString(raw, "a field from the future")
	var framedRaw []byte
	framedRaw = protowire.AppendVarint(framedRaw, uint64(len(raw)))
	framedRaw = append(framedRaw, raw...)
	s, err := ah.NewStream(context.Background(), lbID, wire.RoutingRequestID)
	if err != nil {
		t.Fatal(err)
	}
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := s.Write(framedRaw); err != nil {
		t.Fatal(err)
	}
	var resp pb.RoutingResponse
	if err := wire.NewReader(s).ReadMsg(&resp); err != nil || resp.Status != pb.Status_OK {
		t.Fatalf("request with an unknown field: %v %v", &resp, err)
	}
	s.Close()

	// Outbound: invalid target peer ID and address.
	outbound := func(req *pb.Forward) pb.Status {
		var resp pb.ForwardResponse
		lbtest.Ask(t, ah, lbID, wire.ForwardID, req, &resp)
		return resp.Status
	}
	_, e := testnet.Key(t)
	if st := outbound(&pb.Forward{Peer: []byte("not a peer id"), Protocols: []string{"/x"}}); st != pb.Status_MALFORMED_MESSAGE {
		t.Errorf("invalid target peer ID: %v", st)
	}
	if st := outbound(&pb.Forward{Peer: []byte(e), Protocols: []string{"/x"}, Addrs: [][]byte{{0xff, 0xff}}}); st != pb.Status_MALFORMED_MESSAGE {
		t.Errorf("invalid target address: %v", st)
	}
	if st := outbound(&pb.Forward{Peer: []byte(e)}); st != pb.Status_MALFORMED_MESSAGE {
		t.Errorf("no protocol: %v", st)
	}
	if st := outbound(&pb.Forward{Peer: []byte(lbID), Protocols: []string{"/x"}}); st != pb.Status_DIAL_FAILED {
		t.Errorf("the balancer as target: %v", st)
	}
	if resp := lbtest.RawRequest(t, ah, lbID, &pb.RoutingRequest{}); resp.Status != pb.Status_OK || len(resp.Protocols) != 1 {
		t.Fatalf("after the bad requests: %v", resp)
	}
}

// TestHalfOpenHandshakes: many streams that open the balancer's protocols
// and never send a byte are cut at the handshake deadline, and do not stop
// a backend from registering or a remote peer from being served meanwhile.
func TestHalfOpenHandshakes(t *testing.T) {
	a, attacker := lbtest.NewIdentity(t), lbtest.NewIdentity(t)
	f := lbtest.New(t, testnet.TCP, []lbtest.Identity{a, attacker}, balancer.WithHandshakeTimeout(500*time.Millisecond))
	lbID := f.Host.ID()
	xh := testnet.NewHost(t, testnet.TCP, testnet.Options{Key: attacker.Key, LinkPeers: []peer.ID{lbID}})
	testnet.Connect(t, xh, f.Host)
	var streams []network.Stream
	for i := 0; i < 100; i++ {
		s, err := xh.NewStream(context.Background(), lbID, wire.ForwardID)
		if err != nil {
			t.Fatal(err)
		}
		// A length prefix and then nothing: the handler waits for a body
		// that never comes.
		if _, err := s.Write([]byte{5}); err != nil {
			t.Fatal(err)
		}
		streams = append(streams, s)
	}
	be, _ := f.NewBackend(a, map[protocol.ID]network.StreamHandler{"/served": testnet.Echo})
	lbtest.WaitRegistered(t, be, "/served")
	d := f.NewPeer()
	lbtest.WaitServed(t, d, lbID, true, "/served")
	openAndEcho(t, d, lbID, "/served", []byte("still served"))
	// Every half-open stream ends, by the deadline, not by us.
	var wg sync.WaitGroup
	start := time.Now()
	for _, s := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = s.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err := s.Read(make([]byte, 1))
			if err == nil || isTimeout(err) {
				t.Errorf("half-open stream not cut: %v", err)
			}
		}()
	}
	wg.Wait()
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("half-open streams cut after %v", took)
	}
}

// TestStreamFlood: one remote peer flooding new streams is held by the rate
// limit while another peer is served.
func TestStreamFlood(t *testing.T) {
	a := lbtest.NewIdentity(t)
	f := lbtest.New(t, testnet.TCP, []lbtest.Identity{a}, balancer.WithLimits(balancer.Limits{NewStreamsPerSecondPerPeer: 20, StreamsPerPeer: 10}))
	be, _ := f.NewBackend(a, map[protocol.ID]network.StreamHandler{"/svc": testnet.Echo})
	lbtest.WaitRegistered(t, be, "/svc")
	flooder, victim := f.NewPeer(), f.NewPeer()
	lbtest.WaitServed(t, flooder, f.Host.ID(), true, "/svc")
	lbtest.WaitServed(t, victim, f.Host.ID(), true, "/svc")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	limited := 0
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := f.EchoOnce(flooder, "/svc", []byte("flood")); err != nil {
					var se *network.StreamError
					if errors.As(err, &se) {
						mu.Lock()
						limited++
						mu.Unlock()
					}
				}
			}
		}()
	}
	for i := 0; i < 20; i++ {
		if err := f.EchoOnce(victim, "/svc", []byte("victim")); err != nil {
			close(stop)
			wg.Wait()
			t.Fatalf("the other peer was not served during the flood: %v", err)
		}
	}
	close(stop)
	wg.Wait()
	if limited == 0 {
		t.Fatal("the flood was never limited")
	}
}
