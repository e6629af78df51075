// Package sidecar puts existing TCP services behind a libp2p balancer, so
// that a program in any language can be a backend: what `ipfs p2p` does for
// one node, done through the balancer. It is what `balancer backend` runs.
//
// A Sidecar registers protocols with one or more balancer instances through
// the backend package, and bridges each stream forwarded on a protocol to a
// new TCP connection to that protocol's local service (a Route), optionally
// opening it with a PROXY protocol v2 header that names the remote peer (see
// package proxyproto). It also opens local TCP listeners (an Outbound) whose
// every connection is carried through a balancer as a stream to a remote
// peer, which sees the balancer's peer ID. Bytes, half-closes and resets are
// carried both ways by package pipe.
//
// Several balancer instances may share one peer ID (they are the same
// balancer scaled out). One go-libp2p host holds a single connection set
// per peer ID, so the Sidecar runs one host per instance of a shared ID, all
// with the sidecar's one identity, and registers through each. Instances
// may also be found through DNS (Config.Names): a backend.Fleet per name
// follows its records, with a host per instance found.
package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	madns "github.com/multiformats/go-multiaddr-dns"
	manet "github.com/multiformats/go-multiaddr/net"

	"github.com/libp2p-balancer/libp2p-balancer/backend"
	"github.com/libp2p-balancer/libp2p-balancer/internal/node"
	"github.com/libp2p-balancer/libp2p-balancer/pipe"
	"github.com/libp2p-balancer/libp2p-balancer/proxyproto"
)

// Config describes a Sidecar.
type Config struct {
	// Key is the backend's identity, the one the balancers allow. Required.
	Key crypto.PrivKey
	// Balancers are the balancer instances to register with, one entry
	// per instance. Instances may share a peer ID. Balancers or Names are
	// required.
	Balancers []peer.AddrInfo
	// Names are DNS names of balancer instances (/dnsaddr/DOMAIN, or
	// /dns/DOMAIN/tcp/PORT/p2p/PEER_ID and the like), resolved every
	// ResolveInterval: the sidecar registers with every instance a name
	// lists, and drains one that leaves the records (see backend.Fleet).
	Names []ma.Multiaddr
	// ResolveInterval is how often Names are resolved again; 0 means
	// backend.DefaultResolveInterval (30 s).
	ResolveInterval time.Duration
	// Resolver resolves Names; nil means the system's resolver.
	Resolver *madns.Resolver
	// Routes map protocols to local TCP services.
	Routes []Route
	// Outbound are local listeners carried out through a balancer.
	Outbound []Outbound
	// OutboundPublic allows an Outbound listener on an address that is not
	// loopback. Whoever reaches an outbound listener speaks to remote
	// peers as the balancer's peer ID, with no authentication, so by
	// default only loopback addresses (127.0.0.0/8, ::1, localhost) are
	// allowed, as for the balancer's admin listener.
	OutboundPublic bool
	// ProxyProtocol prepends a PROXY protocol v2 header to every TCP
	// connection opened for a Route.
	ProxyProtocol bool
	// ProxyProtocolDatagram writes the PROXY header of a remote peer that
	// reached the balancer over UDP (QUIC, WebTransport, WebRTC) with the
	// DGRAM transport, as the PROXY specification has it. Off by default:
	// nginx ignores the addresses of any header that is not STREAM, so
	// by default such a source is written as STREAM (TCP) with its UDP
	// port. See proxyproto.Header.Datagram.
	ProxyProtocolDatagram bool
	// TTL is the route lifetime asked of the balancers; 0 asks for their
	// default.
	TTL time.Duration
	// DialTimeout bounds connecting to a Route's service. Default 5 s.
	DialTimeout time.Duration
	// Logger receives structured logs; default slog.Default().
	Logger *slog.Logger
}

// DefaultDialTimeout is Config.DialTimeout's default.
const DefaultDialTimeout = 5 * time.Second

// Sidecar is a running sidecar. Create it with Start and stop it with
// Shutdown or Close.
type Sidecar struct {
	cfg    Config
	log    *slog.Logger
	id     peer.ID
	hosts  []*backendHost
	fleets []*backend.Fleet // one per Config.Names

	listeners []net.Listener

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // accept loops and the status watcher

	// active holds the streams being bridged: Shutdown waits for them,
	// stopAccepting refuses new ones, Close resets them.
	active pipe.Group

	closeOnce sync.Once
}

// backendHost is one host and the backend running on it, registered with one
// instance of each balancer peer ID.
type backendHost struct {
	host host.Host
	be   *backend.Backend
}

// Start checks cfg, starts the hosts, registers the routes and opens the
// outbound listeners. Errors name the setting at fault.
func Start(cfg Config) (*Sidecar, error) {
	if cfg.Key == nil {
		return nil, errors.New("sidecar: no identity key")
	}
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	id, err := peer.IDFromPrivateKey(cfg.Key)
	if err != nil {
		return nil, fmt.Errorf("sidecar: identity key: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Sidecar{cfg: cfg, log: cfg.Logger, id: id, ctx: ctx, cancel: cancel}

	// Outbound listeners first: a port in use is a configuration error
	// that should stop us before anything registers.
	for _, o := range cfg.Outbound {
		l, err := net.Listen("tcp", o.Listen)
		if err != nil {
			s.closeAll()
			return nil, fmt.Errorf("outbound %s: %w", o.Listen, err)
		}
		s.listeners = append(s.listeners, l)
	}

	for i, group := range groupInstances(cfg.Balancers) {
		ids := make([]peer.ID, len(group))
		for j, ai := range group {
			ids[j] = ai.ID
		}
		h, err := node.New(node.Config{Key: cfg.Key, LinkPeers: ids, Log: s.log.With("link", i)})
		if err != nil {
			s.closeAll()
			return nil, err
		}
		opts := append(cfg.backendOptions(), backend.WithLogger(s.log.With("host", i)))
		be, err := backend.New(h, group, opts...)
		if err != nil {
			h.Close()
			s.closeAll()
			return nil, err
		}
		for _, o := range cfg.Outbound {
			h.Peerstore().AddAddrs(o.Peer, o.Addrs, peerstore.PermanentAddrTTL)
		}
		s.hosts = append(s.hosts, &backendHost{host: h, be: be})
	}
	for _, name := range cfg.Names {
		f, err := backend.NewFleet(backend.FleetConfig{
			Name:     name,
			NewHost:  s.newFleetHost,
			Options:  append(cfg.backendOptions(), backend.WithLogger(s.log)),
			Resolver: cfg.Resolver,
			Interval: cfg.ResolveInterval,
		})
		if err != nil {
			s.closeAll()
			return nil, err
		}
		s.fleets = append(s.fleets, f)
	}
	for _, r := range cfg.Routes {
		for _, bh := range s.hosts {
			bh.be.SetStreamAcceptor(r.Protocol, s.inbound(r))
		}
		for _, f := range s.fleets {
			f.SetStreamAcceptor(r.Protocol, s.inbound(r))
		}
	}
	for i, l := range s.listeners {
		s.wg.Add(1)
		go s.accept(l, cfg.Outbound[i])
	}
	s.wg.Add(1)
	go s.watch()
	s.log.Info("sidecar started", "peer", s.ID(), "instances", len(cfg.Balancers), "names", cfg.Names,
		"routes", len(cfg.Routes), "outbound", len(cfg.Outbound), "proxy_protocol", cfg.ProxyProtocol)
	return s, nil
}

// newFleetHost makes the host for one balancer instance found through DNS.
func (s *Sidecar) newFleetHost(instance peer.AddrInfo) (host.Host, error) {
	h, err := node.New(node.Config{Key: s.cfg.Key, LinkPeers: []peer.ID{instance.ID}, Log: s.log.With("link", instance.Addrs[0].String())})
	if err != nil {
		return nil, err
	}
	for _, o := range s.cfg.Outbound {
		h.Peerstore().AddAddrs(o.Peer, o.Addrs, peerstore.PermanentAddrTTL)
	}
	return h, nil
}

// groupInstances spreads the instances over as few hosts as possible, so
// that no host is given two instances with the same peer ID: the n-th
// instance of each peer ID goes to the n-th host.
func groupInstances(instances []peer.AddrInfo) [][]peer.AddrInfo {
	var groups [][]peer.AddrInfo
	count := map[peer.ID]int{}
	for _, ai := range instances {
		n := count[ai.ID]
		count[ai.ID]++
		if n == len(groups) {
			groups = append(groups, nil)
		}
		groups[n] = append(groups[n], ai)
	}
	return groups
}

// ID returns the sidecar's own peer ID, the one balancers must allow.
func (s *Sidecar) ID() peer.ID { return s.id }

// OutboundAddrs returns the outbound listeners' addresses, in the order of
// Config.Outbound, with the real port when 0 was asked for.
func (s *Sidecar) OutboundAddrs() []net.Addr {
	out := make([]net.Addr, len(s.listeners))
	for i, l := range s.listeners {
		out[i] = l.Addr()
	}
	return out
}

// Status returns the registration with every balancer instance: those of
// the first host, then those of the second (instances sharing a peer ID are
// spread over hosts), each host's in the order of Config.Balancers; then
// those found through each of Config.Names, ordered by address.
func (s *Sidecar) Status() []backend.Status {
	var out []backend.Status
	for _, b := range s.backends() {
		out = append(out, b.Status()...)
	}
	return out
}

// Instances returns the balancer instances in use that were found through
// Config.Names, name after name, each name's ordered by address.
func (s *Sidecar) Instances() []backend.Instance {
	var out []backend.Instance
	for _, f := range s.fleets {
		out = append(out, f.Instances()...)
	}
	return out
}

// backends returns the Backends in use, in the order of Status.
func (s *Sidecar) backends() []*backend.Backend {
	var out []*backend.Backend
	for _, bh := range s.hosts {
		out = append(out, bh.be)
	}
	for _, f := range s.fleets {
		out = append(out, f.Backends()...)
	}
	return out
}

// ActiveStreams returns the number of streams being bridged.
func (s *Sidecar) ActiveStreams() int { return s.active.Len() }

// Shutdown stops accepting outbound connections, releases every route so
// that the balancers send no new stream, waits until the streams being
// bridged end or ctx is done, then closes everything. It returns ctx's error
// when streams had to be cut.
func (s *Sidecar) Shutdown(ctx context.Context) error {
	active := s.active.Len()
	// The Fleets release their routes at once and close their hosts when
	// the streams through them have ended.
	var fleets sync.WaitGroup
	for _, f := range s.fleets {
		fleets.Add(1)
		go func() {
			defer fleets.Done()
			f.Drain(ctx)
		}()
	}
	s.stopAccepting()
	err := s.active.Wait(ctx)
	if err == nil && active > 0 {
		node.WaitFlush(ctx)
	}
	fleets.Wait()
	s.Close()
	return err
}

// Close stops at once, resetting the streams being bridged. A second Close
// returns net.ErrClosed.
func (s *Sidecar) Close() error {
	err := net.ErrClosed
	s.closeOnce.Do(func() {
		s.stopAccepting()
		s.active.ResetAll()
		s.cancel()
		s.wg.Wait()
		for _, f := range s.fleets {
			f.Close()
		}
		for _, bh := range s.hosts {
			bh.host.Close()
		}
		err = nil
	})
	return err
}

func (s *Sidecar) stopAccepting() {
	for _, l := range s.listeners {
		l.Close()
	}
	s.active.Close()
	var wg sync.WaitGroup
	for _, bh := range s.hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bh.be.Close() // releases the routes
		}()
	}
	wg.Wait()
}

// closeAll undoes a failed Start.
func (s *Sidecar) closeAll() {
	for _, l := range s.listeners {
		l.Close()
	}
	for _, bh := range s.hosts {
		bh.be.Close()
		bh.host.Close()
	}
	for _, f := range s.fleets {
		f.Close()
	}
	s.cancel()
}

// inbound returns the acceptor that bridges r's forwarded streams. It
// connects to the service before the stream is accepted, so that when the
// service is unreachable the stream is refused (REJECTED) and the balancer
// offers it to the next backend of the pool, rather than accepted and reset.
func (s *Sidecar) inbound(r Route) backend.Acceptor {
	return func(remote peer.ID, _ protocol.ID) (network.StreamHandler, error) {
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.DialTimeout)
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", r.Target)
		cancel()
		if err != nil {
			s.log.Warn("service unreachable; stream refused", "protocol", r.Protocol, "peer", remote, "target", r.Target, "err", err)
			return nil, fmt.Errorf("service unreachable")
		}
		return func(str network.Stream) { s.serveInbound(r, str, c) }, nil
	}
}

// serveInbound bridges a forwarded stream to the service connection c.
func (s *Sidecar) serveInbound(r Route, str network.Stream, c net.Conn) {
	log := s.log.With("protocol", r.Protocol, "peer", str.Conn().RemotePeer())
	tc := tcpStream{c.(*net.TCPConn)}
	if s.cfg.ProxyProtocol {
		h := proxyHeader(str, c, s.cfg.ProxyProtocolDatagram)
		_ = c.SetWriteDeadline(time.Now().Add(s.cfg.DialTimeout))
		if _, err := h.WriteTo(c); err != nil {
			log.Warn("writing PROXY header failed; stream reset", "target", r.Target, "err", err)
			tc.Reset()
			str.Reset()
			return
		}
		_ = c.SetWriteDeadline(time.Time{})
	}
	s.bridge(log, str, tc)
}

// proxyHeader describes a forwarded stream for the service; datagram says
// whether a source over UDP is written as DGRAM. A source with no IP and
// port (a relayed peer, a DNS or unknown address) has no address block
// (UNSPEC) and is named by its peer ID only.
func proxyHeader(str network.Stream, service net.Conn, datagram bool) *proxyproto.Header {
	raddr := str.Conn().RemoteMultiaddr()
	h := &proxyproto.Header{
		Source:   addrPort(raddr),
		PeerID:   str.Conn().RemotePeer(),
		Protocol: string(str.Protocol()),
	}
	if datagram && raddr != nil {
		_, tcpErr := raddr.ValueForProtocol(ma.P_TCP)
		_, udpErr := raddr.ValueForProtocol(ma.P_UDP)
		h.Datagram = tcpErr != nil && udpErr == nil
	}
	if ta, ok := service.RemoteAddr().(*net.TCPAddr); ok {
		h.Destination = ta.AddrPort()
	}
	return h
}

// addrPort extracts the IP and TCP or UDP port from a peer's multiaddr; the
// zero value when it has none or is relayed (the IP would be the relay's).
func addrPort(a ma.Multiaddr) netip.AddrPort {
	if a == nil {
		return netip.AddrPort{}
	}
	if _, err := a.ValueForProtocol(ma.P_CIRCUIT); err == nil {
		return netip.AddrPort{}
	}
	ip, err := manet.ToIP(a)
	if err != nil {
		return netip.AddrPort{}
	}
	addr, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.AddrPort{}
	}
	port, err := a.ValueForProtocol(ma.P_TCP)
	if err != nil {
		if port, err = a.ValueForProtocol(ma.P_UDP); err != nil {
			return netip.AddrPort{}
		}
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(addr.Unmap(), uint16(n))
}

// accept carries each connection accepted on l out through a balancer.
func (s *Sidecar) accept(l net.Listener, o Outbound) {
	defer s.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("accepting outbound connection", "listen", o.Listen, "err", err)
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.outbound(tcpStream{c.(*net.TCPConn)}, o)
		}()
	}
}

// outbound opens a stream for an accepted connection and bridges the two.
func (s *Sidecar) outbound(c tcpStream, o Outbound) {
	log := s.log.With("peer", o.Peer, "from", c.RemoteAddr())
	// NewStream bounds this by the backend package's outbound timeout.
	str, err := s.NewStream(s.ctx, o.Peer, o.Protocols...)
	if err != nil {
		log.Warn("outbound stream failed; connection reset", "protocols", o.Protocols, "err", err)
		c.Reset()
		return
	}
	s.bridge(log.With("protocol", str.Protocol()), str, c)
}

// NewStream opens a stream to p through the balancers, on the first of
// pids p accepts. The balancer instances are tried in turn while they
// cannot be reached or cannot reach p; any other refusal is final (see
// backend.NewStreamThrough).
func (s *Sidecar) NewStream(ctx context.Context, p peer.ID, pids ...protocol.ID) (network.Stream, error) {
	bs := s.backends()
	if len(bs) == 0 {
		return nil, errors.New("no balancer instance found through DNS yet")
	}
	return backend.NewStreamThrough(ctx, bs, p, pids...)
}

// bridge joins a libp2p stream and a TCP connection until both directions
// end, unless the sidecar is closing.
func (s *Sidecar) bridge(log *slog.Logger, str network.Stream, c tcpStream) {
	start := time.Now()
	res := s.active.Join(str, c, nil)
	if errors.Is(res.Err, pipe.ErrClosed) {
		return // the sidecar is closing; both ends were reset
	}
	if res.Err != nil {
		log.Debug("stream ended with an error", "in", res.BToA, "out", res.AToB, "duration", time.Since(start), "err", res.Err)
		return
	}
	log.Debug("stream done", "to_service", res.AToB, "from_service", res.BToA, "duration", time.Since(start))
}

// watch logs changes of the registrations, so that an operator sees when
// the sidecar is routed, and when a balancer is lost.
func (s *Sidecar) watch() {
	defer s.wg.Done()
	type state struct {
		connected bool
		protos    string
	}
	last := map[int]state{}
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		i := -1
		for hi, bh := range s.hosts {
			for _, st := range bh.be.Status() {
				i++
				cur := state{connected: st.Connected, protos: fmt.Sprint(st.Protocols)}
				prev, had := last[i]
				last[i] = cur
				if had && prev == cur {
					continue
				}
				if cur.protos != prev.protos && len(st.Protocols) > 0 {
					s.log.Info("registered", "host", hi, "balancer", st.Balancer, "protocols", st.Protocols,
						"ttl", st.Expires.Sub(st.Registered).Round(time.Second))
				}
				if had && prev.connected && !cur.connected {
					s.log.Warn("balancer connection lost; reconnecting", "host", hi, "balancer", st.Balancer)
				}
			}
		}
	}
}

// tcpStream is a TCP connection as pipe.Join wants it.
type tcpStream struct{ *net.TCPConn }

// Reset closes the connection with a TCP RST, the nearest thing to a
// stream reset, so that the service sees a failure and not a clean end.
func (c tcpStream) Reset() error {
	_ = c.SetLinger(0)
	return c.Close()
}
