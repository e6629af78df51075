package balancer

import (
	"net"
	"slices"

	"github.com/libp2p/go-libp2p/core/protocol"
)

// settings returns the settings in force. Update replaces them whole, so a
// caller that reads several fields of one snapshot sees one configuration.
func (b *Balancer) settings() *config { return b.current.Load() }

// Update replaces the Balancer's settings with those opts give, on top of the
// defaults as in New, without a restart: opts are checked first (a refused
// one is returned, an *OptionError for a bad value, and nothing changes),
// then applied at once under the route table's lock. Streams in flight are
// never cut, and carry on under the settings they started with.
//
// The settings take effect as follows: a backend that opts no longer allow
// loses its routes, and one whose grant narrowed loses the routes the new
// grant does not cover, through the same path as a release (routes leave
// identify, streams in flight finish); a newly allowed backend can register
// at once; limits, TTLs and timeouts apply to the next registration or
// stream; health to the next outcome; the probe interval to the next round;
// the dial policy to the next outbound request. The tracer and the logger
// stay those New was given: WithTracer and WithLogger have no effect here.
func (b *Balancer) Update(opts ...Option) error {
	cfg := defaultConfig()
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return err
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return net.ErrClosed
	}
	old := b.settings()
	cfg.tracer, cfg.log = old.tracer, old.log
	b.current.Store(&cfg)
	b.admission.setLimits(cfg.limits)
	for p := range cfg.acl {
		if !old.acl.isBackend(p) {
			b.h.ConnManager().Protect(p, "libp2p-balancer")
		}
	}
	for p := range old.acl {
		if !cfg.acl.isBackend(p) {
			b.h.ConnManager().Unprotect(p, "libp2p-balancer")
		}
	}
	b.withdraw()
	select {
	case b.reconfigured <- struct{}{}:
	default:
	}
	return nil
}

// withdraw removes each route that the settings in force no longer permit,
// and forgets backends that are no longer allowed and have no route left.
// Called with b.mu held, after the settings were replaced.
func (b *Balancer) withdraw() {
	acl := b.settings().acl
	touched := map[protocol.ID]bool{}
	for id, be := range b.backends {
		var withdrawn []string
		for proto, r := range be.routes {
			if !acl.permits(id, string(proto)) {
				b.removeRoute(r)
				touched[proto] = true
				withdrawn = append(withdrawn, string(proto))
			}
		}
		if len(be.routes) == 0 && !acl.isBackend(id) {
			delete(b.backends, id)
		}
		if len(withdrawn) > 0 {
			slices.Sort(withdrawn)
			b.log.Info("permission withdrawn, routes removed", "backend", id, "removed", withdrawn, "routes", len(be.routes))
		}
	}
	if len(touched) == 0 {
		return
	}
	for proto := range touched {
		b.refresh(proto)
	}
	b.announce()
	b.traceRoutes()
}
