// Package backend is the backend side of libp2p-balancer: a private node that
// shares a balancer's public peer ID. Given the backend's own go-libp2p host
// and the balancers' addresses, a Backend registers the protocols it has
// handlers for, keeps those routes alive, delivers forwarded streams to
// ordinary network.StreamHandlers, and opens outbound streams through a
// balancer so that remote peers see only the balancer's peer ID. Host adapts
// it to host.Host, so that unmodified go-libp2p services run behind the
// balancer.
package backend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/internal/logging"
	"github.com/libp2p-balancer/libp2p-balancer/pipe"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
)

// Backend connects one backend host to one or more balancers. Create it with
// New, add handlers with SetStreamHandler, and stop it with Close.
type Backend struct {
	h   host.Host
	cfg config
	log *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	sub    event.Subscription

	closeOnce sync.Once
	draining  atomic.Bool
	// inflight holds the forward streams in flight, both directions, from
	// the start of their handshake until their owner closes or resets
	// them (see stream); Drain waits on it. It is never closed or reset:
	// Close leaves delivered streams to their owners.
	inflight pipe.Group
	// refusals writes refused and forged forward streams to the log, a
	// line per kind per interval under a flood.
	refusals *logging.Summary

	sessions []*session // one per balancer, fixed at New
	byPeer   map[peer.ID]*session

	mu       sync.Mutex
	handlers map[protocol.ID]Acceptor
}

// Acceptor decides whether this backend takes a stream the balancer offers
// from remote on proto, before it accepts: it returns the handler for the
// stream, or an error, which refuses the stream with REJECTED and the error
// as text, so that the balancer offers it to the next backend of the pool
// with nothing lost. It runs within the handshake deadline (the balancer's
// handshake timeout, 5 s by default): check what must be checked (a local
// service reachable, a capacity), not more. Once it returned a handler, the
// handler is called even if the stream fails right after, so that it can
// release what the acceptor acquired.
type Acceptor func(remote peer.ID, proto protocol.ID) (network.StreamHandler, error)

// New connects h to the balancers (each a peer ID with addresses to dial)
// and starts keeping registrations with them. Routes are registered as
// handlers are added with SetStreamHandler. The caller keeps ownership of h
// and closes it after the Backend.
func New(h host.Host, balancers []peer.AddrInfo, opts ...Option) (*Backend, error) {
	if len(balancers) == 0 {
		return nil, errors.New("backend: no balancer given")
	}
	cfg := defaultConfig()
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	sub, err := h.EventBus().Subscribe(new(event.EvtPeerConnectednessChanged))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &Backend{
		h:        h,
		cfg:      cfg,
		log:      cfg.log.With("component", "backend"),
		ctx:      ctx,
		cancel:   cancel,
		sub:      sub,
		byPeer:   map[peer.ID]*session{},
		handlers: map[protocol.ID]Acceptor{},
	}
	for _, ai := range balancers {
		if err := ai.ID.Validate(); err != nil {
			cancel()
			sub.Close()
			return nil, fmt.Errorf("backend: balancer peer ID: %w", err)
		}
		if b.byPeer[ai.ID] != nil {
			continue
		}
		s := newSession(b, ai)
		b.sessions = append(b.sessions, s)
		b.byPeer[ai.ID] = s
		h.ConnManager().Protect(ai.ID, "libp2p-balancer")
	}
	b.refusals = logging.NewSummary(b.log, logging.SummaryInterval)
	h.SetStreamHandler(wire.ForwardID, b.handleForward)
	b.wg.Add(1)
	go b.watchConnectedness()
	for _, s := range b.sessions {
		b.wg.Add(1)
		go s.run()
	}
	return b, nil
}

// ID returns the peer ID that remote peers see: the first balancer's. All
// balancers of one deployment share it.
func (b *Backend) ID() peer.ID { return b.sessions[0].ai.ID }

// SetStreamHandler serves protocol pid: the protocol is registered with every
// balancer, and each stream a balancer forwards on it is passed to handler,
// looking like a stream the remote peer opened to this host (see the
// package's stream and conn types). Replacing a handler keeps the route.
func (b *Backend) SetStreamHandler(pid protocol.ID, handler network.StreamHandler) {
	b.SetStreamAcceptor(pid, func(peer.ID, protocol.ID) (network.StreamHandler, error) { return handler, nil })
}

// SetStreamAcceptor serves pid as SetStreamHandler does, with accept
// deciding stream by stream whether to take it and with which handler.
func (b *Backend) SetStreamAcceptor(pid protocol.ID, accept Acceptor) {
	b.mu.Lock()
	_, had := b.handlers[pid]
	b.handlers[pid] = accept
	b.mu.Unlock()
	if !had {
		b.kickAll()
	}
}

// RemoveStreamHandler stops serving pid and releases its route with every
// balancer at once. Streams already delivered go on.
func (b *Backend) RemoveStreamHandler(pid protocol.ID) {
	b.mu.Lock()
	_, had := b.handlers[pid]
	delete(b.handlers, pid)
	b.mu.Unlock()
	if had {
		for _, s := range b.sessions {
			s.release(pid)
		}
	}
}

// Protocols returns the protocols this backend has handlers for.
func (b *Backend) Protocols() []protocol.ID {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]protocol.ID, 0, len(b.handlers))
	for p := range b.handlers {
		out = append(out, p)
	}
	return out
}

func (b *Backend) acceptor(pid protocol.ID) Acceptor {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.handlers[pid]
}

func (b *Backend) kickAll() {
	for _, s := range b.sessions {
		s.kick()
	}
}

// Close releases every route with every balancer it can reach within the
// handshake timeout, then stops. Streams already delivered or opened go on;
// the caller closes them or the host. A second Close returns net.ErrClosed.
func (b *Backend) Close() error {
	err := net.ErrClosed
	b.closeOnce.Do(func() {
		b.h.RemoveStreamHandler(wire.ForwardID)
		var wg sync.WaitGroup
		for _, s := range b.sessions {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.releaseAll()
			}()
		}
		wg.Wait()
		b.cancel()
		b.sub.Close()
		b.wg.Wait()
		b.refusals.Close()
		for _, s := range b.sessions {
			s.closeLanes()
			b.h.ConnManager().Unprotect(s.ai.ID, "libp2p-balancer")
		}
		err = nil
	})
	return err
}

// watchConnectedness re-registers with a balancer as soon as the host is
// connected to it again, and starts reconnecting when it is lost: after a
// balancer restart the routes it held are gone.
func (b *Backend) watchConnectedness() {
	defer b.wg.Done()
	for {
		select {
		case <-b.ctx.Done():
			return
		case ev, ok := <-b.sub.Out():
			if !ok {
				return
			}
			e := ev.(event.EvtPeerConnectednessChanged)
			if s := b.byPeer[e.Peer]; s != nil {
				s.connectedness(e.Connectedness == network.Connected)
			}
		}
	}
}

// Drain takes this backend out of service without losing a stream: it
// releases every route with every balancer, so that no new stream is
// forwarded to it, waits until the forwarded streams in flight (both
// directions) have ended or ctx is done, and then closes the Backend. It
// returns ctx's error if streams were still open. A rolling restart drains
// each backend of a pool in turn.
func (b *Backend) Drain(ctx context.Context) error {
	b.draining.Store(true)
	var wg sync.WaitGroup
	for _, s := range b.sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.releaseAll()
		}()
	}
	wg.Wait()
	err := b.inflight.Wait(ctx)
	b.Close()
	return err
}

// StreamsInFlight returns the number of forwarded streams, inbound and
// outbound, between this backend and its balancers: those in their
// handshake, and those delivered that their owner has not closed or reset
// and that have not been reset (their connection closed, or the far end
// reset them).
func (b *Backend) StreamsInFlight() int { return b.inflight.Len() }
