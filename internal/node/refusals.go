package node

import (
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
)

// RefusalLogInterval is the shortest time between two log lines about the
// same kind of refusal; the line says how many there were since the last.
const RefusalLogInterval = 10 * time.Second

// refusals counts every refusal of the resource manager by the resource
// refused (conn, stream, memory) and the limit that refused it (the scope
// class: system, transient, peer, protocol, protocol_peer, service,
// service_peer, conn, stream, allowlisted_system, allowlisted_transient;
// ip_conns and ip_rate for the per-IP limits), and logs them, at most a line
// per kind per RefusalLogInterval.
//
// It is a trace reporter: go-libp2p calls ConsumeEvent synchronously, under
// the resource manager's trace lock, for every change of every scope, so
// anything but a refusal returns at once.
type refusals struct {
	log     *slog.Logger
	counter *prometheus.CounterVec // nil without a registry

	mu    sync.Mutex
	kinds map[refusalKind]*refusalLog
}

type refusalKind struct{ resource, limit string }

type refusalLog struct {
	last    time.Time
	pending int
}

func newRefusals(log *slog.Logger, reg prometheus.Registerer) (*refusals, error) {
	r := &refusals{log: log, kinds: map[refusalKind]*refusalLog{}}
	if reg != nil {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "libp2p_balancer",
			Name:      "resource_refusals_total",
			Help:      "Connections, streams and memory reservations refused by the host's resource manager, by resource and by the limit that refused (scope class, or ip_conns and ip_rate for the per-IP limits).",
		}, []string{"resource", "limit"})
		if err := reg.Register(c); err != nil {
			return nil, err
		}
		r.counter = c
	}
	return r, nil
}

// ConsumeEvent implements rcmgr.TraceReporter.
func (r *refusals) ConsumeEvent(evt rcmgr.TraceEvt) {
	var resource string
	switch evt.Type {
	case rcmgr.TraceBlockAddStreamEvt:
		resource = "stream"
	case rcmgr.TraceBlockAddConnEvt:
		resource = "conn"
	case rcmgr.TraceBlockReserveMemoryEvt:
		// Only a reservation that something cannot do without (a new
		// yamux stream's window) is a refusal; a window that may not
		// grow is routine.
		if evt.Priority != network.ReservationPriorityAlways {
			return
		}
		resource = "memory"
	default:
		return
	}
	r.refused(resource, scopeClass(evt.Name), evt.Name)
}

// refused counts one refusal and logs it unless a line about its kind went
// out less than RefusalLogInterval ago. scope is the scope's full name (it
// may hold a peer ID, which goes to the log, never to a label).
func (r *refusals) refused(resource, limit, scope string) {
	if r.counter != nil {
		r.counter.WithLabelValues(resource, limit).Inc()
	}
	if r.log == nil {
		return
	}
	k := refusalKind{resource, limit}
	now := time.Now()
	r.mu.Lock()
	l := r.kinds[k]
	if l == nil {
		l = &refusalLog{}
		r.kinds[k] = l
	}
	l.pending++
	n := 0
	if now.Sub(l.last) >= RefusalLogInterval {
		n, l.pending, l.last = l.pending, 0, now
	}
	r.mu.Unlock()
	if n > 0 {
		r.log.Warn("resource limit refused", "resource", resource, "limit", limit, "scope", scope, "count", n,
			"see", "resource_manager in the configuration; balancer status shows the limits in force")
	}
}

// scopeClass names the kind of scope a resource manager scope name is
// (rcmgr's names: "system", "peer:<id>", "protocol:<id>.peer:<id>",
// "svc:<name>", "conn-<n>" ...), a bounded set fit for a metric label.
func scopeClass(name string) string {
	switch {
	case name == "system" || name == "transient":
		return name
	case name == "allowlistedSystem":
		return "allowlisted_system"
	case name == "allowlistedTransient":
		return "allowlisted_transient"
	case strings.HasPrefix(name, "svc:"):
		if strings.Contains(name, ".peer:") {
			return "service_peer"
		}
		return "service"
	case strings.HasPrefix(name, "protocol:"):
		if strings.Contains(name, ".peer:") {
			return "protocol_peer"
		}
		return "protocol"
	case strings.HasPrefix(name, "peer:"):
		return "peer"
	case strings.HasPrefix(name, "conn"):
		return "conn"
	case strings.HasPrefix(name, "stream"):
		return "stream"
	}
	return "other"
}

// countedRM reports the per-IP refusals of the resource manager it wraps,
// which happen before any scope exists and so leave no trace event.
type countedRM struct {
	network.ResourceManager
	rep *refusals
}

func (c *countedRM) OpenConnection(dir network.Direction, usefd bool, endpoint ma.Multiaddr) (network.ConnManagementScope, error) {
	s, err := c.ResourceManager.OpenConnection(dir, usefd, endpoint)
	if err != nil {
		// go-libp2p's texts (rcmgr.go, openConnection); the scope limits
		// refuse with network.ErrResourceLimitExceeded and a trace event.
		switch msg := err.Error(); {
		case strings.Contains(msg, "connections per ip limit exceeded"):
			c.rep.refused("conn", "ip_conns", endpoint.String())
		case msg == "rate limit exceeded":
			c.rep.refused("conn", "ip_rate", endpoint.String())
		}
	}
	return s, err
}
