package balancer

import (
	"slices"
	"sort"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// backendState is what the balancer knows of one backend peer. Routes are
// soft state owned by the backend: they live until their TTL runs out or the
// backend releases them.
type backendState struct {
	id        peer.ID
	connected bool
	routes    map[protocol.ID]*route
	// active counts this backend's forwarded streams in flight, both
	// directions, for the least-streams choice and StreamsPerBackend;
	// atomic so that stream ends need no table lock.
	active atomic.Int64
	// outbound counts this backend's outbound streams in flight, for
	// OutboundPerBackend.
	outbound atomic.Int64
	// bytesTo and bytesFrom count bytes forwarded to and from this
	// backend, both directions of stream.
	bytesTo, bytesFrom atomic.Int64
	// linkFull counts the streams that found every connection to this
	// backend at its QUIC cap; the first one is logged.
	linkFull atomic.Int64
	health   healthState
}

// route is one protocol routed to one backend.
type route struct {
	backend *backendState
	proto   protocol.ID
	expires time.Time
	timer   *time.Timer
	weight  uint32 // from the latest request; at least 1
	current int64  // smooth weighted round robin state
}

// pool is every route of one protocol.
type pool struct {
	routes []*route
	next   uint64 // rotates ties between equally loaded backends
}

// live reports whether any backend of the pool is connected.
func (p *pool) live() bool {
	return slices.ContainsFunc(p.routes, func(r *route) bool { return r.backend.connected })
}

// apply carries out a validated registration request for backend p: all of
// it, or, when any protocol is refused, none of it. It returns the response.
func (b *Balancer) apply(p peer.ID, req *pb.RoutingRequest) *pb.RoutingResponse {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		// Issue 14: answered rather than unserved, so that backends
		// tell a drain from a cut link and keep the connections that
		// carry the streams in flight.
		return &pb.RoutingResponse{Status: pb.Status_DRAINING, Text: "the balancer is shutting down; register again after it restarts"}
	}
	if resp := b.admit(p, b.backends[p], req); resp != nil {
		return resp
	}
	be := b.backends[p]
	if be == nil {
		be = &backendState{id: p, routes: map[protocol.ID]*route{}}
		b.backends[p] = be
	}
	// The backend is talking to us, so it is connected; the connectedness
	// event may still be on its way.
	be.connected = true
	ttl := b.grantTTL(req.GetTtlSeconds())
	now := time.Now()
	touched := map[protocol.ID]bool{}
	added := b.addRoutes(be, req, ttl, now, touched)
	released := b.releaseRoutes(be, req.GetRelease(), touched)
	for proto := range touched {
		b.refresh(proto)
	}
	b.announce()
	// One line per change of the route set, none per extension.
	if len(added) > 0 || len(released) > 0 {
		b.traceRoutes()
		// Only what happened: a release grants no TTL (issue 14).
		attrs := []any{"backend", p}
		if len(added) > 0 {
			attrs = append(attrs, "added", added, "ttl", ttl)
		}
		if len(released) > 0 {
			attrs = append(attrs, "released", released)
		}
		b.log.Info("routes changed", append(attrs, "routes", len(be.routes))...)
	}
	resp := &pb.RoutingResponse{Status: pb.Status_OK, Protocols: be.protocols()}
	if len(req.GetProtocols()) > 0 {
		resp.TtlSeconds = uint32(ttl / time.Second)
	} else {
		resp.TtlSeconds = be.minTTL(now)
	}
	return resp
}

// admit checks req from backend p, whose state is be (nil when it has none
// yet), against the reserved protocols, the ACL and the limits before
// anything changes, so that a request is applied whole or not at all, and
// against the identify budget (identify.go), last since it costs the most. It
// returns the refusal, or nil. Called with b.mu held.
func (b *Balancer) admit(p peer.ID, be *backendState, req *pb.RoutingRequest) *pb.RoutingResponse {
	// The stream was admitted under the settings of its start; Update may
	// have withdrawn the permission since.
	if !b.settings().acl.isBackend(p) {
		return refuse(pb.Status_PERMISSION_DENIED, "this peer is not an allowed backend")
	}
	hostProtos := b.hostProtocols()
	for _, s := range req.GetProtocols() {
		proto := protocol.ID(s)
		if isReserved(proto, hostProtos) {
			return refuse(pb.Status_PROTOCOL_RESERVED, "protocol %q is served by the balancer itself", s)
		}
		if !b.settings().acl.permits(p, s) {
			return refuse(pb.Status_PERMISSION_DENIED, "protocol %q is not allowed to this backend", s)
		}
	}
	if size := responseSize(be, req); size > wire.MaxMessageSize {
		return refuse(pb.Status_RESOURCE_LIMIT_EXCEEDED, "this backend's routes would not fit in one %d-byte response (%d bytes of protocol IDs)", wire.MaxMessageSize, size)
	}
	if limit := b.settings().limits.RoutesPerBackend; limit > 0 {
		n := 0
		if be != nil {
			n = len(be.routes)
		}
		for _, s := range req.GetProtocols() {
			if be == nil || be.routes[protocol.ID(s)] == nil {
				n++
			}
		}
		if n > limit {
			return refuse(pb.Status_RESOURCE_LIMIT_EXCEEDED, "%d routes would exceed this backend's limit of %d", n, limit)
		}
	}
	return b.checkIdentify(be, req, hostProtos)
}

// addRoutes adds or extends be's route for each protocol of req, with the
// granted ttl from now, and marks each protocol in touched. It returns the
// protocols that were new. Called with b.mu held.
func (b *Balancer) addRoutes(be *backendState, req *pb.RoutingRequest, ttl time.Duration, now time.Time, touched map[protocol.ID]bool) (added []string) {
	for _, s := range req.GetProtocols() {
		proto := protocol.ID(s)
		r := be.routes[proto]
		if r == nil {
			added = append(added, s)
			r = &route{backend: be, proto: proto}
			be.routes[proto] = r
			pl := b.pools[proto]
			if pl == nil {
				pl = &pool{}
				b.pools[proto] = pl
			}
			pl.routes = append(pl.routes, r)
			r.timer = time.AfterFunc(ttl, func() { b.expire(r) })
		} else {
			r.timer.Reset(ttl)
		}
		r.expires = now.Add(ttl)
		r.weight = min(max(req.GetWeight(), 1), wire.MaxWeight)
		touched[proto] = true
	}
	return added
}

// releaseRoutes removes be's routes for the protocols in release that it
// has, and marks each in touched. It returns those it removed. Called with
// b.mu held.
func (b *Balancer) releaseRoutes(be *backendState, release []string, touched map[protocol.ID]bool) (released []string) {
	for _, s := range release {
		if r := be.routes[protocol.ID(s)]; r != nil {
			b.removeRoute(r)
			touched[r.proto] = true
			released = append(released, s)
		}
	}
	return released
}

// refuse builds the response that refuses a request with status.
func refuse(status pb.Status, format string, args ...any) *pb.RoutingResponse {
	e := wire.Errorf(status, format, args...)
	return &pb.RoutingResponse{Status: e.Status, Text: e.Text}
}

// grantTTL turns a requested TTL into the one granted.
func (b *Balancer) grantTTL(seconds uint32) time.Duration {
	if seconds == 0 {
		return b.settings().ttlDefault
	}
	return min(time.Duration(seconds)*time.Second, b.settings().ttlMax)
}

// protocols lists the backend's routes, sorted.
func (be *backendState) protocols() []string {
	out := make([]string, 0, len(be.routes))
	for proto := range be.routes {
		out = append(out, string(proto))
	}
	sort.Strings(out)
	return out
}

// minTTL is the whole seconds left on the backend's soonest-expiring route.
func (be *backendState) minTTL(now time.Time) uint32 {
	var least time.Duration = -1
	for _, r := range be.routes {
		if left := r.expires.Sub(now); least < 0 || left < least {
			least = left
		}
	}
	if least <= 0 {
		return 0
	}
	return uint32(least / time.Second)
}

// expire removes a route whose TTL ran out, unless it was extended after its
// timer had already fired.
func (b *Balancer) expire(r *route) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed || r.backend.routes[r.proto] != r || time.Now().Before(r.expires) {
		return
	}
	b.removeRoute(r)
	b.refresh(r.proto)
	b.announce()
	b.traceRoutes()
	b.log.Info("route expired", "backend", r.backend.id, "protocol", r.proto)
}

// removeRoute takes r out of its backend and pool. Called with b.mu held;
// the caller refreshes the protocol's handler.
func (b *Balancer) removeRoute(r *route) {
	r.timer.Stop()
	delete(r.backend.routes, r.proto)
	pl := b.pools[r.proto]
	pl.routes = slices.DeleteFunc(pl.routes, func(x *route) bool { return x == r })
	if len(pl.routes) == 0 {
		delete(b.pools, r.proto)
	}
	if len(r.backend.routes) == 0 && !b.settings().acl.isBackend(r.backend.id) {
		delete(b.backends, r.backend.id)
	}
}

// setConnected suspends or resumes every route of backend p.
func (b *Balancer) setConnected(p peer.ID, connected bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	be := b.backends[p]
	if be == nil || be.connected == connected {
		return
	}
	be.connected = connected
	for proto := range be.routes {
		b.refresh(proto)
	}
	b.announce()
	switch {
	case len(be.routes) == 0 && connected:
		// Nothing to resume: "routes resumed routes=0" read as a fault
		// (issue 14).
		b.log.Info("backend reconnected; it has no routes", "backend", p)
	case len(be.routes) == 0:
		b.log.Info("backend disconnected; it had no routes", "backend", p)
	case connected:
		b.log.Info("backend reconnected, routes resumed", "backend", p, "routes", len(be.routes))
	default:
		b.log.Info("backend disconnected, routes suspended", "backend", p, "routes", len(be.routes))
	}
}

// traceRoutes reports the size of the route table. Called with b.mu held.
func (b *Balancer) traceRoutes() {
	routes, backends := 0, 0
	for _, be := range b.backends {
		if len(be.routes) > 0 {
			routes += len(be.routes)
			backends++
		}
	}
	b.cfg.tracer.RoutesChanged(routes, backends)
}

// responseSize is the size of the RoutingResponse that would list the
// backend's routes after req, plus room for its other fields. Every
// response lists all of a backend's routes, so their IDs must fit in one
// message together; checking it before the request is applied keeps the
// request all or nothing.
func responseSize(be *backendState, req *pb.RoutingRequest) int {
	after := map[string]bool{}
	if be != nil {
		for p := range be.routes {
			after[string(p)] = true
		}
	}
	for _, p := range req.GetProtocols() {
		after[p] = true
	}
	for _, p := range req.GetRelease() {
		delete(after, p)
	}
	size := 16 // status and ttl_seconds, with their tags
	for p := range after {
		size += 1 + protowire.SizeVarint(uint64(len(p))) + len(p)
	}
	return size
}
