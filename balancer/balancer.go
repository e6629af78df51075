// Package balancer is the server side of libp2p-balancer: given a go-libp2p
// host, it lets allowed backends register protocols, routes each inbound
// stream on a registered protocol to one of the backends that registered it,
// and carries backends' outbound streams to the rest of the network under the
// host's peer ID. docs/spec.md describes the protocol; docs/architecture.md
// the lifecycles.
package balancer

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/internal/link"
	"github.com/libp2p-balancer/libp2p-balancer/internal/logging"
	"github.com/libp2p-balancer/libp2p-balancer/pipe"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
)

// Balancer serves the balancer protocol on a host. Create it with New and
// stop it with Close or Shutdown.
type Balancer struct {
	h host.Host
	// cfg is the configuration New was given. Only its tracer and logger
	// are read from it: they stay for the Balancer's life. Every other
	// setting is read through settings(), which Update replaces.
	cfg     config
	current atomic.Pointer[config]
	// reconfigured wakes the prober when Update changes its interval.
	reconfigured chan struct{}
	log          *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	sub    event.Subscription

	closeOnce sync.Once
	closeErr  error

	// active holds the forwarded streams in flight: Shutdown waits for
	// them, Close refuses new ones and resets them.
	active pipe.Group
	// opener spreads forward streams over a backend's connections; when
	// they are all at QUIC's cap it waits, within the handshake timeout,
	// for room or a lane, and then says so (link.ErrFull).
	opener link.Opener
	// admission enforces the balancer-wide and per-remote-peer limits.
	admission admission
	// dials rate-limits the dials of each backend's outbound requests.
	dials dialLimiter
	// refusals writes refused streams and registrations to the log, a
	// line per kind per interval under a flood.
	refusals *logging.Summary

	// protoEmitter announces changes of the routed protocols (see
	// announce); added and removed collect them meanwhile, under mu, and
	// pushTimer, when set, announces them at lastPush plus PushInterval.
	protoEmitter   event.Emitter
	added, removed []protocol.ID
	pushTimer      *time.Timer
	lastPush       time.Time

	mu        sync.Mutex
	closed    bool
	backends  map[peer.ID]*backendState
	pools     map[protocol.ID]*pool
	installed map[protocol.ID]bool
}

// New starts serving the balancer protocol on h. The caller keeps ownership
// of h and closes it after the Balancer.
func New(h host.Host, opts ...Option) (*Balancer, error) {
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
	em, err := h.EventBus().Emitter(new(event.EvtLocalProtocolsUpdated))
	if err != nil {
		sub.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &Balancer{
		h:            h,
		cfg:          cfg,
		log:          cfg.log.With("component", "balancer"),
		ctx:          ctx,
		cancel:       cancel,
		sub:          sub,
		protoEmitter: em,
		backends:     map[peer.ID]*backendState{},
		pools:        map[protocol.ID]*pool{},
		installed:    map[protocol.ID]bool{},
		reconfigured: make(chan struct{}, 1),
	}
	b.refusals = logging.NewSummary(b.log, logging.SummaryInterval)
	b.current.Store(&cfg)
	b.admission = admission{limits: cfg.limits, peers: map[peer.ID]*peerUse{}}
	for p := range cfg.acl {
		h.ConnManager().Protect(p, "libp2p-balancer")
	}
	h.SetStreamHandler(wire.RoutingRequestID, b.handleRoutingRequest)
	h.SetStreamHandler(wire.ForwardID, b.handleOutbound)
	b.wg.Add(2)
	go b.watchConnectedness()
	go b.probeBackends()
	return b, nil
}

// ID returns the shared peer ID that remote peers see.
func (b *Balancer) ID() peer.ID { return b.h.ID() }

// Close stops accepting registrations and new streams at once, resets every
// stream in flight, and releases what the Balancer holds on the host. A
// second Close returns net.ErrClosed.
func (b *Balancer) Close() error {
	err := net.ErrClosed
	b.closeOnce.Do(func() {
		b.stopAccepting()
		// Only now: while Shutdown drains, the handler stays to answer
		// DRAINING (see handleRoutingRequest).
		b.h.RemoveStreamHandler(wire.RoutingRequestID)
		// Close the group before resetting it: a handshake that completes
		// from here on is refused and reset by carry, not carried on.
		b.active.Close()
		b.active.ResetAll()
		b.cancel()
		b.wg.Wait()
		b.refusals.Close()
		err = nil
	})
	return err
}

// Shutdown stops accepting registrations and new streams, waits until the
// streams in flight have ended or ctx is done, then closes the Balancer as
// Close does. It returns ctx's error when streams had to be cut. Meanwhile
// the balancer answers every registration with DRAINING, so that backends
// know it is going away and keep their connections, which carry the
// streams in flight.
func (b *Balancer) Shutdown(ctx context.Context) error {
	b.stopAccepting()
	err := b.active.Wait(ctx)
	if cerr := b.Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) {
		return cerr
	}
	return err
}

// Draining reports whether Shutdown or Close has started: the balancer
// takes no new stream and no registration any more.
func (b *Balancer) Draining() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// ActiveStreams returns the number of forwarded streams in flight, both
// directions.
func (b *Balancer) ActiveStreams() int { return b.active.Len() }

func (b *Balancer) stopAccepting() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	b.closed = true
	b.h.RemoveStreamHandler(wire.ForwardID)
	for proto := range b.installed {
		b.h.Mux().RemoveHandler(proto)
		b.removed = append(b.removed, proto)
	}
	b.installed = map[protocol.ID]bool{}
	b.flushAnnounce()
	b.protoEmitter.Close()
	for _, be := range b.backends {
		for _, r := range be.routes {
			r.timer.Stop()
		}
	}
	for p := range b.settings().acl {
		b.h.ConnManager().Unprotect(p, "libp2p-balancer")
	}
	b.sub.Close()
}

// watchConnectedness suspends a backend's routes when the host loses its
// last connection to it and resumes them when it is back. Connectedness, not
// one connection's close event, is what counts: a backend may hold several
// connections (lanes) and lose one of them.
func (b *Balancer) watchConnectedness() {
	defer b.wg.Done()
	// The same goroutine forgets idle remote peers' rate limit state.
	sweep := time.NewTicker(30 * time.Second)
	defer sweep.Stop()
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-sweep.C:
			b.admission.sweep()
		case ev, ok := <-b.sub.Out():
			if !ok {
				return
			}
			e := ev.(event.EvtPeerConnectednessChanged)
			b.setConnected(e.Peer, e.Connectedness == network.Connected)
		}
	}
}
