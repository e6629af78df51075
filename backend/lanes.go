package backend

import (
	"context"
	"fmt"
	"sync"
	"time"

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

// DefaultMaxLanes is how many lanes a backend opens to one balancer at most,
// unless WithLaneLimits says otherwise. With the backend host's own connection
// that is 81 QUIC connections, 20,736 concurrent forwarded streams per
// direction (81 × 256): the scale target of 20,000 streams through one
// backend, with the 64 streams of headroom. Each lane is a whole host (a
// resource manager, a peerstore, a UDP socket and their goroutines), so
// without a cap a burst of remote streams could make a backend open hosts
// without end (issue 11).
const DefaultMaxLanes = 80

// DefaultLaneIdleTimeout is how long a lane may carry no stream before the
// backend closes it, unless WithLaneLimits says otherwise. Streams go to the
// connection with the most room, so a lane is idle only when traffic has
// fallen well below what the other connections hold; a minute keeps lanes
// across short lulls, and reopening one costs a QUIC handshake.
const DefaultLaneIdleTimeout = time.Minute

// lanes are extra QUIC connections from this backend to one balancer.
//
// go-libp2p's QUIC transport caps each connection at 256 concurrent streams
// per direction, and one swarm keeps a single connection to a peer. A lane
// is a minimal second host with the backend's own identity, so the balancer
// sees one more connection from the same backend peer and spreads forward
// streams over all of them (package link). A lane serves only the forward
// protocol, with the same handlers as the backend's host.
//
// There are at most cfg.maxLanes. A lane whose connection to the balancer
// closed (a balancer restart, dropConns) is closed at once, and one that
// carried no stream for cfg.laneIdle is closed by the reaper goroutine,
// which runs while there is a lane.
type lanes struct {
	s *session
	// deadC wakes the reaper when a lane's connection closes.
	deadC chan struct{}

	mu      sync.Mutex
	hosts   []*lane
	growing bool
	reaping bool // the reaper goroutine runs
	closed  bool
}

// lane is one extra host and when it last became idle.
type lane struct {
	h         host.Host
	idleSince time.Time // zero while it carries streams
}

// conns returns every connection to the balancer: the backend host's and
// each lane's.
func (l *lanes) conns() []network.Conn {
	cs := l.s.b.h.Network().ConnsToPeer(l.s.ai.ID)
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ln := range l.hosts {
		cs = append(cs, ln.h.Network().ConnsToPeer(l.s.ai.ID)...)
	}
	return cs
}

// count returns the number of lanes open.
func (l *lanes) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.hosts)
}

// check opens one more lane, in the background, when the QUIC connections
// to the balancer run short of room in either direction. It does nothing
// while any uncapped (TCP) connection exists, or at the cap.
func (l *lanes) check() {
	if !l.s.b.cfg.lanes {
		return
	}
	conns := l.conns()
	// It runs for every forwarded stream: first the cheap lower bound of
	// the room (streams of both directions counted against each), and the
	// exact count, which copies every connection's stream list, only when
	// that bound is short.
	if inRoom, outRoom, uncapped, quic := room(conns, false); uncapped || quic == nil || min(inRoom, outRoom) >= laneHeadroom {
		return
	}
	inRoom, outRoom, uncapped, quic := room(conns, true)
	if uncapped || quic == nil || min(inRoom, outRoom) >= laneHeadroom {
		return
	}
	l.mu.Lock()
	if l.growing || l.closed || len(l.hosts) >= l.s.b.cfg.maxLanes {
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

// room adds up the room left on the open connections among conns, in
// streams per direction. uncapped says one of them has no cap (TCP), and
// quic is one of the capped ones, nil when there is none. Not exact, it
// takes every stream on a connection (the swarm keeps the count) off both
// directions' room, which copies nothing, so the figures are lower bounds;
// exact, it copies each connection's stream list to count by direction.
func room(conns []network.Conn, exact bool) (in, out int, uncapped bool, quic network.Conn) {
	for _, c := range conns {
		if c.IsClosed() {
			continue
		}
		limit := link.StreamCap(c)
		if limit == 0 {
			uncapped = true
			continue
		}
		quic = c
		usedIn, usedOut := streamsOn(c, exact)
		in, out = in+limit-usedIn, out+limit-usedOut
	}
	return in, out, uncapped, quic
}

// streamsOn returns the streams open on c in each direction, or, not
// exact, the count of all of them for both.
func streamsOn(c network.Conn, exact bool) (in, out int) {
	if !exact {
		n := c.Stat().NumStreams
		return n, n
	}
	for _, st := range c.GetStreams() {
		if st.Stat().Direction == network.DirInbound {
			in++
		} else {
			out++
		}
	}
	return in, out
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
	// Before the dial, so that a connection that dies at once is seen.
	h.Network().Notify(&network.NotifyBundle{DisconnectedF: func(n network.Network, c network.Conn) {
		if c.RemotePeer() == l.s.ai.ID && len(n.ConnsToPeer(l.s.ai.ID)) == 0 {
			select {
			case l.deadC <- struct{}{}:
			default:
			}
		}
	}})
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
	l.hosts = append(l.hosts, &lane{h: h})
	b.log.Info("lane opened", "balancer", l.s.ai.ID, "lanes", len(l.hosts))
	if !l.reaping {
		// grow runs on a goroutine counted in b.wg, so this Add cannot
		// race with Close's Wait.
		l.reaping = true
		b.wg.Add(1)
		go l.reap()
	}
	return nil
}

// reap closes dead lanes as soon as deadC says one died, and idle ones on a
// tick. It returns when no lane is left or the backend closes.
func (l *lanes) reap() {
	defer l.s.b.wg.Done()
	var tick <-chan time.Time
	if idle := l.s.b.cfg.laneIdle; idle > 0 {
		t := time.NewTicker(max(idle/4, 10*time.Millisecond))
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-l.s.b.ctx.Done():
			return // Close closes the lanes
		case <-l.deadC:
		case <-tick:
		}
		if !l.sweep() {
			return
		}
	}
}

// sweep closes the lanes with no connection to the balancer and those idle
// for cfg.laneIdle, and says whether any lane is left; when none is, the
// reaper stops, and the next lane starts it again. An idle lane stays while
// the other connections would be left with less than laneHeadroom of room:
// check would only open it again, and a lane that just opened for a burst
// may be idle for a moment before the streams that needed it arrive.
func (l *lanes) sweep() bool {
	idle := l.s.b.cfg.laneIdle
	now := time.Now()
	var dead, idled []host.Host
	all := l.s.b.h.Network().ConnsToPeer(l.s.ai.ID)
	l.mu.Lock()
	for _, ln := range l.hosts {
		all = append(all, ln.h.Network().ConnsToPeer(l.s.ai.ID)...)
	}
	inRoom, outRoom, uncapped, _ := room(all, true)
	keep := l.hosts[:0]
	for _, ln := range l.hosts {
		open, streams := 0, 0
		for _, c := range ln.h.Network().ConnsToPeer(l.s.ai.ID) {
			if !c.IsClosed() {
				open++
				streams += c.Stat().NumStreams
			}
		}
		switch {
		case open == 0:
			dead = append(dead, ln.h)
			continue
		case streams > 0:
			ln.idleSince = time.Time{}
		case ln.idleSince.IsZero():
			ln.idleSince = now
		case idle > 0 && now.Sub(ln.idleSince) >= idle:
			in, out, _, _ := room(ln.h.Network().ConnsToPeer(l.s.ai.ID), true)
			if uncapped || min(inRoom-in, outRoom-out) >= laneHeadroom {
				inRoom, outRoom = inRoom-in, outRoom-out
				idled = append(idled, ln.h)
				continue
			}
		}
		keep = append(keep, ln)
	}
	clear(l.hosts[len(keep):])
	l.hosts = keep
	left := len(keep)
	if left == 0 {
		l.reaping = false
	}
	l.mu.Unlock()
	for _, h := range dead {
		h.Close()
	}
	for _, h := range idled {
		h.Close()
	}
	if len(dead)+len(idled) > 0 {
		l.s.b.log.Info("lanes closed", "balancer", l.s.ai.ID, "dead", len(dead), "idle", len(idled), "lanes", left)
	}
	return left > 0
}

func (s *session) closeLanes() {
	s.lanes.mu.Lock()
	hosts := s.lanes.hosts
	s.lanes.hosts = nil
	s.lanes.closed = true
	s.lanes.mu.Unlock()
	for _, ln := range hosts {
		ln.h.Close()
	}
}
