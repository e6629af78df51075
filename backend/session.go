package backend

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	msmux "github.com/multiformats/go-multistream"

	"github.com/libp2p-balancer/libp2p-balancer/internal/link"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// session keeps this backend's routes alive with one balancer: it connects,
// registers every protocol the backend has a handler for, extends at half
// the granted TTL, sends releases, and starts over with back-off when
// anything fails. One goroutine (run) owns all of that; other goroutines
// only kick it.
type session struct {
	b     *Backend
	ai    peer.AddrInfo
	kickC chan struct{}
	lanes *lanes
	// opener spreads outbound forward streams over the connections and
	// lanes to this balancer.
	opener link.Opener

	mu        sync.Mutex
	connected bool
	releases  map[protocol.ID]bool // released handlers not yet confirmed
	status    Status
}

// Status is what a backend knows of its registration with one balancer.
type Status struct {
	Balancer   peer.ID
	Connected  bool
	Protocols  []protocol.ID // routed to this backend, as the balancer last said
	Expires    time.Time     // when those routes lapse unless extended
	LastError  error         // the last failure, nil after a success
	Registered time.Time     // the last successful exchange
	Lanes      int           // extra QUIC connections open to the balancer (WithLaneLimits)
}

func newSession(b *Backend, ai peer.AddrInfo) *session {
	s := &session{
		b:        b,
		ai:       ai,
		kickC:    make(chan struct{}, 1),
		releases: map[protocol.ID]bool{},
		status:   Status{Balancer: ai.ID},
	}
	s.lanes = &lanes{s: s, deadC: make(chan struct{}, 1)}
	return s
}

// kick makes run attempt an exchange now.
func (s *session) kick() {
	select {
	case s.kickC <- struct{}{}:
	default:
	}
}

func (s *session) release(pid protocol.ID) {
	s.mu.Lock()
	s.releases[pid] = true
	s.mu.Unlock()
	s.kick()
}

func (s *session) connectedness(connected bool) {
	s.mu.Lock()
	changed := s.connected != connected
	s.connected = connected
	s.status.Connected = connected
	s.mu.Unlock()
	if changed {
		s.kick()
	}
}

func (s *session) run() {
	defer s.b.wg.Done()
	backoff := s.b.cfg.backoffMin
	timer := time.NewTimer(0)
	defer timer.Stop()
	// notBefore is the end of the back-off after a failure: kicks
	// (connectedness events, handler changes) wait for it rather than
	// retry at once. Issue 14 saw 60 to 95 attempts in half a second when
	// every kick bypassed it.
	var notBefore time.Time
	silent := 0             // exchanges in a row that got no answer at all
	var failing failureKind // what the failures in a row were; zero after a success
	for {
		select {
		case <-s.b.ctx.Done():
			return
		case <-s.kickC:
			if time.Now().Before(notBefore) {
				continue // the timer fires at notBefore, and step sends all
			}
		case <-timer.C:
		}
		next, err := s.step()
		if err != nil {
			st := classify(err)
			if st.answered {
				silent = 0
			} else if st.exchange {
				silent++
			}
			next = backoff + rand.N(backoff/5+1)
			backoff = min(2*backoff, s.b.cfg.backoffMax)
			if s.b.cfg.keepalive > 0 {
				// The keepalive bounds the back-off too, so that a
				// restarted balancer is found within it.
				next = min(next, s.b.cfg.keepalive)
			}
			notBefore = time.Now().Add(next)
			s.setStatus(func(st *Status) {
				st.LastError = err
				if errors.Is(err, errDraining) {
					// The balancer routes nothing new to anyone now.
					st.Protocols, st.Expires = nil, time.Time{}
				}
			})
			s.logFailure(failing, st, err, next)
			failing = st
			if silent >= 2 {
				// Two exchanges in a row got no answer at all on a
				// connection the host still believes in: a cut link or a
				// balancer that died without a word (QUIC sends no RST).
				// go-libp2p's keepalives would notice only after 30 to 45
				// s; dropping the connections makes the next step redial.
				// An answer of any kind (a refusal, DRAINING) proves the
				// link alive and never gets here: the connections carry
				// streams in flight.
				s.b.log.Info("balancer silent; dropping its connections to redial", "balancer", s.ai.ID)
				s.dropConns()
				silent = 0
			}
			timer.Reset(next)
			continue
		}
		if failing != (failureKind{}) {
			s.b.log.Info("registration restored", "balancer", s.ai.ID)
		}
		backoff, failing, silent, notBefore = s.b.cfg.backoffMin, failureKind{}, 0, time.Time{}
		// Even with a long TTL, talk to the balancer every keepalive
		// interval: that is how a dead link or a restarted balancer is
		// found within seconds.
		if s.b.cfg.keepalive > 0 {
			next = min(next, s.b.cfg.keepalive)
		}
		timer.Reset(next)
	}
}

// failureKind is what a failed registration attempt says about the balancer.
// Consecutive failures of the same kind are logged once.
type failureKind struct {
	kind     string // "unreachable", "silent", "error", or a refusal's status
	answered bool   // the balancer answered: the link works
	exchange bool   // the failure came after the connection was up
}

// classify sorts a failure of step. Only an exchange that got nothing back
// from the balancer is silent; a status (DRAINING, a refusal), a protocol
// negotiation refused, or a stream reset by the balancer are all answers.
func classify(err error) failureKind {
	var se *wire.StatusError
	var re *network.StreamError
	switch {
	case errors.As(err, &se):
		return failureKind{kind: se.Status.String(), answered: true, exchange: true}
	case errors.Is(err, errUnreachable):
		return failureKind{kind: "unreachable"}
	case errors.Is(err, msmux.ErrNotSupported[protocol.ID]{}),
		errors.As(err, &re) && re.Remote:
		return failureKind{kind: "error", answered: true, exchange: true}
	default:
		return failureKind{kind: "silent", exchange: true}
	}
}

// logFailure writes one line when the failures change state (the first
// failure, or another kind), not one per attempt; retry_in is the delay
// actually taken before the next attempt.
func (s *session) logFailure(prev, cur failureKind, err error, next time.Duration) {
	if prev == cur {
		s.b.log.Debug("registration failed again", "balancer", s.ai.ID, "err", oneLine(err), "retry_in", next.Round(time.Millisecond))
		return
	}
	if errors.Is(err, errDraining) {
		s.b.log.Info("balancer draining; streams in flight go on, registering again once it is back",
			"balancer", s.ai.ID, "retry_in", next.Round(time.Millisecond))
		return
	}
	s.b.log.Warn("registration failed", "balancer", s.ai.ID, "err", oneLine(err), "retry_in", next.Round(time.Millisecond))
}

// errDraining matches the refusal of a balancer that is shutting down.
var errDraining = &wire.StatusError{Status: pb.Status_DRAINING}

// errUnreachable marks a failure to connect to the balancer.
var errUnreachable = errors.New("balancer unreachable")

// oneLine returns err's text on one line. go-libp2p's swarm writes a dial
// error as a list, one "\n  * [address] cause" per address (issue 14).
func oneLine(err error) string {
	lines := strings.Split(err.Error(), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimPrefix(strings.TrimSpace(l), "* ")
	}
	return strings.Join(lines, " ")
}

// step connects if needed and sends one request carrying every protocol the
// backend serves (which adds or extends them) and every pending release. It
// returns when to run again.
func (s *session) step() (time.Duration, error) {
	ctx, cancel := context.WithTimeout(s.b.ctx, s.b.cfg.handshakeTimeout)
	defer cancel()
	if s.b.h.Network().Connectedness(s.ai.ID) != network.Connected {
		if err := s.connect(ctx); err != nil {
			return 0, fmt.Errorf("%w: %w", errUnreachable, err)
		}
	}
	if s.b.draining.Load() {
		return time.Hour, nil // Drain released the routes; keep them so
	}
	protos := s.b.Protocols()
	serving := map[protocol.ID]bool{}
	for _, p := range protos {
		serving[p] = true
	}
	s.mu.Lock()
	releases := make([]string, 0, len(s.releases))
	for p := range s.releases {
		if serving[p] {
			// Released and then served again: the route stays.
			delete(s.releases, p)
			continue
		}
		releases = append(releases, string(p))
	}
	s.mu.Unlock()
	if len(protos) == 0 && len(releases) == 0 {
		s.setStatus(func(st *Status) { st.Protocols, st.Expires, st.LastError = nil, time.Time{}, nil })
		return time.Hour, nil // nothing to keep alive until a handler is added
	}
	req := &pb.RoutingRequest{TtlSeconds: uint32(s.b.cfg.ttl / time.Second), Release: releases, Weight: s.b.cfg.weight}
	for _, p := range protos {
		req.Protocols = append(req.Protocols, string(p))
	}
	sort.Strings(req.Protocols)
	resp, err := s.exchange(ctx, req)
	if err != nil {
		return 0, err
	}
	s.mu.Lock()
	for _, p := range releases {
		// A handler set again meanwhile is registered by the next step.
		delete(s.releases, protocol.ID(p))
	}
	s.mu.Unlock()
	ttl := time.Duration(resp.GetTtlSeconds()) * time.Second
	now := time.Now()
	granted := make([]protocol.ID, 0, len(resp.GetProtocols()))
	for _, p := range resp.GetProtocols() {
		granted = append(granted, protocol.ID(p))
	}
	s.setStatus(func(st *Status) {
		st.Protocols, st.Expires, st.LastError, st.Registered = granted, now.Add(ttl), nil, now
	})
	if len(protos) == 0 {
		return time.Hour, nil
	}
	s.b.log.Debug("registered", "balancer", s.ai.ID, "protocols", len(granted), "ttl", ttl)
	// Extend at half the TTL: a lost exchange still leaves half a TTL for
	// the retries with back-off.
	return max(ttl/2, 250*time.Millisecond), nil
}

// openRequest opens a routing-request stream. Connected, it opens on the
// link connection with the most room, as forward streams do: go-libp2p's
// host would pick the connection with the most streams, over QUIC possibly a
// lane at its 256-stream cap, where the open waits for a slot and a renewal
// can miss its TTL while the backend is busiest. Not connected, the host
// dials.
func (s *session) openRequest(ctx context.Context) (network.Stream, error) {
	if len(s.b.h.Network().ConnsToPeer(s.ai.ID)) == 0 {
		return s.b.h.NewStream(ctx, s.ai.ID, wire.RoutingRequestID)
	}
	return s.opener.Open(ctx, s.lanes.conns, wire.RoutingRequestID)
}

// exchange sends one request on a new routing-request stream and reads its
// response; a refusal comes back as a *wire.StatusError.
func (s *session) exchange(ctx context.Context, req *pb.RoutingRequest) (*pb.RoutingResponse, error) {
	str, err := s.openRequest(ctx)
	if err != nil {
		return nil, fmt.Errorf("opening routing-request stream: %w", err)
	}
	defer str.Close()
	if err := str.Scope().SetService(wire.ServiceName); err != nil {
		str.Reset()
		return nil, err
	}
	deadline, _ := ctx.Deadline()
	_ = str.SetDeadline(deadline)
	if err := wire.WriteMsg(str, req); err != nil {
		str.Reset()
		return nil, fmt.Errorf("sending routing request: %w", err)
	}
	var resp pb.RoutingResponse
	if err := wire.NewReader(str).ReadMsg(&resp); err != nil {
		str.Reset()
		return nil, fmt.Errorf("reading routing response: %w", err)
	}
	if resp.GetStatus() != pb.Status_OK {
		return nil, &wire.StatusError{Status: resp.GetStatus(), Text: resp.GetText()}
	}
	return &resp, nil
}

// releaseAll releases every route with the balancer, if it is connected,
// within the handshake timeout. Close calls it before stopping run.
func (s *session) releaseAll() {
	if s.b.h.Network().Connectedness(s.ai.ID) != network.Connected {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.b.cfg.handshakeTimeout)
	defer cancel()
	// Never a new dial for a release: a balancer we are no longer connected
	// to has suspended the routes anyway, and a dial still running when
	// the host closes right after crashes go-libp2p v0.51.0's swarm
	// (nil transport in nonProxyAddr, swarm_dial.go:476; seen in CI).
	ctx = network.WithNoDial(ctx, "releasing routes")
	s.mu.Lock()
	granted := s.status.Protocols
	s.mu.Unlock()
	req := &pb.RoutingRequest{}
	for _, p := range granted {
		req.Release = append(req.Release, string(p))
	}
	for _, p := range s.b.Protocols() {
		req.Release = append(req.Release, string(p))
	}
	if len(req.Release) == 0 {
		return
	}
	// A draining balancer routes nothing new anyway.
	if _, err := s.exchange(ctx, req); err != nil && !errors.Is(err, errDraining) {
		s.b.log.Warn("releasing routes failed", "balancer", s.ai.ID, "err", oneLine(err))
	}
}

func (s *session) setStatus(f func(*Status)) {
	s.mu.Lock()
	f(&s.status)
	s.mu.Unlock()
}

func (s *session) snapshot() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.status
	st.Protocols = append([]protocol.ID(nil), st.Protocols...)
	st.Lanes = s.lanes.count()
	return st
}

// Status returns this backend's registration with each balancer, in the
// order the balancers were given to New.
func (b *Backend) Status() []Status {
	out := make([]Status, 0, len(b.sessions))
	for _, s := range b.sessions {
		out = append(out, s.snapshot())
	}
	return out
}

// connect dials the balancer. It bypasses the swarm's dial back-off: the
// swarm refuses to redial an address for seconds after a failed dial, which
// would delay re-registration after a balancer restart by as much, while the
// session already backs off on its own terms.
func (s *session) connect(ctx context.Context) error {
	return s.b.h.Connect(network.WithForceDirectDial(ctx, "balancer link"), s.ai)
}

// dropConns closes every connection to the balancer, the lanes' too, so
// that the next step dials anew.
func (s *session) dropConns() {
	for _, c := range s.lanes.conns() {
		_ = c.Close()
	}
}
