package backend

import (
	"context"
	"fmt"
	"sync"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	libp2pquic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/libp2p-balancer/libp2p-balancer/internal/link"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
)

// laneHeadroom is how much room, in streams per direction, the QUIC
// connections to a balancer must keep; below it the backend opens one more
// lane. A QUIC handshake on a LAN takes a round trip or two, so 64 streams of
// headroom absorb a burst of new streams while the lane comes up.
const laneHeadroom = 64

// lanes are extra QUIC connections from this backend to one balancer.
//
// go-libp2p's QUIC transport caps each connection at 256 concurrent streams
// per direction, and one swarm keeps a single connection to a peer. A lane
// is a minimal second host with the backend's own identity, so the balancer
// sees one more connection from the same backend peer and spreads forward
// streams over all of them (package link). A lane serves only the forward
// protocol, with the same handlers as the backend's host.
type lanes struct {
	s *session

	mu      sync.Mutex
	hosts   []host.Host
	growing bool
	closed  bool
}

// conns returns every connection to the balancer: the backend host's and
// each lane's.
func (l *lanes) conns() []network.Conn {
	cs := l.s.b.h.Network().ConnsToPeer(l.s.ai.ID)
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, h := range l.hosts {
		cs = append(cs, h.Network().ConnsToPeer(l.s.ai.ID)...)
	}
	return cs
}

// check opens one more lane, in the background, when the QUIC connections
// to the balancer run short of room in either direction. It does nothing
// while any uncapped (TCP) connection exists.
func (l *lanes) check() {
	if !l.s.b.cfg.lanes {
		return
	}
	conns := l.conns()
	if len(conns) == 0 {
		return
	}
	var quic network.Conn
	inRoom, outRoom := 0, 0
	for _, c := range conns {
		if c.IsClosed() {
			continue
		}
		limit := link.StreamCap(c)
		if limit == 0 {
			return
		}
		quic = c
		in, out := 0, 0
		for _, st := range c.GetStreams() {
			if st.Stat().Direction == network.DirInbound {
				in++
			} else {
				out++
			}
		}
		inRoom += limit - in
		outRoom += limit - out
	}
	if quic == nil || min(inRoom, outRoom) >= laneHeadroom {
		return
	}
	l.mu.Lock()
	if l.growing || l.closed {
		l.mu.Unlock()
		return
	}
	l.growing = true
	l.mu.Unlock()
	addr := quic.RemoteMultiaddr()
	l.s.b.wg.Add(1)
	go func() {
		defer l.s.b.wg.Done()
		err := l.grow(addr)
		l.mu.Lock()
		l.growing = false
		l.mu.Unlock()
		if err != nil {
			l.s.b.log.Warn("opening a lane failed", "balancer", l.s.ai.ID, "err", err)
		}
	}()
}

// grow starts a lane host and connects it to the balancer at addr.
func (l *lanes) grow(addr ma.Multiaddr) error {
	b := l.s.b
	key := b.h.Peerstore().PrivKey(b.h.ID())
	if key == nil {
		return fmt.Errorf("the host's private key is not in its peerstore")
	}
	limits := rcmgr.DefaultLimits
	wire.AddLimits(&limits, l.s.ai.ID)
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits.AutoScale()))
	if err != nil {
		return err
	}
	h, err := libp2p.New(
		libp2p.Identity(key),
		libp2p.NoListenAddrs,
		libp2p.Transport(libp2pquic.NewTransport),
		libp2p.ResourceManager(rm),
		libp2p.DisableRelay(),
		libp2p.Ping(false),
	)
	if err != nil {
		return err
	}
	h.SetStreamHandler(wire.ForwardID, b.handleForward)
	ctx, cancel := context.WithTimeout(b.ctx, b.cfg.handshakeTimeout)
	defer cancel()
	if err := h.Connect(ctx, peer.AddrInfo{ID: l.s.ai.ID, Addrs: []ma.Multiaddr{addr}}); err != nil {
		h.Close()
		return err
	}
	h.ConnManager().Protect(l.s.ai.ID, "libp2p-balancer")
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		h.Close()
		return nil
	}
	l.hosts = append(l.hosts, h)
	b.log.Info("lane opened", "balancer", l.s.ai.ID, "lanes", len(l.hosts))
	return nil
}

func (s *session) closeLanes() {
	s.lanes.mu.Lock()
	hosts := s.lanes.hosts
	s.lanes.hosts = nil
	s.lanes.closed = true
	s.lanes.mu.Unlock()
	for _, h := range hosts {
		h.Close()
	}
}
