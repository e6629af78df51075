package backend_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/backend"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
)

// holdStreams starts a balancer with backend a serving a protocol whose
// handler answers none of total streams until all have arrived, opens them
// from ten remote peers at once, and returns the fixture, the backend, its
// peer ID, and how many connections the balancer had to that peer while all
// the streams were held.
func holdStreams(t *testing.T, tr testnet.Transport, total int) (*lbtest.Fixture, *backend.Backend, peer.ID, int) {
	t.Helper()
	a := lbtest.NewIdentity(t)
	f := lbtest.New(t, tr, []lbtest.Identity{a})
	const proto protocol.ID = "/test/lanes"
	var mu sync.Mutex
	arrived, conns := 0, 0
	all := make(chan struct{})
	be, _ := f.NewBackend(a, map[protocol.ID]network.StreamHandler{proto: func(s network.Stream) {
		mu.Lock()
		if arrived++; arrived == total {
			conns = len(f.Host.Network().ConnsToPeer(a.ID))
			close(all)
		}
		mu.Unlock()
		select {
		case <-all:
			testnet.Echo(s)
		case <-time.After(60 * time.Second):
			s.Reset()
		}
	}})
	lbtest.WaitRegistered(t, be, proto)
	// The default resource manager lets one remote peer open only about 64
	// inbound streams of one protocol.
	ds := make([]host.Host, 10)
	for i := range ds {
		ds[i] = f.NewPeer()
		lbtest.WaitServed(t, ds[i], f.Host.ID(), true, proto)
	}
	var wg sync.WaitGroup
	errs := make(chan error, total)
	for i := range total {
		wg.Go(func() { errs <- f.EchoOnce(ds[i%len(ds)], proto, []byte(fmt.Sprintf("stream %d", i))) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return f, be, a.ID, conns
}

// TestLanesOverQUIC: 300 forwarded streams held at once to one backend over
// QUIC, past the 256 that one QUIC connection carries per direction: the
// backend opens lanes (more connections from its peer ID), every stream
// gets through, and Close closes the lanes but not the backend's own
// connection.
func TestLanesOverQUIC(t *testing.T) {
	f, be, id, conns := holdStreams(t, testnet.QUIC, 300)
	if conns < 2 {
		t.Fatalf("the balancer had %d connection(s) to the backend with 300 streams held, want lanes (2 or more)", conns)
	}
	if err := be.Close(); err != nil {
		t.Fatal(err)
	}
	testnet.Eventually(t, 10*time.Second, func() bool { return len(f.Host.Network().ConnsToPeer(id)) == 1 },
		"the lanes to close, leaving the backend host's connection")
}

// TestNoLanesOverTCP: yamux over TCP has no fixed stream cap, so the same
// load travels on the one connection.
func TestNoLanesOverTCP(t *testing.T) {
	_, _, _, conns := holdStreams(t, testnet.TCP, 300)
	if conns != 1 {
		t.Fatalf("the balancer had %d connections to the backend over TCP, want 1 (no lanes)", conns)
	}
}
