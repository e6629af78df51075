// Package node builds the go-libp2p hosts that the balancer's commands run:
// go-libp2p's default transports, security and muxers, the resource manager
// limits of the balancer protocol raised for the peers on the other side of
// a balancer–backend link (wire.AddLimits), and listen addresses opened one
// at a time so that a failure names the address that failed.
package node

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	libp2pwebrtc "github.com/libp2p/go-libp2p/p2p/transport/webrtc"
	ws "github.com/libp2p/go-libp2p/p2p/transport/websocket"
	webtransport "github.com/libp2p/go-libp2p/p2p/transport/webtransport"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/libp2p-balancer/libp2p-balancer/wire"
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
	limits := rcmgr.DefaultLimits
	wire.AddLimits(&limits, cfg.LinkPeers...)
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits.AutoScale()))
	if err != nil {
		return nil, fmt.Errorf("resource manager: %w", err)
	}
	opts := []libp2p.Option{
		libp2p.Identity(cfg.Key),
		libp2p.ResourceManager(rm),
		libp2p.DisableRelay(),
		libp2p.NoListenAddrs,
		libp2p.Transport(tcp.NewTCPTransport, tcp.DisableReuseport()),
		libp2p.Transport(libp2pquic.NewTransport),
		libp2p.Transport(ws.New),
		libp2p.Transport(webtransport.New),
		libp2p.Transport(libp2pwebrtc.New),
	}
	opts = append(opts, cfg.Options...)
	h, err := libp2p.New(opts...)
	if err != nil {
		rm.Close()
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
