// Package soak_test holds the soak test: many forwarded streams in both
// directions, with random sizes and a byte-for-byte check of every payload, spread
// over many remote peers as real traffic is, while routes register, expire
// and fail over and backends are replaced. The balancer and backend hosts
// have the commands' default limits (internal/node, wire.Limits). Its short
// form runs in CI; set BALANCER_SOAK to a duration (for example 5m) for a
// long run at 1,000 workers.
package soak_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	"go.uber.org/goleak"

	"github.com/libp2p-balancer/libp2p-balancer/backend"
	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/node"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

const (
	inProto  protocol.ID = "/soak/echo"
	outProto protocol.ID = "/soak/target"
)

// echo answers with what it read, after the writer's half-close.
func echo(s network.Stream) {
	defer s.Close()
	if _, err := io.Copy(s, s); err != nil {
		s.Reset()
	}
}

func TestSoak(t *testing.T) {
	duration := 8 * time.Second
	concurrency := 200
	if v := os.Getenv("BALANCER_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("BALANCER_SOAK=%q: %v", v, err)
		}
		duration, concurrency = d, 1000
	}
	// Registered first, so it runs after every other cleanup has closed
	// its hosts.
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	var baseline runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&baseline)
	// Registered second, so it runs after the cleanups that hold the
	// replaced backends and their hosts (closed, but referenced until
	// then).
	t.Cleanup(func() { checkHeap(t, baseline) })

	stats := run(t, duration, concurrency)
	t.Logf("%d workers over %d remote peers for %v: %d inbound and %d outbound streams verified, %d MiB each way; %d offers refused by the failing backend; %d backends replaced",
		concurrency, peersFor(concurrency), duration, stats.in.Load(), stats.out.Load(), stats.bytes.Load()>>20, stats.refusals.Load(), stats.replaced.Load())
	if stats.in.Load() == 0 || stats.out.Load() == 0 || stats.refusals.Load() == 0 || stats.replaced.Load() == 0 {
		t.Fatalf("the soak did not exercise everything: %+v", stats)
	}

}

// checkHeap fails t unless the live heap comes back to within 32 MiB of
// baseline once everything is closed. HeapAlloc after a GC is the live
// objects; HeapInuse also counts the free slots of spans that still hold a
// live object, and after 1,000 workers it stayed at 45 MiB with about 4 MiB
// of live objects (the 5-minute form, heap profile).
func checkHeap(t *testing.T, baseline runtime.MemStats) {
	var after runtime.MemStats
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		runtime.ReadMemStats(&after)
		if after.HeapAlloc < baseline.HeapAlloc+32<<20 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("live heap %d MiB before the soak, %d MiB after (heap in use %d and %d MiB)",
		baseline.HeapAlloc>>20, after.HeapAlloc>>20, baseline.HeapInuse>>20, after.HeapInuse>>20)
	if after.HeapAlloc > baseline.HeapAlloc+32<<20 {
		t.Errorf("live heap %d MiB after the soak, %d MiB before", after.HeapAlloc>>20, baseline.HeapAlloc>>20)
	}
}

// peersFor is how many remote peers carry the load of concurrency workers:
// about five inbound and five outbound workers each, as a crowd of ordinary
// clients would. One peer holding hundreds of streams would instead meet
// its own host's per-peer limits (go-libp2p's defaults, which a client
// keeps), which is not what the soak is about.
func peersFor(concurrency int) int {
	return max(4, concurrency/10)
}

type soakStats struct {
	in, out, bytes, refusals, replaced atomic.Int64
}

// newHost starts a host with the commands' default limits (wire.Limits, the
// link peers raised), as `balancer serve` and `balancer backend` build
// theirs, on loopback TCP unless noListen.
func newHost(t *testing.T, key crypto.PrivKey, linkPeers []peer.ID, noListen bool, opts ...libp2p.Option) host.Host {
	t.Helper()
	cfg := node.Config{Key: key, LinkPeers: linkPeers, Options: opts}
	if !noListen {
		cfg.Listen = []ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/tcp/0")}
	}
	h, err := node.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// run builds the network, runs the load and the churn for d once the
// network is up, and closes everything before it returns.
func run(t *testing.T, d time.Duration, concurrency int) *soakStats {
	stats := &soakStats{}

	var ids []peer.ID
	var backendKeys []testnetKey
	for i := 0; i < 12; i++ {
		k, id := testnet.Key(t)
		backendKeys = append(backendKeys, testnetKey{k, id})
		ids = append(ids, id)
	}
	refusingKey, refusingID := testnet.Key(t)
	expiringKey, expiringID := testnet.Key(t)
	ids = append(ids, refusingID, expiringID)

	lbKey, _ := testnet.Key(t)
	lbHost := newHost(t, lbKey, ids, false, libp2p.Ping(false))
	var opts []balancer.Option
	for _, id := range ids {
		opts = append(opts, balancer.WithAllow(id))
	}
	opts = append(opts,
		balancer.WithHealth(balancer.Health{}), // no ejection: keep the refusing backend in play
		// Liveness checks slower than the defaults (5 s): on a machine
		// shared at a load of 20 and more, a probe or a registration
		// exchange on a link carrying hundreds of busy streams waited
		// more than 5 s, and the balancer (probe) or the backend (two
		// silent exchanges) dropped the link with every stream on it.
		// The soak checks bytes under churn; dead links are found by
		// test/netfault with the defaults.
		balancer.WithProbeInterval(30*time.Second),
		// The remote peers, which are also the outbound targets, listen on
		// loopback, which the default dial policy refuses.
		balancer.WithDialPolicy(balancer.DialPolicy{Loopback: true}))
	lb, err := balancer.New(lbHost, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	lbInfo := testnet.Info(lbHost)

	// The remote peers D: plain go-libp2p hosts (its default limits), each
	// calling the backends through the balancer and called by them through
	// it (outProto), a few streams each way at a time.
	var ds []host.Host
	for i := 0; i < peersFor(concurrency); i++ {
		h := testnet.NewHost(t, testnet.TCP, testnet.Options{})
		h.SetStreamHandler(outProto, echo)
		testnet.Connect(t, h, lbHost)
		ds = append(ds, h)
	}

	// A backend that refuses every stream: failover on every offer to it.
	refusing := newHost(t, refusingKey, []peer.ID{lbHost.ID()}, true)
	refusing.SetStreamHandler(wire.ForwardID, func(s network.Stream) {
		stats.refusals.Add(1)
		var req pb.Forward
		if err := wire.NewReader(s).ReadMsg(&req); err != nil {
			s.Reset()
			return
		}
		wire.WriteFinal(s, &pb.ForwardResponse{Status: pb.Status_REJECTED, Text: "soak: always refuses"})
	})
	testnet.Connect(t, refusing, lbHost)

	// Backends: a pool of live ones (three, and one more per 200 workers)
	// at any time, replaced by draining one and starting another. Each
	// balancer–backend link is one connection that carries its share of
	// the load.
	// inUse keeps a backend from being drained while a worker is opening
	// an outbound stream through it.
	type live struct {
		be    *backend.Backend
		h     host.Host
		inUse *sync.RWMutex
	}
	var mu sync.Mutex
	var pool []live
	next := 0
	start := func() {
		k := backendKeys[next%len(backendKeys)]
		next++
		h := newHost(t, k.key, []peer.ID{lbHost.ID()}, true)
		// The balancer's default TTL (a minute): Drain releases the routes
		// of a replaced backend at once. Live routes of 1-2 s, extended
		// each second, expired on a loaded machine and left only the
		// refusing backend for a while, which failed streams ("read after
		// 0 bytes: stream reset").
		be, err := backend.New(h, []peer.AddrInfo{lbInfo}, backend.WithHandshakeTimeout(30*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		be.SetStreamHandler(inProto, echo)
		// Closed here too, for when the test fails half way.
		t.Cleanup(func() { be.Close(); h.Close() })
		testnet.Eventually(t, 30*time.Second, func() bool { return registered(be) }, "backend registered")
		mu.Lock()
		pool = append(pool, live{be, h, new(sync.RWMutex)})
		mu.Unlock()
	}
	for i := 0; i < 3+concurrency/200; i++ {
		start()
	}
	rawRegister(t, refusing, lbHost.ID(), inProto, 60)
	expiring := newHost(t, expiringKey, []peer.ID{lbHost.ID()}, true)
	testnet.Connect(t, expiring, lbHost)

	// The clock starts once the network is up: on a loaded machine the
	// set-up alone can take seconds.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The load: concurrency workers, half inbound, half outbound, each
	// worker on one remote peer.
	var wg sync.WaitGroup
	errs := make(chan error, concurrency)
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			me := ds[(w/2)%len(ds)]
			for ctx.Err() == nil {
				size := rng.IntN(64 << 10)
				if rng.IntN(16) == 0 {
					size = rng.IntN(1 << 20)
				}
				payload := make([]byte, size)
				for i := 0; i+8 <= len(payload); i += 8 {
					binary.LittleEndian.PutUint64(payload[i:], rng.Uint64())
				}
				var err error
				if w%2 == 0 {
					err = inbound(me, lbHost.ID(), payload)
					if err == nil {
						stats.in.Add(1)
					}
				} else {
					mu.Lock()
					l := pool[w%len(pool)]
					l.inUse.RLock()
					mu.Unlock()
					err = outbound(l.be, me.ID(), payload)
					l.inUse.RUnlock()
					if err == nil {
						stats.out.Add(1)
					}
				}
				if err != nil {
					errs <- fmt.Errorf("worker %d: %w", w, err)
					return
				}
				stats.bytes.Add(int64(size))
			}
		}()
	}

	// The churn: every so often a route registered with a 1 s TTL and never
	// extended appears and expires, and the oldest backend is drained and
	// replaced. The load runs for d and for at least one replacement.
	churn := time.NewTicker(d / 6)
	defer churn.Stop()
	sampleEvery := max(d/10, time.Second)
	samples := time.NewTicker(sampleEvery)
	defer samples.Stop()
	timeUp := time.After(d)
	begin := time.Now()
	done := false
	t.Logf("%8s %9s %9s %9s %10s %10s", "time", "inbound", "outbound", "MiB", "heap MiB", "goroutines")
loop:
	for i := 0; ; i++ {
		if done && stats.replaced.Load() > 0 {
			break
		}
		select {
		case <-timeUp:
			done = true
		case err := <-errs:
			cancel()
			wg.Wait()
			t.Fatal(err)
		case <-samples.C:
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			t.Logf("%8v %9d %9d %9d %10d %10d", time.Since(begin).Round(time.Second), stats.in.Load(), stats.out.Load(),
				stats.bytes.Load()>>20, ms.HeapInuse>>20, runtime.NumGoroutine())
		case <-churn.C:
			if i > 10_000 {
				break loop // bounded; cannot happen before d has passed
			}
			rawRegister(t, expiring, lbHost.ID(), protocol.ID(fmt.Sprintf("/soak/expiring/%d", i)), 1)
			start()
			mu.Lock()
			old := pool[0]
			pool = pool[1:]
			mu.Unlock()
			old.inUse.Lock()
			dctx, dcancel := context.WithTimeout(context.Background(), 60*time.Second)
			if err := old.be.Drain(dctx); err != nil {
				t.Errorf("drain: %v", err)
			}
			dcancel()
			old.h.Close()
			stats.replaced.Add(1)
		}
	}
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	mu.Lock()
	for _, l := range pool {
		l.be.Close()
		l.h.Close()
	}
	mu.Unlock()
	lb.Close()
	for _, h := range append(ds, refusing, expiring, lbHost) {
		h.Close()
	}
	return stats
}

type testnetKey struct {
	key crypto.PrivKey
	id  peer.ID
}

func registered(be *backend.Backend) bool {
	for _, p := range be.Status()[0].Protocols {
		if p == inProto {
			return true
		}
	}
	return false
}

func rawRegister(t *testing.T, h host.Host, lb peer.ID, proto protocol.ID, ttl uint32) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := h.NewStream(ctx, lb, wire.RoutingRequestID)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := wire.WriteMsg(s, &pb.RoutingRequest{Protocols: []string{string(proto)}, TtlSeconds: ttl}); err != nil {
		t.Fatal(err)
	}
	var resp pb.RoutingResponse
	if err := wire.NewReader(s).ReadMsg(&resp); err != nil || resp.Status != pb.Status_OK {
		t.Fatalf("register %s: %v %v", proto, &resp, err)
	}
}

func inbound(d host.Host, lb peer.ID, payload []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := d.NewStream(ctx, lb, inProto)
	if err != nil {
		return fmt.Errorf("inbound open: %w", err)
	}
	if err := testnet.RoundTrip(s, payload); err != nil {
		return fmt.Errorf("inbound: %w", err)
	}
	return nil
}

func outbound(be *backend.Backend, e peer.ID, payload []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := be.NewStream(ctx, e, outProto)
	if err != nil {
		return fmt.Errorf("outbound open: %w", err)
	}
	if err := testnet.RoundTrip(s, payload); err != nil {
		return fmt.Errorf("outbound: %w", err)
	}
	return nil
}
