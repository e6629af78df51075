// Package node builds the go-libp2p hosts that the balancer's commands run:
// go-libp2p's default transports, security and muxers, resource and
// connection limits sized for a balancer (wire.Limits, with the peers on the
// other side of a balancer–backend link raised, and what the operator set
// over them: Limits) whose every refusal is counted and logged, a
// certificate for secure
// WebSockets, per-IP connection limits that a reverse proxy can be exempted
// from, and listen addresses opened one at a time so that a failure names
// the address that failed.
package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	libp2pwebrtc "github.com/libp2p/go-libp2p/p2p/transport/webrtc"
	ws "github.com/libp2p/go-libp2p/p2p/transport/websocket"
	webtransport "github.com/libp2p/go-libp2p/p2p/transport/webtransport"
	"github.com/libp2p/go-libp2p/x/rate"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
)

// Config describes a host to build.
type Config struct {
	// Key is the host's identity. Required.
	Key crypto.PrivKey
	// Listen lists the addresses to listen on; none makes a host that only
	// dials.
	Listen []ma.Multiaddr
	// LinkPeers get the balancer protocol's raised per-peer limits: the
	// allowed backends on a balancer, the balancers on a backend.
	LinkPeers []peer.ID
	// TLS serves the secure WebSocket listeners (/tls/ws, /wss), which
	// need it; the other transports bring their own certificates. Give it
	// a GetCertificate (certfile.Pair.TLSConfig) so that renewed
	// certificates apply without restarting the listeners.
	TLS *tls.Config
	// ConnsPerIP bounds the connections open at once from one IPv4
	// address or IPv6 /56 (eight times as many per /48), and lets one
	// address open twice as many in a burst before new ones are held to
	// go-libp2p's rate of one per 5 s. 0 keeps go-libp2p's default, 8.
	ConnsPerIP int
	// ProxyNetworks are exempt from the per-IP limits, as loopback already
	// is: the addresses of reverse proxies (nginx, Caddy) that terminate
	// secure WebSockets in front of the host and so bring every browser
	// from their own address. The resource manager's overall connection
	// limits still apply.
	ProxyNetworks []netip.Prefix
	// Limits are the operator's changes to the limits; the zero value
	// keeps the defaults.
	Limits Limits
	// Log receives the refusals by a limit, summed up; nil logs nothing.
	Log *slog.Logger
	// Registerer, when set, gets the refusal counter
	// (libp2p_balancer_resource_refusals_total).
	Registerer prometheus.Registerer
	// Options are extra go-libp2p options, applied last.
	Options []libp2p.Option
}

// New builds and starts a host. On a listen failure it closes the host and
// returns an error that names the address, such as
// `listen /ip4/0.0.0.0/tcp/4242: address already in use`.
//
// TCP listeners do not set SO_REUSEPORT (go-libp2p's default does): with it,
// a second process could bind a port that is already in use and silently
// share its connections, so "port in use" would go unnoticed.
func New(cfg Config) (host.Host, error) {
	if cfg.Key == nil {
		return nil, errors.New("node: no identity key")
	}
	if cfg.TLS == nil {
		for _, a := range cfg.Listen {
			if IsSecureWebSocket(a) {
				return nil, fmt.Errorf("listen %s: a secure WebSocket address needs a TLS certificate", a)
			}
		}
	}
	if err := cfg.Limits.Check(); err != nil {
		return nil, err
	}
	rm, err := NewResourceManager(cfg)
	if err != nil {
		return nil, fmt.Errorf("resource manager: %w", err)
	}
	cm, err := cfg.Limits.connManager(cfg.Limits.Concrete(cfg.LinkPeers...))
	if err != nil {
		rm.Close()
		return nil, fmt.Errorf("connection_manager: %w", err)
	}
	var wsOpts []any
	if cfg.TLS != nil {
		wsOpts = append(wsOpts, ws.WithTLSConfig(cfg.TLS))
	}
	opts := []libp2p.Option{
		libp2p.Identity(cfg.Key),
		libp2p.ResourceManager(rm),
		libp2p.ConnectionManager(cm),
		libp2p.DisableRelay(),
		libp2p.NoListenAddrs,
		libp2p.Transport(tcp.NewTCPTransport, tcp.DisableReuseport()),
		libp2p.Transport(libp2pquic.NewTransport),
		libp2p.Transport(ws.New, wsOpts...),
		libp2p.Transport(webtransport.New),
		libp2p.Transport(libp2pwebrtc.New),
	}
	opts = append(opts, cfg.Options...)
	h, err := libp2p.New(opts...)
	if err != nil {
		rm.Close()
		cm.Close()
		return nil, err
	}
	for _, a := range cfg.Listen {
		if err := h.Network().Listen(a); err != nil {
			h.Close()
			return nil, fmt.Errorf("listen %s: %s", a, listenCause(err))
		}
	}
	return h, nil
}

// IsSecureWebSocket says whether a is a secure WebSocket address: /tls/ws
// or its older spelling /wss.
func IsSecureWebSocket(a ma.Multiaddr) bool {
	tls := false
	for _, c := range a {
		switch c.Protocol().Code {
		case ma.P_TLS:
			tls = true
		case ma.P_WSS:
			return true
		case ma.P_WS:
			return tls
		}
	}
	return false
}

// DefaultConnsPerIP is go-libp2p's limit of connections open at once from
// one IPv4 address or IPv6 /56.
const DefaultConnsPerIP = 8

// Per-IP limits on new connections (rate) and open ones (count). go-libp2p
// v0.51.0 allows 8 connections at once per IPv4 address and per IPv6 /56,
// 64 per /48, and a burst of 16 new connections per address (/56), 80 per
// /48, refilled at 0.2/s (0.5/s per /48): p2p/host/resource-manager's
// conn_limiter.go and conn_rate_limiter.go. Its rate defaults are not
// exported, so they are written again here, scaled with ConnsPerIP.
const (
	connRatePerIP = 0.2
	connRatePer48 = 0.5
)

// NewResourceManager builds the resource manager New gives its host: the
// limits of cfg.Limits (wire.Limits scaled to the machine, with the raised
// limits of cfg.LinkPeers, and what the operator set over them), the per-IP
// connection limits of cfg.ConnsPerIP with cfg.ProxyNetworks and
// cfg.Limits.BackendNetworks exempt from them, the link peers allowlisted
// from any address (so that remote peers filling the system's connection
// limits cannot lock a reconnecting backend out: go-libp2p then admits an
// allowlisted peer in its allowlisted scopes), and every refusal counted
// and logged (cfg.Registerer, cfg.Log).
func NewResourceManager(cfg Config) (network.ResourceManager, error) {
	if err := cfg.Limits.Check(); err != nil {
		return nil, err
	}
	n := cfg.ConnsPerIP
	if n < 0 {
		return nil, fmt.Errorf("connections per IP %d: want 0 (the default, %d) or more", n, DefaultConnsPerIP)
	}
	backends, err := cfg.Limits.networks()
	if err != nil {
		return nil, err
	}
	var opts []rcmgr.Option
	if n > 0 {
		opts = append(opts, rcmgr.WithLimitPerSubnet(
			[]rcmgr.ConnLimitPerSubnet{{PrefixLength: 32, ConnCount: n}},
			[]rcmgr.ConnLimitPerSubnet{{PrefixLength: 56, ConnCount: n}, {PrefixLength: 48, ConnCount: 8 * n}},
		))
	} else {
		n = DefaultConnsPerIP
	}
	v4 := append([]rcmgr.NetworkPrefixLimit(nil), rcmgr.DefaultNetworkPrefixLimitV4...)
	v6 := append([]rcmgr.NetworkPrefixLimit(nil), rcmgr.DefaultNetworkPrefixLimitV6...)
	// Loopback is exempt from the rate as from the count.
	prefixRates := []rate.PrefixLimit{
		{Prefix: netip.MustParsePrefix("127.0.0.0/8")},
		{Prefix: netip.MustParsePrefix("::1/128")},
	}
	var allow []ma.Multiaddr
	for _, p := range append(append([]netip.Prefix(nil), cfg.ProxyNetworks...), backends...) {
		p = p.Masked()
		l := rcmgr.NetworkPrefixLimit{Network: p, ConnCount: math.MaxInt}
		if p.Addr().Is4() {
			v4 = append(v4, l)
		} else {
			v6 = append(v6, l)
		}
		prefixRates = append(prefixRates, rate.PrefixLimit{Prefix: p}) // RPS 0: no limit
	}
	for _, p := range backends {
		a, err := prefixAddr(p)
		if err != nil {
			return nil, err
		}
		allow = append(allow, a)
	}
	for _, p := range cfg.LinkPeers {
		for _, anywhere := range []string{"/ip4/0.0.0.0/ipcidr/0", "/ip6/::/ipcidr/0"} {
			a, err := ma.NewMultiaddr(anywhere + "/p2p/" + p.String())
			if err != nil {
				return nil, err
			}
			allow = append(allow, a)
		}
	}
	rep, err := newRefusals(cfg.Log, cfg.Registerer)
	if err != nil {
		return nil, err
	}
	opts = append(opts,
		rcmgr.WithNetworkPrefixLimit(v4, v6),
		rcmgr.WithConnRateLimiters(&rate.Limiter{
			NetworkPrefixLimits: prefixRates,
			SubnetRateLimiter: rate.SubnetLimiter{
				IPv4SubnetLimits: []rate.SubnetLimit{
					{PrefixLength: 32, Limit: rate.Limit{RPS: connRatePerIP, Burst: 2 * n}},
				},
				IPv6SubnetLimits: []rate.SubnetLimit{
					{PrefixLength: 56, Limit: rate.Limit{RPS: connRatePerIP, Burst: 2 * n}},
					{PrefixLength: 48, Limit: rate.Limit{RPS: connRatePer48, Burst: 10 * n}},
				},
				GracePeriod: time.Minute,
			},
		}),
		rcmgr.WithAllowlistedMultiaddrs(allow),
		rcmgr.WithTraceReporter(rep),
	)
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(cfg.Limits.Concrete(cfg.LinkPeers...)), opts...)
	if err != nil {
		return nil, err
	}
	return &countedRM{ResourceManager: rm, rep: rep}, nil
}

// listenCause strips the swarm's "failed to listen on any addresses: [...]"
// wrapping, which adds nothing when there is a single address.
func listenCause(err error) string {
	msg := err.Error()
	const prefix = "failed to listen on any addresses: ["
	if strings.HasPrefix(msg, prefix) && strings.HasSuffix(msg, "]") {
		return msg[len(prefix) : len(msg)-1]
	}
	return msg
}

// Addrs returns the addresses h listens on, unspecified IPs (0.0.0.0, ::)
// expanded to each interface's, each ending in /p2p/<h's peer ID>: the
// addresses to give to peers and backends. They come in the order of
// listen (the addresses h was asked to listen on), by transport.
func Addrs(h host.Host, listen []ma.Multiaddr) ([]ma.Multiaddr, error) {
	addrs, err := h.Network().InterfaceListenAddresses()
	if err != nil {
		return nil, err
	}
	rank := func(a ma.Multiaddr) int {
		for i, l := range listen {
			if shape(l) == shape(a) {
				return i
			}
		}
		return len(listen)
	}
	sort.SliceStable(addrs, func(i, j int) bool {
		ri, rj := rank(addrs[i]), rank(addrs[j])
		if ri != rj {
			return ri < rj
		}
		return addrs[i].String() < addrs[j].String()
	})
	return peer.AddrInfoToP2pAddrs(&peer.AddrInfo{ID: h.ID(), Addrs: addrs})
}

// shape is a multiaddr's protocol names without their values, such as
// "ip4/tcp" or "ip4/udp/quic-v1".
func shape(a ma.Multiaddr) string {
	var names []string
	for _, p := range a.Protocols() {
		if p.Code == ma.P_CERTHASH || p.Code == ma.P_P2P {
			continue
		}
		names = append(names, p.Name)
	}
	return strings.Join(names, "/")
}

// ParseAddrInfo parses a full multiaddr ending in /p2p/<peer ID>, the form
// that `balancer serve` prints.
func ParseAddrInfo(s string) (*peer.AddrInfo, error) {
	a, err := ma.NewMultiaddr(s)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", s, err)
	}
	ai, err := peer.AddrInfoFromP2pAddr(a)
	if err != nil {
		return nil, fmt.Errorf("%q: want a multiaddr ending in /p2p/<peer ID>: %w", s, err)
	}
	return ai, nil
}

// FlushGrace is how long WaitFlush waits. go-yamux hands a stream's last
// frames (its final data and FIN) to the connection's send loop and returns;
// closing the connection drops whatever is still queued, and the remote peer
// sees a reset instead of the end of its stream. (Seen under load in
// sidecar.TestShutdown: the balancer reset the peer's stream after the
// sidecar had bridged every byte and closed the host.) Neither go-yamux nor
// go-libp2p can say when the queue is empty, so a short grace it is.
const FlushGrace = 250 * time.Millisecond

// WaitFlush waits FlushGrace, or until ctx is done: call it between the end
// of the last stream a graceful shutdown waited for and closing the host.
func WaitFlush(ctx context.Context) {
	t := time.NewTimer(FlushGrace)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
