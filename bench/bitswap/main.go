// Command bitswap measures a real protocol through the balancer (issue 13):
// boxo's bitswap server, unmodified, behind backend.NewHost, and a stock
// boxo bitswap client that knows only the balancer's peer ID, fetching
// blocks it wants; the same fetch straight from a bitswap server is the
// baseline. Blocks travel on streams the server opens to the client
// (bitswap answers on its own streams), so through the balancer they take
// the outbound path.
//
// It is a module of its own so that boxo stays out of the library's
// dependencies (users who import balancer or backend must not inherit it).
//
//	cd bench/bitswap && go run .                 # 255 × 256 KiB, TCP and QUIC, median of 3
//	go run . -smoke                               # a few small blocks, one run (CI)
//	go run . -rtt 20ms                            # 20 ms of round trip between the client and the balancer (or the server)
//
// Every host is in this process, on 127.0.0.1, with go-libp2p's default
// security and muxer. docs/performance.md explains the figures.
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/ipfs/boxo/bitswap"
	bsnet "github.com/ipfs/boxo/bitswap/network/bsnet"
	"github.com/ipfs/boxo/blockstore"
	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	ds "github.com/ipfs/go-datastore"
	dssync "github.com/ipfs/go-datastore/sync"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	mh "github.com/multiformats/go-multihash"

	"github.com/libp2p-balancer/libp2p-balancer/backend"
	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
)

func main() { os.Exit(run(os.Args[1:])) }

type config struct {
	blocks     int
	blockSize  int
	runs       int
	transports []string
	rtt        time.Duration
	timeout    time.Duration
}

func run(args []string) int {
	fs := flag.NewFlagSet("bitswap", flag.ContinueOnError)
	var (
		nBlocks    = fs.Int("blocks", 255, "blocks to fetch")
		blockKiB   = fs.Int("block-kib", 256, "block size in KiB")
		runs       = fs.Int("runs", 3, "runs; each figure is the median")
		transports = fs.String("transports", "tcp,quic", "comma-separated: tcp, quic")
		rtt        = fs.Duration("rtt", 0, "round-trip time added between the client and the host it dials (a delaying proxy in this process)")
		smoke      = fs.Bool("smoke", false, "a few small blocks, one run: shows that the path works (CI)")
		timeout    = fs.Duration("timeout", 10*time.Minute, "give up after this long")
	)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg := config{blocks: *nBlocks, blockSize: *blockKiB << 10, runs: *runs, transports: strings.Split(*transports, ","), rtt: *rtt, timeout: *timeout}
	if *smoke {
		cfg.blocks, cfg.blockSize, cfg.runs = 8, 64<<10, 1
	}
	if cfg.blocks <= 0 || cfg.blockSize <= 0 || cfg.runs <= 0 {
		fmt.Fprintln(os.Stderr, "bitswap: sizes and counts must be positive")
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.timeout)
	defer cancel()
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))

	fmt.Printf("bitswap fetch: %d blocks × %d KiB, median of %d run(s), RTT added client↔first hop: %v; started %s\n\n",
		cfg.blocks, cfg.blockSize>>10, cfg.runs, cfg.rtt, time.Now().UTC().Format(time.RFC3339))
	fmt.Println("| transport | direct MB/s | balancer MB/s | balancer ÷ direct |")
	fmt.Println("|---|--:|--:|--:|")
	failed := false
	for _, tr := range cfg.transports {
		var direct, lb []float64
		for i := range cfg.runs {
			// Taking turns, so that other load falls on both alike.
			d, err := fetch(ctx, cfg, tr, false)
			if err != nil {
				fmt.Fprintf(os.Stderr, "bitswap: %s direct, run %d: %v\n", tr, i+1, err)
				failed = true
				break
			}
			b, err := fetch(ctx, cfg, tr, true)
			if err != nil {
				fmt.Fprintf(os.Stderr, "bitswap: %s through the balancer, run %d: %v\n", tr, i+1, err)
				failed = true
				break
			}
			direct, lb = append(direct, d), append(lb, b)
		}
		if len(direct) == 0 {
			continue
		}
		md, mb := median(direct), median(lb)
		fmt.Printf("| %s | %.0f | %.0f | %.2f |\n", tr, md, mb, mb/md)
	}
	if failed {
		return 1
	}
	return 0
}

// fetch builds fresh hosts, serves cfg.blocks random blocks from a bitswap
// server (behind a balancer when through is set) and times a client
// fetching all of them. It returns MB/s (10^6 bytes).
func fetch(ctx context.Context, cfg config, tr string, through bool) (float64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var closers []io.Closer
	defer func() {
		for _, c := range slices.Backward(closers) {
			c.Close()
		}
	}()
	newHost := func(link ...peer.ID) (host.Host, error) {
		h, err := newHost(tr, link...)
		if err == nil {
			closers = append(closers, h)
		}
		return h, err
	}

	// The server: a plain host, or a backend of balancer lb as a host.
	srvHost, err := newHost()
	if err != nil {
		return 0, err
	}
	var (
		serveOn host.Host = srvHost
		dialed            = peer.AddrInfo{ID: srvHost.ID(), Addrs: srvHost.Addrs()}
	)
	if through {
		lbh, err := newHost(srvHost.ID())
		if err != nil {
			return 0, err
		}
		lb, err := balancer.New(lbh, balancer.WithAllow(srvHost.ID()),
			balancer.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))),
			// The client listens on loopback, which the default dial
			// policy refuses for outbound streams.
			balancer.WithDialPolicy(balancer.DialPolicy{Loopback: true}))
		if err != nil {
			return 0, err
		}
		closers = append(closers, lb)
		be, err := backend.New(srvHost, []peer.AddrInfo{{ID: lbh.ID(), Addrs: lbh.Addrs()}},
			backend.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
		if err != nil {
			return 0, err
		}
		closers = append(closers, be)
		serveOn = backend.NewHost(be)
		dialed = peer.AddrInfo{ID: lbh.ID(), Addrs: lbh.Addrs()}
	}
	srvStore := blockstore.NewBlockstore(dssync.MutexWrap(ds.NewMapDatastore()))
	keys := make([]cid.Cid, cfg.blocks)
	for i := range keys {
		data := make([]byte, cfg.blockSize)
		rand.Read(data)
		sum, err := mh.Sum(data, mh.SHA2_256, -1)
		if err != nil {
			return 0, err
		}
		b, err := blocks.NewBlockWithCid(data, cid.NewCidV1(cid.Raw, sum))
		if err != nil {
			return 0, err
		}
		if err := srvStore.Put(ctx, b); err != nil {
			return 0, err
		}
		keys[i] = b.Cid()
	}
	server := bitswap.New(ctx, bsnet.NewFromIpfsHost(serveOn), nil, srvStore)
	closers = append(closers, server)
	if through {
		if err := waitRoutes(ctx, serveOn.(*backend.Host).Backend()); err != nil {
			return 0, err
		}
	}

	// The client: stock bitswap on a plain host that knows one peer, the
	// balancer (or the server, for the direct baseline).
	cliHost, err := newHost()
	if err != nil {
		return 0, err
	}
	if cfg.rtt > 0 {
		if dialed, err = delayed(ctx, dialed, cfg.rtt, &closers); err != nil {
			return 0, err
		}
	}
	client := bitswap.New(ctx, bsnet.NewFromIpfsHost(cliHost), nil,
		blockstore.NewBlockstore(dssync.MutexWrap(ds.NewMapDatastore())), bitswap.WithServerEnabled(false))
	closers = append(closers, client)
	if err := cliHost.Connect(ctx, dialed); err != nil {
		return 0, fmt.Errorf("client connecting: %w", err)
	}

	start := time.Now()
	sess := client.NewSession(ctx)
	ch, err := sess.GetBlocks(ctx, keys)
	if err != nil {
		return 0, err
	}
	got := 0
	for b := range ch {
		if len(b.RawData()) != cfg.blockSize {
			return 0, fmt.Errorf("block %s: %d bytes", b.Cid(), len(b.RawData()))
		}
		got++
	}
	if got != len(keys) {
		return 0, fmt.Errorf("got %d of %d blocks: %w", got, len(keys), context.Cause(ctx))
	}
	secs := time.Since(start).Seconds()
	return float64(cfg.blocks*cfg.blockSize) / 1e6 / secs, nil
}

// waitRoutes returns once the balancer has granted the backend bitswap's
// protocols, so that the client's identify lists them.
func waitRoutes(ctx context.Context, b *backend.Backend) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		st := b.Status()[0]
		for _, p := range st.Protocols {
			if strings.HasPrefix(string(p), "/ipfs/bitswap/1.2") {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("bitswap routes not granted (last error %v): %w", st.LastError, ctx.Err())
		case <-tick.C:
		}
	}
}

// newHost starts a host on transport tr. Hosts with link peers (the
// balancer and its backend) get the default limits with wire.AddLimits, as
// a deployment configures them; the rest get no limits, as in bench.
func newHost(tr string, link ...peer.ID) (host.Host, error) {
	limits := rcmgr.InfiniteLimits
	if len(link) > 0 {
		cfg := rcmgr.DefaultLimits
		wire.AddLimits(&cfg, link...)
		limits = cfg.AutoScale()
	}
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits))
	if err != nil {
		return nil, err
	}
	opts := []libp2p.Option{libp2p.ResourceManager(rm), libp2p.DisableRelay()}
	switch tr {
	case "tcp":
		opts = append(opts, libp2p.Transport(tcp.NewTCPTransport), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	case "quic":
		opts = append(opts, libp2p.Transport(libp2pquic.NewTransport), libp2p.ListenAddrStrings("/ip4/127.0.0.1/udp/0/quic-v1"))
	default:
		return nil, fmt.Errorf("unknown transport %q", tr)
	}
	return libp2p.New(opts...)
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

var errNoAddr = errors.New("no loopback TCP or QUIC address")

// firstAddr returns the first address of ai, which newHost makes the only
// one (loopback, one transport).
func firstAddr(ai peer.AddrInfo) (ma.Multiaddr, error) {
	if len(ai.Addrs) == 0 {
		return nil, errNoAddr
	}
	return ai.Addrs[0], nil
}
