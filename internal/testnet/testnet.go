// Package testnet builds real go-libp2p hosts on loopback for the project's
// tests: one transport at a time (TCP or QUIC), port 0, default security and
// muxers, and the resource manager limits of the balancer protocol raised for
// the peers on the other side of a balancer–backend link, as a deployment
// would set them. Every host is closed when its test ends.
package testnet

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"

	"github.com/libp2p-balancer/libp2p-balancer/wire"
)

// Transport names the one transport a test host uses.
type Transport string

// The transports every end-to-end scenario runs over.
const (
	TCP  Transport = "tcp"
	QUIC Transport = "quic"
)

// Transports lists TCP and QUIC, for table tests.
var Transports = []Transport{TCP, QUIC}

// Key makes a new Ed25519 identity.
func Key(t testing.TB) (crypto.PrivKey, peer.ID) {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return k, id
}

// Options configures NewHost.
type Options struct {
	// Key is the identity; nil makes a new one.
	Key crypto.PrivKey
	// LinkPeers get the balancer protocol's raised per-peer limits.
	LinkPeers []peer.ID
	// NoListen makes a host that only dials.
	NoListen bool
	// Unlimited gives the host a resource manager with no limits, for a
	// remote peer that receives every backend's outbound streams from the
	// one balancer peer.
	Unlimited bool
	// Extra libp2p options, applied last.
	Extra []libp2p.Option
}

// NewHost starts a host on 127.0.0.1, port 0, over tr.
func NewHost(t testing.TB, tr Transport, o Options) host.Host {
	t.Helper()
	if o.Key == nil {
		o.Key, _ = Key(t)
	}
	limits := rcmgr.DefaultLimits
	wire.AddLimits(&limits, o.LinkPeers...)
	limiter := rcmgr.NewFixedLimiter(limits.AutoScale())
	if o.Unlimited {
		limiter = rcmgr.NewFixedLimiter(rcmgr.InfiniteLimits)
	}
	rm, err := rcmgr.NewResourceManager(limiter)
	if err != nil {
		t.Fatal(err)
	}
	opts := []libp2p.Option{
		libp2p.Identity(o.Key),
		libp2p.ResourceManager(rm),
		libp2p.DisableRelay(),
	}
	switch tr {
	case TCP:
		opts = append(opts, libp2p.Transport(tcp.NewTCPTransport), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	case QUIC:
		opts = append(opts, libp2p.Transport(libp2pquic.NewTransport), libp2p.ListenAddrStrings("/ip4/127.0.0.1/udp/0/quic-v1"))
	default:
		t.Fatalf("unknown transport %q", tr)
	}
	if o.NoListen {
		opts = append(opts, libp2p.NoListenAddrs)
	}
	opts = append(opts, o.Extra...)
	h, err := libp2p.New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// Info returns h's peer ID and listen addresses.
func Info(h host.Host) peer.AddrInfo {
	return peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()}
}

// Connect connects a to b, failing the test on error.
func Connect(t testing.TB, a, b host.Host) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Connect(ctx, Info(b)); err != nil {
		t.Fatalf("connect %s -> %s: %v", a.ID(), b.ID(), err)
	}
}

// Eventually polls cond every 10 ms until it holds or timeout passes, then
// fails the test with msg.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v: "+msg, append([]any{timeout}, args...)...)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Workers calls job(i) for each i in [0, n) from workers goroutines at
// once, each worker stopping at its first error, and fails the test with
// the errors once all have stopped.
func Workers(t testing.TB, n, workers int, job func(i int) error) {
	t.Helper()
	var wg sync.WaitGroup
	var next atomic.Int64
	errs := make(chan error, workers)
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := job(i); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
}
