// Package link chooses the connection a balancer–backend stream travels on
// and opens it there.
//
// Across the project, "link" means one thing: the connections between a
// balancer and one of its backends. This package opens streams on them,
// and the link peers (node.Config.LinkPeers, wire.AddLimits) are the peers
// at their other end, which get raised resource limits.
//
// go-libp2p's QUIC transport lets a peer open at most 256 concurrent streams
// on one connection (quicreuse's MaxIncomingStreams, fixed, not
// configurable); the 257th NewStream blocks until a stream ends. A balancer
// and a backend joined by one QUIC connection could therefore carry only 256
// forwarded streams at once in each direction. The cap is per connection, so
// the backend library adds connections ("lanes", see package backend) and
// both sides open every forward stream on the connection with the most room,
// which this package decides. The swarm's own NewStream cannot be used for
// this: it deliberately prefers the connection with the MOST streams.
package link

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"
	msmux "github.com/multiformats/go-multistream"
)

// quicStreamCap is the number of concurrent streams one side may open on a
// QUIC connection to a go-libp2p peer (p2p/transport/quicreuse/config.go).
const quicStreamCap = 256

// StreamCap returns how many outbound streams this side may have open on c
// at once, or 0 when the transport sets no fixed cap (yamux over TCP: the
// resource manager decides).
func StreamCap(c network.Conn) int {
	capped := false
	ma.ForEach(c.RemoteMultiaddr(), func(comp ma.Component) bool {
		switch comp.Protocol().Code {
		case ma.P_QUIC_V1, ma.P_QUIC, ma.P_WEBTRANSPORT:
			capped = true
			return false
		}
		return true
	})
	if capped {
		return quicStreamCap
	}
	return 0
}

// outbound counts the streams this side opened on c.
func outbound(c network.Conn) int {
	n := 0
	for _, s := range c.GetStreams() {
		if s.Stat().Direction == network.DirOutbound {
			n++
		}
	}
	return n
}

// pick returns the usable connection with the most room for a new outbound
// stream, counting pending opens, or nil when every connection is closed,
// limited (relayed) or at its cap. Among uncapped connections it takes the
// one with the fewest streams, which spreads load over parallel TCP
// connections too.
func pick(conns []network.Conn, pending map[network.Conn]int) network.Conn {
	// The common case, one TCP connection, needs no stream counts (which
	// GetStreams would copy on every new stream).
	if len(conns) == 1 && StreamCap(conns[0]) == 0 {
		if c := conns[0]; !c.IsClosed() && !c.Stat().Limited {
			return c
		}
		return nil
	}
	// First by the cheap lower bound of each connection's room; only when
	// it shows no room anywhere (streams in the other direction may be
	// taking up the count) by the exact count.
	if best := pickBy(conns, pending, false); best != nil {
		return best
	}
	return pickBy(conns, pending, true)
}

// pickBy is pick with the room of each capped connection counted exactly
// (its cap less this side's streams on it, which copies the connection's
// stream list) or not (its cap less every stream on it, a count the swarm
// keeps: a lower bound that costs nothing). Copying every lane's list on
// every new stream made opening 20,000 streams over 80 QUIC lanes
// quadratic (bench -serve -transport quic: 22.6 s, against 3.5 s over
// TCP). Uncapped connections come first, fewest streams first.
func pickBy(conns []network.Conn, pending map[network.Conn]int, exact bool) network.Conn {
	var best network.Conn
	bestRoom := 0
	for _, c := range conns {
		if c.IsClosed() || c.Stat().Limited {
			continue
		}
		var free int
		switch limit := StreamCap(c); {
		case limit == 0:
			free = 1<<30 - c.Stat().NumStreams
		case exact:
			free = limit - outbound(c)
		default:
			free = limit - c.Stat().NumStreams
		}
		free -= pending[c]
		if free > 0 && (best == nil || free > bestRoom) {
			best, bestRoom = c, free
		}
	}
	return best
}

// Opener opens streams on the connection with the most room. It counts
// opens in progress against their connection: without that, a burst of
// concurrent opens would all see the same free connection (a stream shows in
// GetStreams only once NewStream returns) and pile onto it past its cap.
// The zero value is ready to use; share one Opener per side.
type Opener struct {
	// FullWait bounds the wait for room while every connection is at its
	// cap; Open then fails with ErrFull. A new connection (a lane) during
	// the wait starts it again, since a backend growing lanes under a
	// burst brings them up one after the other. 0 waits as long as the
	// context allows, and then fails with ErrFull too. (The balancer
	// waits for its whole handshake timeout: a shorter wait failed
	// streams that a backend opening lanes on a loaded machine would have
	// taken a moment later.)
	FullWait time.Duration

	mu      sync.Mutex
	pending map[network.Conn]int
}

// ErrFull is returned by Open when every connection to the peer stayed at
// its stream cap (QUIC's 256) for the Opener's FullWait, or until the
// context ended: the peer opened no lane (see package backend) in time and
// no stream ended.
var ErrFull = errors.New("every connection to the peer is at its QUIC stream cap (256) and it opened no lane")

// errNoConn is returned by Open when there is no connection to the peer at
// all: waiting would not help, since backends dial the balancer, not the
// other way round.
var errNoConn = errors.New("no connection to the peer")

// Open opens a stream for proto on the connection among conns() with the
// most room, waiting while every connection is at its cap (a backend opens a
// new lane when its connections fill up) until ctx is done, or for at most
// FullWait, after which it returns ErrFull.
func (o *Opener) Open(ctx context.Context, conns func() []network.Conn, proto protocol.ID) (network.Stream, error) {
	delay := time.Millisecond
	var giveUp <-chan time.Time // set once every connection was full
	seen := 0                   // connections when giveUp was set
	for {
		cs := conns()
		if len(cs) == 0 {
			return nil, errNoConn
		}
		o.mu.Lock()
		c := pick(cs, o.pending)
		if c != nil {
			if o.pending == nil {
				o.pending = map[network.Conn]int{}
			}
			o.pending[c]++
		}
		o.mu.Unlock()
		if c != nil {
			s, err := newStream(ctx, c, proto)
			o.mu.Lock()
			if o.pending[c]--; o.pending[c] == 0 {
				delete(o.pending, c)
			}
			o.mu.Unlock()
			return s, err
		}
		if o.FullWait > 0 && (giveUp == nil || len(cs) > seen) {
			giveUp, seen = time.After(o.FullWait), len(cs)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w: %w", ErrFull, ctx.Err())
		case <-giveUp:
			t.Stop()
			return nil, ErrFull
		case <-t.C:
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// newStream opens a stream on c for proto. Protocol negotiation is lazy: the
// multistream-select proposal goes out with the first write and its answer is
// read with the first read, so a request–response handshake costs no extra
// round trip. A peer that does not speak proto shows up as an error on that
// first read.
func newStream(ctx context.Context, c network.Conn, proto protocol.ID) (network.Stream, error) {
	s, err := c.NewStream(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.SetProtocol(proto); err != nil {
		s.ResetWithError(network.StreamResourceLimitExceeded)
		return nil, fmt.Errorf("resource manager refused %s: %w", proto, err)
	}
	return Lazy(s, proto), nil
}

// Lazy wraps s, a new outbound stream whose protocol is already set to
// proto, so that its multistream-select proposal goes out with the first
// write (or close) and the answer is read with the first read, as go-libp2p's
// host negotiates a protocol that identify says the peer supports. A peer
// that refuses proto shows up as an error on that first read.
func Lazy(s network.Stream, proto protocol.ID) network.Stream {
	return &lazyStream{Stream: s, rw: msmux.NewMSSelect(s, proto)}
}

// lazyStream carries reads and writes through the lazy multistream client,
// as go-libp2p's basic host does for its own lazily negotiated streams.
type lazyStream struct {
	network.Stream
	rw io.ReadWriteCloser
}

func (s *lazyStream) Read(b []byte) (int, error)  { return s.rw.Read(b) }
func (s *lazyStream) Write(b []byte) (int, error) { return s.rw.Write(b) }

// negotiationTimeout bounds how long Close waits for the remote's
// multistream answer (go-multistream issue 47: Close can otherwise block).
const negotiationTimeout = 10 * time.Second

func (s *lazyStream) Close() error {
	_ = s.Stream.SetReadDeadline(time.Now().Add(negotiationTimeout))
	return s.rw.Close()
}

func (s *lazyStream) CloseWrite() error {
	if f, ok := s.rw.(interface{ Flush() error }); ok {
		_ = f.Flush()
	}
	return s.Stream.CloseWrite()
}
