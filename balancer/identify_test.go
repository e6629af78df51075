package balancer_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/protocol/identify"
	idpb "github.com/libp2p/go-libp2p/p2p/protocol/identify/pb"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// TestIdentifyBudget: a backend registering long protocol IDs cannot take
// the balancer's identify message past 4 KiB, go-libp2p's own limit for
// rust-libp2p. The registration that would is refused whole with
// RESOURCE_LIMIT_EXCEEDED; filled to the budget, the message still fits and
// a real go-libp2p peer still reads every listen address of the balancer
// (go-libp2p drops them past about 3.8 KiB of protocols) and its signed
// peer record.
func TestIdentifyBudget(t *testing.T) {
	a := lbtest.NewIdentity(t)
	// Three listen addresses over two transports, all of them in the
	// message and in the signed peer record.
	lbh := testnet.NewHost(t, testnet.TCP, testnet.Options{LinkPeers: []peer.ID{a.ID}, Extra: []libp2p.Option{
		libp2p.Ping(false),
		libp2p.Transport(libp2pquic.NewTransport),
		libp2p.ListenAddrStrings("/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.1/tcp/0"),
	}})
	lb, err := balancer.New(lbh, balancer.WithAllow(a.ID))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lb.Close() })
	if n := len(lbh.Addrs()); n != 3 {
		t.Fatalf("balancer listens on %d addresses, want 3", n)
	}
	ah := testnet.NewHost(t, testnet.TCP, testnet.Options{Key: a.Key, LinkPeers: []peer.ID{lbh.ID()}, NoListen: true})
	testnet.Connect(t, ah, lbh)

	long := func(prefix string, i, n int) string {
		s := fmt.Sprintf("/%s%d/", prefix, i)
		return s + strings.Repeat("x", n-len(s))
	}
	register := func(protos ...string) *pb.RoutingResponse {
		return lbtest.RawRequest(t, ah, lbh.ID(), &pb.RoutingRequest{Protocols: protos, TtlSeconds: 600})
	}

	// Five IDs of 1,000 bytes, well within the 16 KiB response and the
	// per-backend limits, and a short one: refused whole.
	first := []string{"/short/1.0.0"}
	for i := range 5 {
		first = append(first, long("big", i, 1000))
	}
	if resp := register(first...); resp.Status != pb.Status_RESOURCE_LIMIT_EXCEEDED || !strings.Contains(resp.Text, "identify") {
		t.Fatalf("5,000 bytes of protocol IDs: %v %q, want RESOURCE_LIMIT_EXCEEDED naming identify", resp.Status, resp.Text)
	}
	if routes := lb.Routes(); len(routes) != 0 {
		t.Fatalf("a refused registration left routes: %+v", routes)
	}

	// Fill the budget: IDs of 1,000 bytes, then 100, then 10, each size
	// until the balancer refuses it.
	var granted []string
	for _, size := range []int{1000, 100, 10} {
		for i := range 200 {
			id := long(fmt.Sprint("s", size, "-"), i, size)
			resp := register(id)
			if resp.Status == pb.Status_RESOURCE_LIMIT_EXCEEDED {
				break
			}
			if resp.Status != pb.Status_OK {
				t.Fatalf("registering %d bytes: %v %s", size, resp.Status, resp.Text)
			}
			granted = append(granted, id)
		}
	}
	if len(granted) < 3 {
		t.Fatalf("only %d protocols fit the budget", len(granted))
	}
	// An extension of what is granted adds nothing to identify and passes;
	// the refusals took nothing away.
	if resp := register(granted...); resp.Status != pb.Status_OK || len(resp.Protocols) != len(granted) {
		t.Fatalf("extending the granted routes: %v %s, %d routes, want %d", resp.Status, resp.Text, len(resp.Protocols), len(granted))
	}

	// Identify answers from its snapshot, which follows the announcement.
	ps := make([]protocol.ID, len(granted))
	for i, p := range granted {
		ps[i] = protocol.ID(p)
	}
	lbtest.WaitServed(t, ah, lbh.ID(), true, ps...)

	// A fresh go-libp2p peer identifies the balancer.
	d := testnet.NewHost(t, testnet.TCP, testnet.Options{})
	sub, err := d.EventBus().Subscribe(new(event.EvtPeerIdentificationCompleted))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	testnet.Connect(t, d, lbh)
	var id event.EvtPeerIdentificationCompleted
	for id.Peer != lbh.ID() {
		select {
		case ev := <-sub.Out():
			id = ev.(event.EvtPeerIdentificationCompleted)
		case <-time.After(10 * time.Second):
			t.Fatal("no identification of the balancer")
		}
	}
	for _, addr := range lbh.Addrs() {
		if !slices.ContainsFunc(id.ListenAddrs, addr.Equal) {
			t.Errorf("identify lists %v, not the balancer's address %v", id.ListenAddrs, addr)
		}
	}
	if id.SignedPeerRecord == nil {
		t.Error("no signed peer record in identify")
	}
	for _, p := range granted {
		if !slices.Contains(id.Protocols, protocol.ID(p)) {
			t.Errorf("identify lacks the granted %.20s…", p)
		}
	}

	// The message as a peer reads it, in its parts, each with its length
	// prefix: within the budget as a whole.
	parts, total := readIdentify(t, d, lbh.ID())
	if total > balancer.IdentifyBudget {
		t.Errorf("identify message of %d bytes (%d parts), over %d", total, parts, balancer.IdentifyBudget)
	}
	t.Logf("identify at the budget: %d bytes in %d parts, %d routed protocols", total, parts, len(granted))
}

// readIdentify asks p for its identify message from h and returns how many
// parts it came in and their bytes, length prefixes included.
func readIdentify(t *testing.T, h interface {
	NewStream(context.Context, peer.ID, ...protocol.ID) (network.Stream, error)
}, p peer.ID) (parts, total int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := h.NewStream(ctx, p, identify.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	r := wire.NewReader(s)
	for range 10 {
		var part idpb.Identify
		if err := r.ReadMsg(&part); err != nil {
			break
		}
		n := proto.Size(&part)
		parts++
		total += protowire.SizeVarint(uint64(n)) + n
	}
	if parts == 0 {
		t.Fatal("no identify message")
	}
	return parts, total
}

// TestIdentifyPushCoalesced: a backend looping on register and release
// makes the balancer push identify at most twice a second to a connected
// peer, not once per request, and the last change still reaches peers
// within a second.
func TestIdentifyPushCoalesced(t *testing.T) {
	a := lbtest.NewIdentity(t)
	f := lbtest.New(t, testnet.TCP, []lbtest.Identity{a})
	lbID := f.Host.ID()
	ah := testnet.NewHost(t, testnet.TCP, testnet.Options{Key: a.Key, LinkPeers: []peer.ID{lbID}, NoListen: true})
	testnet.Connect(t, ah, f.Host)

	// d counts the pushes it receives, with the protocols of each; its
	// push handler reads them as go-libp2p's does (parts of at most 8 KiB,
	// merged).
	type push struct {
		at     time.Time
		protos []string
	}
	var (
		mu     sync.Mutex
		pushes []push
	)
	d := testnet.NewHost(t, testnet.TCP, testnet.Options{})
	d.SetStreamHandler(identify.IDPush, func(s network.Stream) {
		defer s.Close()
		_ = s.SetDeadline(time.Now().Add(10 * time.Second))
		r := wire.NewReader(s)
		var msg idpb.Identify
		for range 10 {
			var part idpb.Identify
			if err := r.ReadMsg(&part); err != nil {
				break
			}
			proto.Merge(&msg, &part)
		}
		if s.Conn().RemotePeer() == lbID {
			mu.Lock()
			pushes = append(pushes, push{time.Now(), msg.Protocols})
			mu.Unlock()
		}
	})
	testnet.Connect(t, d, f.Host)
	// e is a peer with go-libp2p's own identify, whose view must follow.
	e := f.NewPeer()
	lbtest.WaitServed(t, e, lbID, true, wire.RoutingRequestID)

	ok := func(req *pb.RoutingRequest) {
		t.Helper()
		if resp := lbtest.RawRequest(t, ah, lbID, req); resp.Status != pb.Status_OK {
			t.Fatalf("%v: %v %s", req, resp.Status, resp.Text)
		}
	}
	mu.Lock()
	pushes = nil
	mu.Unlock()
	start := time.Now()
	changes := 0
	for ; changes < 2000 && time.Since(start) < 2*time.Second; changes++ {
		if changes%2 == 0 {
			ok(&pb.RoutingRequest{Protocols: []string{"/flap/1.0.0"}})
		} else {
			ok(&pb.RoutingRequest{Release: []string{"/flap/1.0.0"}})
		}
	}
	ok(&pb.RoutingRequest{Protocols: []string{"/flap/last"}})
	last := time.Now()
	changes++

	// The last change reaches both peers within a second.
	testnet.Eventually(t, time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(pushes) > 0 && slices.Contains(pushes[len(pushes)-1].protos, "/flap/last")
	}, "a push with the last change")
	seen := time.Since(last)
	lbtest.WaitServed(t, e, lbID, true, "/flap/last")
	if lag := time.Since(last); lag > time.Second {
		t.Errorf("the last change reached go-libp2p's identify after %v", lag)
	}

	mu.Lock()
	n := len(pushes)
	mu.Unlock()
	elapsed := time.Since(start)
	// At most one push per PushInterval, plus the one a quiet interval
	// lets through at once.
	if allowed := int(elapsed/balancer.PushInterval) + 1; n > allowed {
		t.Errorf("%d pushes in %v for %d route changes, want at most %d (2 a second)", n, elapsed.Round(time.Millisecond), changes, allowed)
	}
	t.Logf("%d route changes in %v: %d pushes; the last change pushed after %v", changes, last.Sub(start).Round(time.Millisecond), n, seen.Round(time.Millisecond))
}
