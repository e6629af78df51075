package balancer_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/backend"
	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/proctest"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
)

// TestQUICLinkFull: a backend over QUIC that opens no lane holds 256
// forwarded streams; the 257th waits the handshake timeout, is counted
// (BackendInfo.LinkFull), logged once for the backend, and goes to another
// backend with every byte intact, or is refused when there is none.
func TestQUICLinkFull(t *testing.T) {
	const proto protocol.ID = "/test/full"
	a, b := lbtest.NewIdentity(t), lbtest.NewIdentity(t)
	var logs proctest.SyncBuffer
	const handshake = 2 * time.Second
	f := lbtest.New(t, testnet.QUIC, []lbtest.Identity{a, b},
		balancer.WithHandshakeTimeout(handshake),
		balancer.WithPolicy(string(proto), balancer.Policy{Strategy: balancer.RoundRobin}),
		balancer.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	// Backend a answers the first byte of each stream at once, then holds
	// the stream.
	beA, _ := f.NewBackend(a, map[protocol.ID]network.StreamHandler{proto: func(s network.Stream) {
		one := make([]byte, 1)
		if _, err := io.ReadFull(s, one); err == nil {
			s.Write(one)
		}
		<-release
		s.Reset()
	}}, backend.WithLanes(false))
	lbtest.WaitRegistered(t, beA, proto)

	// 256 streams from 4 peers (the test hosts' resource manager takes
	// about 75 inbound streams of one protocol from one peer).
	peers := make([]host.Host, 5)
	for i := range peers {
		peers[i] = f.NewPeer()
		lbtest.WaitServed(t, peers[i], f.Host.ID(), true, proto)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 256)
	for i := 0; i < 256; i++ {
		wg.Add(1)
		go func(d host.Host) {
			defer wg.Done()
			s, err := d.NewStream(ctx, f.Host.ID(), proto)
			if err == nil {
				_, err = s.Write([]byte{7})
			}
			if err == nil {
				_, err = io.ReadFull(s, make([]byte, 1))
			}
			errs <- err
		}(peers[i%4])
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("one of 256 streams to a QUIC backend: %v", err)
		}
	}

	linkFull := func() int64 {
		for _, bi := range f.LB.Backends() {
			if bi.ID == a.ID {
				return bi.LinkFull
			}
		}
		return -1
	}
	// No other backend: the 257th is refused after the handshake timeout.
	start := time.Now()
	s, err := peers[4].NewStream(ctx, f.Host.ID(), proto)
	if err == nil {
		s.Write([]byte{7})
		_, err = io.ReadFull(s, make([]byte, 1))
	}
	if err == nil {
		t.Fatal("stream 257 to a full QUIC link with no lane was served")
	}
	if d := time.Since(start); d < handshake {
		t.Errorf("stream 257 refused after %v, want the handshake timeout (%v)", d, handshake)
	}
	if n := linkFull(); n != 1 {
		t.Errorf("LinkFull %d, want 1", n)
	}

	// With a second backend, streams that find a's link full fail over to
	// it with no byte lost.
	beB, _ := f.NewBackend(b, map[protocol.ID]network.StreamHandler{proto: testnet.Echo})
	lbtest.WaitRegistered(t, beB, proto)
	for i := 0; i < 4; i++ {
		payload := []byte(fmt.Sprintf("stream %d after the link filled", i))
		s, err := peers[4].NewStream(ctx, f.Host.ID(), proto)
		if err != nil {
			t.Fatal(err)
		}
		testnet.CheckRoundTrip(t, s, payload)
	}
	if n := linkFull(); n < 2 {
		t.Errorf("LinkFull %d after failovers, want at least 2 (round robin offers a first)", n)
	}
	if got := strings.Count(logs.String(), "QUIC link is full"); got != 1 {
		t.Errorf("%d log lines about the full link, want 1:\n%s", got, logs.String())
	}
}
