package harness

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	relayclient "github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/client"
	"github.com/libp2p/go-libp2p/p2p/protocol/circuitv2/relay"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	libp2pwebrtc "github.com/libp2p/go-libp2p/p2p/transport/webrtc"
	webtransport "github.com/libp2p/go-libp2p/p2p/transport/webtransport"
	"github.com/multiformats/go-varint"
	"google.golang.org/protobuf/proto"

	"github.com/libp2p-balancer/libp2p-balancer/backend"
	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// The protocols every responder serves. A stream's protocol picks the
// responder's behaviour, so no workload needs to talk to the responder's
// process: that is what lets the responder live in another process or
// network namespace.
const (
	// ProtoSink reads until EOF, then writes the byte count (8 bytes, big
	// endian) and closes.
	ProtoSink protocol.ID = "/bench/sink/1.0.0"
	// ProtoEcho reads until EOF (at most 64 KiB), writes it back and closes.
	ProtoEcho protocol.ID = "/bench/echo/1.0.0"
	// ProtoHold reads one byte, answers one byte, then waits for EOF.
	ProtoHold protocol.ID = "/bench/hold/1.0.0"
)

var benchProtos = []protocol.ID{ProtoSink, ProtoEcho, ProtoHold}

// Limit modes for HostSpec.Limits.
const (
	// LimitsInfinite: rcmgr.InfiniteLimits. Direct and relay setups, and the
	// remote peers of every setup, so that no limit is the bottleneck.
	LimitsInfinite = "infinite"
	// LimitsLink: rcmgr.DefaultLimits with wire.AddLimits for the link
	// peers, as a deployment configures a balancer or a backend, plus the
	// system, transient and per-remote-peer defaults raised so that 10,000
	// concurrent streams from a handful of bench peers fit (see
	// docs/performance.md).
	LimitsLink = "link"
)

// HostSpec describes a host to start.
type HostSpec struct {
	Name      string
	Transport string // "tcp" or "quic"
	Key       []byte // crypto.MarshalPrivateKey
	ListenIP  string // default 127.0.0.1
	NoListen  bool
	Limits    string
	LinkPeers []peer.ID
	Relay     bool // circuit relay v2 client transport
}

// Work is one workload half run by the opener.
type Work struct {
	Kind    string // bulk, parallel, rr, idle-open, idle-close
	Size    int64  // bytes per stream (bulk, parallel, rr)
	Streams int    // parallel streams, or idle streams to open
	Count   int    // rr streams
	Workers int    // idle-open concurrency; rr streams open at once (default 1)
}

// Result is what a workload half measured.
type Result struct {
	Bytes   int64
	Seconds float64
	Count   int
	P50ms   float64
	P99ms   float64
}

// Stats is a process snapshot.
type Stats struct {
	CPU        float64 // user+system seconds since start
	HeapInuse  uint64
	StackInuse uint64
	Goroutines int
	MaxRSS     int64 // KiB
	Active     int   // forwarded streams in flight at a balancer of this process
}

// Request is one call to a node.
type Request struct {
	Op     string
	Host   *HostSpec      `json:",omitempty"`
	Name   string         `json:",omitempty"` // host the op applies to
	Allow  []peer.ID      `json:",omitempty"`
	Target *peer.AddrInfo `json:",omitempty"`
	Via    string         `json:",omitempty"` // "host" or "backend"
	Work   *Work          `json:",omitempty"`
	Protos []string       `json:",omitempty"`
	TTL    uint32         `json:",omitempty"`
	GC     bool           `json:",omitempty"`
	Path   string         `json:",omitempty"`
	// Naive (op balancer) makes the balancer copy with io.Copy: the
	// naive-in and naive-out setups (naive.go).
	Naive bool `json:",omitempty"`
	// Key (op serve-backend) is the backend's private key, marshalled.
	Key []byte `json:",omitempty"`
}

// Response answers a Request.
type Response struct {
	Err    string         `json:",omitempty"`
	Info   *peer.AddrInfo `json:",omitempty"`
	Result *Result        `json:",omitempty"`
	Stats  *Stats         `json:",omitempty"`
	N      int            `json:",omitempty"`
}

func (r *Request) target() peer.AddrInfo {
	if r.Target == nil {
		return peer.AddrInfo{}
	}
	return *r.Target
}

// node owns the hosts of one process and runs the ops on them.
type node struct {
	mu        sync.Mutex
	hosts     map[string]host.Host
	backends  map[string]*backend.Backend
	balancers map[string]*balancer.Balancer
	relays    map[string]*relay.Relay
	held      map[string][]network.Stream
	profile   *os.File
}

func newNode() *node {
	return &node{
		hosts:     map[string]host.Host{},
		backends:  map[string]*backend.Backend{},
		balancers: map[string]*balancer.Balancer{},
		relays:    map[string]*relay.Relay{},
		held:      map[string][]network.Stream{},
	}
}

// do runs one request. It never panics on bad input; errors go back in the
// Response.
func (n *node) do(ctx context.Context, r Request) Response {
	res, err := n.dispatch(ctx, r)
	if err != nil {
		res.Err = err.Error()
	}
	return res
}

func (n *node) dispatch(ctx context.Context, r Request) (Response, error) {
	switch r.Op {
	case "host":
		return n.newHost(r.Host)
	case "serve":
		h, err := n.host(r.Name)
		if err != nil {
			return Response{}, err
		}
		serve(h.SetStreamHandler)
		return Response{}, nil
	case "balancer":
		return Response{}, n.startBalancer(r.Name, r.Allow, r.Naive)
	case "relay":
		return Response{}, n.startRelay(r.Name)
	case "backend":
		return Response{}, n.startBackend(ctx, r.Name, r.target())
	case "serve-backend":
		if len(r.Protos) != 1 {
			return Response{}, errors.New("serve-backend: one protocol")
		}
		return Response{}, n.startServeBackend(ctx, r.Name, r.Key, r.target(), protocol.ID(r.Protos[0]))
	case "reserve":
		h, err := n.host(r.Name)
		if err != nil {
			return Response{}, err
		}
		_, err = relayclient.Reserve(ctx, h, r.target())
		return Response{}, err
	case "connect":
		return Response{}, n.connect(ctx, r.Name, r.target(), r.Protos)
	case "run":
		res, err := n.run(ctx, r.Name, r.Via, r.target(), r.Work)
		return Response{Result: res}, err
	case "register":
		res, err := n.register(ctx, r.Name, r.target().ID, r.Protos, r.TTL, false)
		return Response{Result: res, N: int(res.Count)}, err
	case "release":
		res, err := n.register(ctx, r.Name, r.target().ID, r.Protos, 0, true)
		return Response{Result: res, N: int(res.Count)}, err
	case "protos":
		h, err := n.host(r.Name)
		if err != nil {
			return Response{}, err
		}
		ps, err := h.Peerstore().GetProtocols(r.target().ID)
		return Response{N: len(ps)}, err
	case "stats":
		st := n.stats(r.GC)
		return Response{Stats: &st}, nil
	case "profile-start":
		return Response{}, n.startProfile(r.Path)
	case "heap-profile":
		runtime.GC()
		f, err := os.Create(r.Path)
		if err != nil {
			return Response{}, err
		}
		defer f.Close()
		return Response{}, pprof.Lookup("heap").WriteTo(f, 0)
	case "profile-stop":
		n.stopProfile()
		return Response{}, nil
	case "close":
		n.closeAll()
		return Response{}, nil
	}
	return Response{}, fmt.Errorf("unknown op %q", r.Op)
}

func (n *node) host(name string) (host.Host, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	h := n.hosts[name]
	if h == nil {
		return nil, fmt.Errorf("no host %q", name)
	}
	return h, nil
}

// wideLimit is "no limit in practice".
var wideLimit = rcmgr.BaseLimit{
	Streams: math.MaxInt32, StreamsInbound: math.MaxInt32, StreamsOutbound: math.MaxInt32,
	Conns: math.MaxInt32, ConnsInbound: math.MaxInt32, ConnsOutbound: math.MaxInt32,
	FD: math.MaxInt32, Memory: math.MaxInt64,
}

func resourceManager(mode string, link []peer.ID) (network.ResourceManager, error) {
	switch mode {
	case LimitsInfinite, "":
		return rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(rcmgr.InfiniteLimits))
	case LimitsLink:
		limits := rcmgr.DefaultLimits
		wire.AddLimits(&limits, link...)
		// What a deployment sized for 10,000 concurrent streams sets besides
		// AddLimits: the default system limit is about 8,000 streams in
		// all, and every forwarded stream is two streams at the balancer.
		// The per-peer and per-protocol defaults are raised because a
		// handful of bench peers stand in for thousands of remote peers.
		limits.SystemBaseLimit, limits.SystemLimitIncrease = wideLimit, rcmgr.BaseLimitIncrease{}
		limits.TransientBaseLimit, limits.TransientLimitIncrease = wideLimit, rcmgr.BaseLimitIncrease{}
		limits.PeerBaseLimit, limits.PeerLimitIncrease = wideLimit, rcmgr.BaseLimitIncrease{}
		limits.ProtocolBaseLimit, limits.ProtocolLimitIncrease = wideLimit, rcmgr.BaseLimitIncrease{}
		limits.ProtocolPeerBaseLimit, limits.ProtocolPeerLimitIncrease = wideLimit, rcmgr.BaseLimitIncrease{}
		return rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits.AutoScale()))
	}
	return nil, fmt.Errorf("unknown limits mode %q", mode)
}

func (n *node) newHost(s *HostSpec) (Response, error) {
	if s == nil {
		return Response{}, errors.New("no host spec")
	}
	key, err := crypto.UnmarshalPrivateKey(s.Key)
	if err != nil {
		return Response{}, err
	}
	rm, err := resourceManager(s.Limits, s.LinkPeers)
	if err != nil {
		return Response{}, err
	}
	ip := s.ListenIP
	if ip == "" {
		ip = "127.0.0.1"
	}
	opts := []libp2p.Option{libp2p.Identity(key), libp2p.ResourceManager(rm)}
	switch s.Transport {
	case "tcp":
		opts = append(opts, libp2p.Transport(tcp.NewTCPTransport), libp2p.ListenAddrStrings("/ip4/"+ip+"/tcp/0"))
	case "quic":
		opts = append(opts, libp2p.Transport(libp2pquic.NewTransport), libp2p.ListenAddrStrings("/ip4/"+ip+"/udp/0/quic-v1"))
	case "webtransport":
		// The browser transports are go-libp2p client transports too; a
		// setup on one runs every link over it, the backend's included.
		opts = append(opts, libp2p.Transport(webtransport.New), libp2p.ListenAddrStrings("/ip4/"+ip+"/udp/0/quic-v1/webtransport"))
	case "webrtc-direct":
		opts = append(opts, libp2p.Transport(libp2pwebrtc.New), libp2p.ListenAddrStrings("/ip4/"+ip+"/udp/0/webrtc-direct"))
	default:
		return Response{}, fmt.Errorf("unknown transport %q", s.Transport)
	}
	if s.Relay {
		opts = append(opts, libp2p.EnableRelay())
	} else {
		opts = append(opts, libp2p.DisableRelay())
	}
	if s.NoListen {
		opts = append(opts, libp2p.NoListenAddrs)
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		return Response{}, err
	}
	n.mu.Lock()
	if old := n.hosts[s.Name]; old != nil {
		n.mu.Unlock()
		h.Close()
		return Response{}, fmt.Errorf("host %q exists", s.Name)
	}
	n.hosts[s.Name] = h
	n.mu.Unlock()
	return Response{Info: &peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()}}, nil
}

func (n *node) startBalancer(name string, allow []peer.ID, naiveCopy bool) error {
	h, err := n.host(name)
	if err != nil {
		return err
	}
	opts := []balancer.Option{balancer.WithLogger(quietLogger()),
		// The outbound targets listen on loopback or on the namespaces'
		// private network, which the default dial policy refuses; no
		// dial rate limit in a benchmark.
		balancer.WithDialPolicy(balancer.DialPolicy{Loopback: true, Private: true})}
	for _, p := range allow {
		opts = append(opts, balancer.WithAllow(p))
	}
	if naiveCopy {
		opts = append(opts, naiveOption())
	}
	b, err := balancer.New(h, opts...)
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.balancers[name] = b
	n.mu.Unlock()
	return nil
}

func (n *node) startRelay(name string) error {
	h, err := n.host(name)
	if err != nil {
		return err
	}
	rc := relay.DefaultResources() // default BufferSize (2 KiB)
	rc.Limit = nil                 // no duration or data limit per circuit
	rc.MaxCircuits = 1 << 20
	rc.MaxReservations = 1 << 20
	rc.MaxReservationsPerIP = 1 << 20
	rc.MaxReservationsPerASN = 1 << 20
	r, err := relay.New(h, relay.WithResources(rc), relay.WithInfiniteLimits())
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.relays[name] = r
	n.mu.Unlock()
	return nil
}

// startBackend serves the bench protocols behind the balancer lb and waits
// until the balancer has granted all of them.
func (n *node) startBackend(ctx context.Context, name string, lb peer.AddrInfo) error {
	h, err := n.host(name)
	if err != nil {
		return err
	}
	b, err := backend.New(h, []peer.AddrInfo{lb}, backend.WithLogger(quietLogger()))
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.backends[name] = b
	n.mu.Unlock()
	serve(b.SetStreamHandler)
	for {
		st := b.Status()[0]
		if len(st.Protocols) >= len(benchProtos) && containsAll(st.Protocols, benchProtos) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("backend %s: registration not granted (last error %v): %w", name, st.LastError, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func containsAll(have, want []protocol.ID) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

// connect connects host name to target and, when protos are given, waits
// until identify says target supports them, so that streams are negotiated
// lazily as in a warm deployment.
func (n *node) connect(ctx context.Context, name string, target peer.AddrInfo, protos []string) error {
	h, err := n.host(name)
	if err != nil {
		return err
	}
	h.Peerstore().AddAddrs(target.ID, target.Addrs, peerstore.PermanentAddrTTL)
	if err := h.Connect(network.WithAllowLimitedConn(ctx, "bench"), target); err != nil {
		return err
	}
	if len(protos) == 0 {
		return nil
	}
	want := make([]protocol.ID, len(protos))
	for i, p := range protos {
		want[i] = protocol.ID(p)
	}
	for {
		have, _ := h.Peerstore().SupportsProtocols(target.ID, want...)
		if len(have) == len(want) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s does not see %v on %s: %w", name, want, target.ID, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (n *node) stats(gc bool) Stats {
	if gc {
		runtime.GC()
		runtime.GC()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	cpu := float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
	st := Stats{
		CPU: cpu, HeapInuse: ms.HeapInuse, StackInuse: ms.StackInuse,
		Goroutines: runtime.NumGoroutine(), MaxRSS: ru.Maxrss,
	}
	n.mu.Lock()
	for _, b := range n.balancers {
		st.Active += b.ActiveStreams()
	}
	n.mu.Unlock()
	return st
}

func (n *node) startProfile(path string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.profile != nil {
		return errors.New("profile already running")
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return err
	}
	n.profile = f
	return nil
}

func (n *node) stopProfile() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.profile != nil {
		pprof.StopCPUProfile()
		n.profile.Close()
		n.profile = nil
	}
}

// closeAll closes balancers, backends and relays, then their hosts.
func (n *node) closeAll() {
	n.stopProfile()
	n.mu.Lock()
	defer n.mu.Unlock()
	for name, ss := range n.held {
		for _, s := range ss {
			s.Reset()
		}
		delete(n.held, name)
	}
	for name, b := range n.backends {
		b.Close()
		delete(n.backends, name)
	}
	for name, b := range n.balancers {
		b.Close()
		delete(n.balancers, name)
	}
	for name, r := range n.relays {
		r.Close()
		delete(n.relays, name)
	}
	for name, h := range n.hosts {
		h.Close()
		delete(n.hosts, name)
	}
}

// serve registers the three responder behaviours with set (a host's or a
// backend's SetStreamHandler).
func serve(set func(protocol.ID, network.StreamHandler)) {
	set(ProtoSink, handleSink)
	set(ProtoEcho, handleEcho)
	set(ProtoHold, handleHold)
}

var sinkBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

func handleSink(s network.Stream) {
	bp := sinkBufs.Get().(*[]byte)
	defer sinkBufs.Put(bp)
	var total int64
	for {
		m, err := s.Read(*bp)
		total += int64(m)
		if err == io.EOF {
			break
		}
		if err != nil {
			s.Reset()
			return
		}
	}
	var out [8]byte
	binary.BigEndian.PutUint64(out[:], uint64(total))
	if _, err := s.Write(out[:]); err != nil {
		s.Reset()
		return
	}
	s.Close()
}

func handleEcho(s network.Stream) {
	var buf [1024]byte
	got := 0
	for {
		m, err := s.Read(buf[got:])
		got += m
		if err == io.EOF {
			break
		}
		if err != nil || got == len(buf) {
			s.Reset()
			return
		}
	}
	if _, err := s.Write(buf[:got]); err != nil {
		s.Reset()
		return
	}
	s.Close()
}

func handleHold(s network.Stream) {
	var one [1]byte
	if _, err := io.ReadFull(s, one[:]); err != nil {
		s.Reset()
		return
	}
	if _, err := s.Write(one[:]); err != nil {
		s.Reset()
		return
	}
	for {
		if _, err := s.Read(one[:]); err != nil {
			if err == io.EOF {
				s.Close()
			} else {
				s.Reset()
			}
			return
		}
	}
}

// register sends one routing request with protos (or releases them) from
// host name straight over the wire, as the backend library would, and
// times the exchange.
func (n *node) register(ctx context.Context, name string, lb peer.ID, protos []string, ttl uint32, release bool) (*Result, error) {
	h, err := n.host(name)
	if err != nil {
		return &Result{}, err
	}
	req := &pb.RoutingRequest{TtlSeconds: ttl}
	if release {
		req.Release = protos
	} else {
		req.Protocols = protos
	}
	start := time.Now()
	s, err := h.NewStream(ctx, lb, wire.RoutingRequestID)
	if err != nil {
		return &Result{}, err
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(dl)
	}
	if err := wire.WriteMsg(s, req); err != nil {
		s.Reset()
		return &Result{}, err
	}
	// The response lists every route of the backend, so past a few
	// hundred routes it outgrows wire.MaxMessageSize and wire.Reader would
	// refuse it. Read it with a larger cap and report its size, so the
	// benchmark shows the problem instead of stopping at it.
	var resp pb.RoutingResponse
	size, err := readLarge(s, &resp)
	if err != nil {
		s.Reset()
		return &Result{}, err
	}
	el := time.Since(start)
	if resp.GetStatus() != pb.Status_OK {
		return &Result{}, &wire.StatusError{Status: resp.GetStatus(), Text: resp.GetText()}
	}
	return &Result{Seconds: el.Seconds(), Count: len(resp.GetProtocols()), Bytes: int64(size)}, nil
}

// readLarge reads one length-prefixed message of up to 1 MiB.
func readLarge(r io.Reader, msg proto.Message) (int, error) {
	n, err := varint.ReadUvarint(wire.NewReader(r))
	if err != nil {
		return 0, err
	}
	if n > 1<<20 {
		return 0, fmt.Errorf("message of %d bytes", n)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		return 0, err
	}
	return int(n), proto.Unmarshal(buf, msg)
}
