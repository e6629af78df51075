package admin

import (
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// Kinds of Event.
const (
	KindStreamRefused       = "stream refused"
	KindRegistrationRefused = "registration refused"
	KindBackendEjected      = "backend ejected"
)

// DefaultEvents is how many events NewEvents keeps when asked for 0.
const DefaultEvents = 50

// Event is one refusal or ejection, as the status page and `balancer
// status` list them.
type Event struct {
	Time time.Time `json:"time"`
	// Kind is KindStreamRefused, KindRegistrationRefused or
	// KindBackendEjected.
	Kind string `json:"kind"`
	// Direction of a refused stream: "inbound" or "outbound".
	Direction string `json:"direction,omitempty"`
	// Protocol of a refused stream, when known.
	Protocol string `json:"protocol,omitempty"`
	// Peer that opened a refused stream (the remote peer inbound, the
	// backend or stranger outbound), that asked for a refused
	// registration, or the ejected backend.
	Peer string `json:"peer,omitempty"`
	// Target an outbound request named, when it was valid.
	Target string `json:"target,omitempty"`
	// Reason: the refusal's reason ("limit", "rate", "no backend",
	// "refused by backends") or wire status ("PERMISSION_DENIED"), or how
	// long the ejection lasts.
	Reason string `json:"reason"`
	// Detail says more, as the log does: which limit, how many backends
	// were tried, the text sent with a status.
	Detail string `json:"detail,omitempty"`
}

// Events is a balancer.Tracer that keeps the most recent refusals and
// ejections for the status page: refused streams, registrations answered
// with anything but OK, and passive-health ejections. Combine it with the
// Prometheus tracer with metrics.Tee. The zero value is not usable; create
// one with NewEvents.
//
// It holds a fixed number of events, so a flood of refusals costs a constant
// amount of memory; peer IDs kept here are never metric labels.
type Events struct {
	mu   sync.Mutex
	ring []Event
	next int  // index of the slot the next event goes to
	full bool // ring has wrapped
	now  func() time.Time
}

var _ balancer.Tracer = (*Events)(nil)

// NewEvents returns an Events that keeps the last n events (DefaultEvents
// if n <= 0).
func NewEvents(n int) *Events {
	if n <= 0 {
		n = DefaultEvents
	}
	return &Events{ring: make([]Event, n), now: time.Now}
}

func (e *Events) add(ev Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ev.Time = e.now()
	e.ring[e.next] = ev
	e.next++
	if e.next == len(e.ring) {
		e.next, e.full = 0, true
	}
}

// Recent returns the events kept, newest first.
func (e *Events) Recent() []Event {
	if e == nil {
		return []Event{}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	n := e.next
	if e.full {
		n = len(e.ring)
	}
	out := make([]Event, 0, n)
	for i := 1; i <= n; i++ {
		out = append(out, e.ring[(e.next-i+len(e.ring))%len(e.ring)])
	}
	return out
}

// RegistrationHandled records a registration answered with anything but
// OK.
func (e *Events) RegistrationHandled(p peer.ID, status pb.Status) {
	if status == pb.Status_OK {
		return
	}
	e.add(Event{Kind: KindRegistrationRefused, Peer: p.String(), Reason: status.String()})
}

// StreamRefused records a refused stream, with the protocol as asked for
// and the peers: unlike metric labels, the ring is bounded whatever they
// are.
func (e *Events) StreamRefused(r balancer.Refusal) {
	e.add(Event{Kind: KindStreamRefused, Direction: r.Direction.String(), Protocol: string(r.Requested),
		Peer: r.Peer.String(), Target: r.Target.String(), Reason: r.Why(), Detail: r.Detail})
}

// BackendEjected records an ejection.
func (e *Events) BackendEjected(backend peer.ID, d time.Duration) {
	e.add(Event{Kind: KindBackendEjected, Peer: backend.String(), Reason: "ejected for " + d.String()})
}

// RoutesChanged does nothing: the page reads routes from the balancer.
func (e *Events) RoutesChanged(int, int) {}

// StreamAccepted does nothing.
func (e *Events) StreamAccepted(balancer.Direction, protocol.ID, peer.ID, time.Duration) {}

// StreamEnded does nothing.
func (e *Events) StreamEnded(balancer.Direction, protocol.ID, peer.ID, int64, int64, bool) {}

// BytesForwarded does nothing; it is on the data path.
func (e *Events) BytesForwarded(balancer.Direction, bool, int) {}
