package node

import (
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
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
// ip_conns and ip_rate for the per-IP limits; unknown for memory), and logs
// them, at most a line per kind per RefusalLogInterval.
//
// It is the resource manager's MetricsReporter (rcmgr.WithMetrics), not a
// trace reporter: with any trace reporter go-libp2p builds a timestamped
// event for every change of every scope, whereas the Allow* methods here do
// nothing and the Block* ones run only on a refusal. The refusals of a new
// connection or stream, which the reporter gets without the scope that
// refused, are counted by countedRM from the error instead, which names it.
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

var _ rcmgr.MetricsReporter = (*refusals)(nil)

// The Allow* methods implement rcmgr.MetricsReporter; they run for every
// connection, stream and memory reservation allowed, and do nothing.

func (*refusals) AllowConn(network.Direction, bool)      {}
func (*refusals) AllowStream(peer.ID, network.Direction) {}
func (*refusals) AllowPeer(peer.ID)                      {}
func (*refusals) AllowProtocol(protocol.ID)              {}
func (*refusals) AllowService(string)                    {}
func (*refusals) AllowMemory(int)                        {}

// BlockConn implements rcmgr.MetricsReporter; countedRM.OpenConnection
// counts the refusal, with the limit that refused.
func (*refusals) BlockConn(network.Direction, bool) {}

// BlockStream implements rcmgr.MetricsReporter; countedRM.OpenStream counts
// the refusal, with the limit that refused.
func (*refusals) BlockStream(peer.ID, network.Direction) {}

// BlockPeer implements rcmgr.MetricsReporter: the peer's limit refused a
// new connection's move into the peer's scope (its connections or the
// memory the connection holds; both count as a refused conn).
func (r *refusals) BlockPeer(p peer.ID) { r.refused("conn", "peer", "peer:"+p.String()) }

// BlockProtocol implements rcmgr.MetricsReporter.
func (r *refusals) BlockProtocol(proto protocol.ID) {
	r.refused("stream", "protocol", "protocol:"+string(proto))
}

// BlockProtocolPeer implements rcmgr.MetricsReporter.
func (r *refusals) BlockProtocolPeer(proto protocol.ID, p peer.ID) {
	r.refused("stream", "protocol_peer", "protocol:"+string(proto)+".peer:"+p.String())
}

// BlockService implements rcmgr.MetricsReporter.
func (r *refusals) BlockService(svc string) { r.refused("stream", "service", "svc:"+svc) }

// BlockServicePeer implements rcmgr.MetricsReporter.
func (r *refusals) BlockServicePeer(svc string, p peer.ID) {
	r.refused("stream", "service_peer", "svc:"+svc+".peer:"+p.String())
}

// BlockMemory implements rcmgr.MetricsReporter. go-libp2p tells neither the
// scope that refused nor the priority, so this counts, with limit
// "unknown", every refused reservation: a new yamux stream's window, which
// the stream cannot do without, and also a window's growth, which the
// stream does without (that one is refused once memory is half used).
func (r *refusals) BlockMemory(size int) { r.refused("memory", "unknown", "") }

// refused counts one refusal and logs it unless a line about its kind went
// out less than RefusalLogInterval ago. scope is the scope's full name (it
// may hold a peer ID, which goes to the log, never to a label), or "" when
// go-libp2p does not tell it.
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
		attrs := []any{"resource", resource, "limit", limit}
		if scope != "" {
			attrs = append(attrs, "scope", scope)
		}
		r.log.Warn("resource limit refused", append(attrs, "count", n,
			"see", "resource_manager in the configuration; balancer status shows the limits in force")...)
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
	case strings.HasPrefix(name, "conn-"):
		return "conn"
	case strings.HasPrefix(name, "stream-"):
		return "stream"
	}
	return "other"
}

// refusingScope returns the name of the scope that refused, from the error
// of a scope limit: rcmgr prefixes the error with the name of each scope it
// passes through ("conn-5: transient: cannot reserve inbound connection:
// resource limit exceeded"), so the refusing scope is the last of them.
func refusingScope(err error) string {
	parts := strings.Split(err.Error(), ": ")
	for i := len(parts) - 1; i >= 0; i-- {
		if scopeClass(parts[i]) != "other" {
			return parts[i]
		}
	}
	return ""
}

// countedRM counts the refusals of a new connection or stream, whose error
// names the scope that refused (the resource manager's MetricsReporter is
// not told), and the per-IP refusals, which happen before any scope exists.
type countedRM struct {
	network.ResourceManager
	rep *refusals
}

func (c *countedRM) OpenConnection(dir network.Direction, usefd bool, endpoint ma.Multiaddr) (network.ConnManagementScope, error) {
	s, err := c.ResourceManager.OpenConnection(dir, usefd, endpoint)
	if err != nil {
		// go-libp2p's texts (rcmgr.go, openConnection); the scope limits
		// refuse with network.ErrResourceLimitExceeded.
		switch msg := err.Error(); {
		case strings.Contains(msg, "connections per ip limit exceeded"):
			c.rep.refused("conn", "ip_conns", endpoint.String())
		case msg == "rate limit exceeded":
			c.rep.refused("conn", "ip_rate", endpoint.String())
		case errors.Is(err, network.ErrResourceLimitExceeded):
			scope := refusingScope(err)
			c.rep.refused("conn", scopeClass(scope), scope)
		}
	}
	return s, err
}

func (c *countedRM) OpenStream(p peer.ID, dir network.Direction) (network.StreamManagementScope, error) {
	s, err := c.ResourceManager.OpenStream(p, dir)
	if err != nil && errors.Is(err, network.ErrResourceLimitExceeded) {
		scope := refusingScope(err)
		c.rep.refused("stream", scopeClass(scope), scope)
	}
	return s, err
}
