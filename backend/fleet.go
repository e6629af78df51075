package backend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	madns "github.com/multiformats/go-multiaddr-dns"
)

// DefaultResolveInterval is FleetConfig.Interval's default: how often a
// Fleet resolves its DNS name again.
const DefaultResolveInterval = 30 * time.Second

const (
	// resolveTimeout bounds one resolution of a Fleet's name.
	resolveTimeout = 10 * time.Second
	// resolveRetry is the longest wait after a failed resolution: a name
	// that does not resolve at start (a headless Service with no ready
	// pod yet) should not leave the backend unregistered for a whole
	// interval.
	resolveRetry = 5 * time.Second
	// maxResolveDepth bounds the chain of names a Fleet follows: a dnsaddr
	// record may name another /dnsaddr or a /dns4 address.
	maxResolveDepth = 4
	// maxInstances bounds the instances one name may bring.
	maxInstances = 64
	// fleetFlushGrace is the wait between the last stream of a removed
	// instance ending and its host closing, so that go-yamux sends the
	// stream's last frames (see internal/node.FlushGrace, the same value).
	fleetFlushGrace = 250 * time.Millisecond
)

// FleetConfig describes a Fleet.
type FleetConfig struct {
	// Name names the balancer instances: /dnsaddr/DOMAIN, whose
	// _dnsaddr.DOMAIN TXT records (dnsaddr=/ip4/…/tcp/…/p2p/ID) list them,
	// or /dns/DOMAIN/tcp/PORT/p2p/ID (also dns4, dns6, and UDP transports
	// such as /udp/PORT/quic-v1), whose A or AAAA records do. Names found
	// in records are followed, up to 4 deep. Required.
	Name ma.Multiaddr
	// NewHost makes the host for one instance, given the instance's peer
	// ID and resolved address (say, to raise the resource manager's limits
	// for that peer). Each instance gets its own host, because instances
	// share one peer ID and a host keeps a single set of connections per
	// peer ID. The Fleet closes the hosts it made. Required.
	NewHost func(instance peer.AddrInfo) (host.Host, error)
	// Options apply to the Backend of each instance.
	Options []Option
	// Resolver resolves Name; default madns.DefaultResolver (the system's
	// resolver).
	Resolver *madns.Resolver
	// Interval is how often Name is resolved again; default
	// DefaultResolveInterval. The system's resolver does not report
	// record TTLs, so the interval is fixed: set it below the records'
	// TTL to follow changes sooner.
	Interval time.Duration
}

// Fleet registers with every balancer instance a DNS name resolves to, and
// follows the name as instances come and go: it resolves the name every
// Interval, starts a host and a Backend for each new instance, and drains
// an instance that is gone from the records (its routes are released at
// once, its host closed once its streams in flight end). An instance is one
// resolved address, so each instance should be published under one address.
//
// A failed or empty resolution changes nothing: the Fleet keeps the
// instances it has, since a resolver outage is likelier than every balancer
// being gone.
type Fleet struct {
	cfg FleetConfig
	log *slog.Logger

	ctx     context.Context // cancelled by Close: drains of removed instances end
	cancel  context.CancelFunc
	stop    context.CancelFunc // ends run, which has its own context
	runDone chan struct{}
	wg      sync.WaitGroup // run and the drains of removed instances

	closeOnce sync.Once

	mu       sync.Mutex
	handlers map[protocol.ID]Acceptor
	live     map[string]*instance // by resolved address
	failing  bool                 // the last resolution failed (logged once)
}

// instance is one balancer instance: its resolved address, the host made
// for it, and the Backend registering through that host.
type instance struct {
	addr ma.Multiaddr
	h    host.Host
	be   *Backend
}

// Instance is one balancer instance a Fleet registers with.
type Instance struct {
	// Addr is the address the name resolved to.
	Addr ma.Multiaddr
	// Backend registers with the instance.
	Backend *Backend
}

// NewFleet checks cfg and starts following its name; the first resolution
// runs at once, in the background. Errors name the setting at fault.
func NewFleet(cfg FleetConfig) (*Fleet, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	if cfg.NewHost == nil {
		return nil, errors.New("backend: fleet: no NewHost")
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultResolveInterval
	}
	if cfg.Resolver == nil {
		cfg.Resolver = madns.DefaultResolver
	}
	c := defaultConfig()
	for _, o := range cfg.Options {
		_ = o(&c) // checked
	}
	ctx, cancel := context.WithCancel(context.Background())
	runCtx, stop := context.WithCancel(ctx)
	f := &Fleet{
		cfg:      cfg,
		log:      c.log.With("component", "fleet", "name", cfg.Name),
		ctx:      ctx,
		cancel:   cancel,
		stop:     stop,
		runDone:  make(chan struct{}),
		handlers: map[protocol.ID]Acceptor{},
		live:     map[string]*instance{},
	}
	f.wg.Add(1)
	go f.run(runCtx)
	return f, nil
}

// Check reports the first invalid setting of c other than NewHost (Name,
// Interval, Options), without starting anything, so that a command can
// refuse it before it touches its identity file or the network.
func (c FleetConfig) Check() error {
	if err := CheckName(c.Name); err != nil {
		return err
	}
	if c.Interval < 0 {
		return fmt.Errorf("backend: fleet: resolve interval %v: must not be negative", c.Interval)
	}
	return CheckOptions(c.Options...)
}

// IsName says whether a is a DNS name a Fleet follows: it starts with
// /dnsaddr, /dns, /dns4 or /dns6.
func IsName(a ma.Multiaddr) bool {
	if len(a) == 0 {
		return false
	}
	switch a[0].Protocol().Code {
	case ma.P_DNSADDR, ma.P_DNS, ma.P_DNS4, ma.P_DNS6:
		return true
	}
	return false
}

// CheckName reports why a cannot be a Fleet's name: it must be a DNS name
// (IsName), and a /dns, /dns4 or /dns6 name must end in /p2p/PEER_ID, since
// A and AAAA records carry no peer ID.
func CheckName(a ma.Multiaddr) error {
	if !IsName(a) {
		return fmt.Errorf("backend: fleet name %q: want /dnsaddr/DOMAIN or /dns/DOMAIN/tcp/PORT/p2p/PEER_ID", a)
	}
	if a[0].Protocol().Code == ma.P_DNSADDR {
		return nil
	}
	if _, err := peer.AddrInfoFromP2pAddr(a); err != nil {
		return fmt.Errorf("backend: fleet name %q: want a multiaddr ending in /p2p/PEER_ID: %w", a, err)
	}
	return nil
}

// SetStreamAcceptor serves pid on every instance, those found later too
// (see Backend.SetStreamAcceptor).
func (f *Fleet) SetStreamAcceptor(pid protocol.ID, accept Acceptor) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.handlers[pid] = accept
	for _, in := range f.live {
		in.be.SetStreamAcceptor(pid, accept)
	}
}

// SetStreamHandler serves pid on every instance (see
// Backend.SetStreamHandler).
func (f *Fleet) SetStreamHandler(pid protocol.ID, handler network.StreamHandler) {
	f.SetStreamAcceptor(pid, func(peer.ID, protocol.ID) (network.StreamHandler, error) { return handler, nil })
}

// RemoveStreamHandler stops serving pid and releases its route with every
// instance.
func (f *Fleet) RemoveStreamHandler(pid protocol.ID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.handlers, pid)
	for _, in := range f.live {
		in.be.RemoveStreamHandler(pid)
	}
}

// Instances returns the instances in use, ordered by address. Those removed
// from the records and still draining are not listed.
func (f *Fleet) Instances() []Instance {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Instance, 0, len(f.live))
	for _, in := range f.live {
		out = append(out, Instance{Addr: in.addr, Backend: in.be})
	}
	slices.SortFunc(out, func(a, b Instance) int { return strings.Compare(a.Addr.String(), b.Addr.String()) })
	return out
}

// Backends returns the Backends of the instances in use, in the order of
// Instances.
func (f *Fleet) Backends() []*Backend {
	ins := f.Instances()
	out := make([]*Backend, len(ins))
	for i, in := range ins {
		out[i] = in.Backend
	}
	return out
}

// Status returns the registration with every instance in use, in the order
// of Instances.
func (f *Fleet) Status() []Status {
	var out []Status
	for _, b := range f.Backends() {
		out = append(out, b.Status()...)
	}
	return out
}

// NewStream opens a stream to p through the instances, trying them in turn
// as NewStreamThrough does.
func (f *Fleet) NewStream(ctx context.Context, p peer.ID, pids ...protocol.ID) (network.Stream, error) {
	bs := f.Backends()
	if len(bs) == 0 {
		return nil, fmt.Errorf("backend: no balancer instance found under %s yet", f.cfg.Name)
	}
	return NewStreamThrough(ctx, bs, p, pids...)
}

// Drain stops following the name, drains every instance (Backend.Drain:
// routes released, streams in flight waited for until ctx is done), then
// closes the Fleet. It returns ctx's error if streams were still open.
func (f *Fleet) Drain(ctx context.Context) error {
	f.stop()
	<-f.runDone
	f.mu.Lock()
	live := f.takeLive()
	f.mu.Unlock()
	errs := make([]error, len(live))
	var wg sync.WaitGroup
	for i, in := range live {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = in.be.Drain(ctx)
		}()
	}
	wg.Wait()
	var err error
	for _, e := range errs {
		if e != nil {
			err = e
			break
		}
	}
	if err == nil && len(live) > 0 {
		flush(ctx)
	}
	for _, in := range live {
		in.h.Close()
	}
	f.Close()
	return err
}

// Close stops following the name, releases the routes with every instance
// within the handshake timeout and closes the hosts, which resets the
// streams still open through them. A second Close returns net.ErrClosed.
func (f *Fleet) Close() error {
	err := net.ErrClosed
	f.closeOnce.Do(func() {
		f.cancel()
		f.wg.Wait()
		f.mu.Lock()
		live := f.takeLive()
		f.mu.Unlock()
		var wg sync.WaitGroup
		for _, in := range live {
			wg.Add(1)
			go func() {
				defer wg.Done()
				in.be.Close()
				in.h.Close()
			}()
		}
		wg.Wait()
		err = nil
	})
	return err
}

// takeLive empties the set of instances in use and returns what it held;
// f.mu is held.
func (f *Fleet) takeLive() []*instance {
	out := make([]*instance, 0, len(f.live))
	for _, in := range f.live {
		out = append(out, in)
	}
	clear(f.live)
	return out
}

// run resolves the name at once, then every Interval (sooner after a
// failure), until ctx ends.
func (f *Fleet) run(ctx context.Context) {
	defer f.wg.Done()
	defer close(f.runDone)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		next := f.cfg.Interval
		if err := f.refresh(ctx); err != nil {
			next = min(next, resolveRetry)
		}
		t.Reset(next)
	}
}

// refresh resolves the name once and brings the instances in use in line
// with the answer.
func (f *Fleet) refresh(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	found, err := f.resolve(rctx)
	cancel()
	if err == nil && len(found) == 0 {
		err = errors.New("no instance in the answer")
	}
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		f.mu.Lock()
		first := !f.failing
		f.failing = true
		n := len(f.live)
		f.mu.Unlock()
		if first {
			f.log.Warn("resolving balancer instances failed; keeping those known", "instances", n, "retry_in", min(f.cfg.Interval, resolveRetry), "err", err)
		}
		return err
	}
	f.mu.Lock()
	if f.failing {
		f.log.Info("resolving balancer instances works again", "instances", len(found))
	}
	f.failing = false
	var gone []*instance
	for key, in := range f.live {
		if _, ok := found[key]; !ok {
			gone = append(gone, in)
			delete(f.live, key)
		}
	}
	var added []ma.Multiaddr
	for key, a := range found {
		if f.live[key] == nil {
			added = append(added, a)
		}
	}
	f.mu.Unlock()

	for _, in := range gone {
		f.retire(in)
	}
	for _, a := range added {
		if err := f.add(ctx, a); err != nil {
			// Tried again at the next resolution.
			f.log.Warn("starting a host for a balancer instance failed", "instance", a, "err", err)
		}
	}
	return nil
}

// resolve returns the instances the name resolves to now, by address.
func (f *Fleet) resolve(ctx context.Context) (map[string]ma.Multiaddr, error) {
	todo := []ma.Multiaddr{f.cfg.Name}
	found := map[string]ma.Multiaddr{}
	for depth := 0; len(todo) > 0 && depth < maxResolveDepth; depth++ {
		var next []ma.Multiaddr
		for _, a := range todo {
			if !hasDNS(a) {
				ai, err := peer.AddrInfoFromP2pAddr(a)
				if err != nil || len(ai.Addrs) == 0 {
					continue // no peer ID, or nothing to dial: not an instance
				}
				if len(found) < maxInstances {
					found[a.String()] = a
				}
				continue
			}
			rs, err := f.cfg.Resolver.Resolve(ctx, a)
			if err != nil {
				return nil, err
			}
			next = append(next, rs...)
		}
		todo = next
	}
	return found, nil
}

// hasDNS says whether a still has a component to resolve.
func hasDNS(a ma.Multiaddr) bool {
	for _, c := range a {
		switch c.Protocol().Code {
		case ma.P_DNSADDR, ma.P_DNS, ma.P_DNS4, ma.P_DNS6:
			return true
		}
	}
	return false
}

// add starts a host and a Backend for a new instance and puts it in use.
func (f *Fleet) add(ctx context.Context, addr ma.Multiaddr) error {
	ai, err := peer.AddrInfoFromP2pAddr(addr)
	if err != nil {
		return err
	}
	h, err := f.cfg.NewHost(*ai)
	if err != nil {
		return err
	}
	be, err := New(h, []peer.AddrInfo{*ai}, append(slices.Clip(f.cfg.Options), WithLogger(f.log.With("instance", addr)))...)
	if err != nil {
		h.Close()
		return err
	}
	in := &instance{addr: addr, h: h, be: be}
	f.mu.Lock()
	if ctx.Err() != nil {
		f.mu.Unlock()
		be.Close()
		h.Close()
		return nil
	}
	for pid, a := range f.handlers {
		be.SetStreamAcceptor(pid, a)
	}
	f.live[addr.String()] = in
	f.mu.Unlock()
	f.log.Info("balancer instance added", "instance", addr)
	return nil
}

// retire drains an instance gone from the records: its routes are released
// at once, so that it forwards no new stream here, and its host is closed
// when the streams in flight through it have ended, or when the Fleet
// closes.
func (f *Fleet) retire(in *instance) {
	f.log.Info("balancer instance gone from the records; draining", "instance", in.addr, "streams", in.be.StreamsInFlight())
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		if err := in.be.Drain(f.ctx); err == nil {
			flush(f.ctx)
		}
		in.h.Close()
		f.log.Info("balancer instance drained; host closed", "instance", in.addr)
	}()
}

// flush waits fleetFlushGrace, or until ctx is done.
func flush(ctx context.Context) {
	t := time.NewTimer(fleetFlushGrace)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
