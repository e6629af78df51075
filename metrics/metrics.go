// Package metrics exports what a balancer does as Prometheus metrics: a
// Tracer implementing balancer.Tracer, the go-libp2p options that put the
// host's own metrics (resource manager, swarm, identify, ...) on the same
// registry, a Tee to combine the Tracer with other tracers, and a Grafana
// dashboard (grafana-dashboard.json, beside this file) built on both.
//
// A daemon wires it up as follows, then serves reg on its admin listener
// (package admin):
//
//	reg := metrics.NewRegistry()
//	tr, err := metrics.New(reg)
//	h, err := libp2p.New(append(opts, metrics.Libp2pOptions(reg)...)...)
//	lb, err := balancer.New(h, balancer.WithTracer(tr))
//
// grafana-dashboard.json imports into Grafana (Dashboards, Import) with a
// Prometheus data source; its instance variable lists the balancers that
// export libp2p_balancer_routes. It shows every metric of the Tracer and a
// few of go-libp2p's and the process's; a test checks that every metric it
// queries exists.
//
// Every metric name starts with libp2p_balancer_. Label values are bounded:
// protocols are those routed to, or requested by, allowed backends (the
// balancer never passes a Tracer a protocol a remote peer chose), backends
// are allowed backends, and statuses and reasons come from fixed lists. A
// peer that is not an allowed backend never becomes a label value.
package metrics

import (
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/metricshelper"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// Namespace prefixes every metric this package defines.
const Namespace = "libp2p_balancer"

// Label values of the outcome label of libp2p_balancer_streams_total.
const (
	OutcomeOK    = "ok"    // both directions ended cleanly
	OutcomeError = "error" // reset, timed out, or failed on either side
)

// Label values of the flow label of libp2p_balancer_forwarded_bytes_total.
const (
	FlowToBackend   = "to_backend"   // from the remote peer or target to the backend
	FlowFromBackend = "from_backend" // from the backend to the remote peer or target
)

// HandshakeBuckets are the buckets of the handshake latency histogram, in
// seconds: from a fraction of a millisecond (a backend on the same machine)
// up to the default dial timeout (15 s), past which an outbound handshake
// gives up.
var HandshakeBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 15}

// Tracer is a balancer.Tracer that keeps Prometheus metrics. Create it with
// New. Its methods are safe for concurrent use and, once a label
// combination has been seen, do not allocate.
type Tracer struct {
	streams       *prometheus.CounterVec
	active        [2]prometheus.Gauge // by balancer.Direction
	bytes         [2][2]prometheus.Counter
	refused       *prometheus.CounterVec
	registrations *prometheus.CounterVec
	handshake     [2]prometheus.Observer
	routes        prometheus.Gauge
	backends      prometheus.Gauge
	ejections     *prometheus.CounterVec
	ejectionSecs  prometheus.Counter

	// ids caches each backend's peer ID in text form (peer.ID -> string):
	// a peer.ID holds the raw multihash bytes, which are not valid UTF-8
	// label values, and encoding it anew on every stream would allocate.
	// It holds allowed backends only, as the balancer passes no other
	// peer to the methods that use it.
	ids sync.Map
}

var _ balancer.Tracer = (*Tracer)(nil)

// New creates a Tracer and registers its metrics with reg; nil reg means
// prometheus.DefaultRegisterer. It fails when reg already holds metrics of
// the same names, for instance those of another Tracer.
//
// Metrics (all prefixed libp2p_balancer_):
//
//	streams_total{direction,protocol,backend,outcome}  counter  forwarded streams that ended
//	streams_active{direction}                          gauge    forwarded streams in flight
//	streams_refused_total{direction,protocol,reason}   counter  streams refused before reaching a backend or target
//	forwarded_bytes_total{direction,flow}              counter  bytes forwarded
//	handshake_duration_seconds{direction}              histogram  time for a backend (inbound) or target (outbound) to accept
//	registrations_total{status}                        counter  routing requests handled, by response status
//	routes                                             gauge    routes in the table
//	backends                                           gauge    backends with at least one route
//	backend_ejections_total{backend}                   counter  passive-health ejections
//	backend_ejection_seconds_total                     counter  total length of the ejections
//
// direction is "inbound" (a remote peer opened the stream) or "outbound" (a
// backend opened it through the balancer); flow is "to_backend" or
// "from_backend"; outcome is "ok" or "error"; status is a wire status in
// lower case ("ok", "permission_denied", ...); reason is, for inbound
// refusals, "limit", "rate", "no_backend" or "refused_by_backends", and for
// outbound ones the wire status in lower case. protocol is empty for an
// outbound refusal that happened before any protocol was accepted (a peer
// that is not a backend, or a malformed request).
func New(reg prometheus.Registerer) (*Tracer, error) {
	if reg == nil {
		reg = prometheus.DefaultRegisterer
	}
	dirs := []string{balancer.Inbound.String(), balancer.Outbound.String()}
	streams := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace,
		Name:      "streams_total",
		Help:      "Forwarded streams that ended, by direction, protocol, backend and outcome.",
	}, []string{"direction", "protocol", "backend", "outcome"})
	active := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: Namespace,
		Name:      "streams_active",
		Help:      "Forwarded streams in flight, by direction.",
	}, []string{"direction"})
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace,
		Name:      "streams_refused_total",
		Help:      "Streams refused before reaching a backend (inbound) or target (outbound), by direction, protocol and reason.",
	}, []string{"direction", "protocol", "reason"})
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace,
		Name:      "forwarded_bytes_total",
		Help:      "Bytes forwarded, by stream direction and by flow (to or from the backend).",
	}, []string{"direction", "flow"})
	handshake := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace,
		Name:      "handshake_duration_seconds",
		Help:      "Time until a backend (inbound) or target (outbound) accepted a forwarded stream, by direction.",
		Buckets:   HandshakeBuckets,
	}, []string{"direction"})
	registrations := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace,
		Name:      "registrations_total",
		Help:      "Routing requests handled, by response status.",
	}, []string{"status"})
	routes := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace,
		Name:      "routes",
		Help:      "Routes in the routing table (one per protocol and backend).",
	})
	backends := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace,
		Name:      "backends",
		Help:      "Backends with at least one route.",
	})
	ejections := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace,
		Name:      "backend_ejections_total",
		Help:      "Passive-health ejections, by backend.",
	}, []string{"backend"})
	ejectionSecs := prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace,
		Name:      "backend_ejection_seconds_total",
		Help:      "Total length of the passive-health ejections, in seconds.",
	})
	all := []prometheus.Collector{streams, active, refused, bytes, handshake, registrations, routes, backends, ejections, ejectionSecs}
	for i, c := range all {
		if err := reg.Register(c); err != nil {
			// Leave reg as it was, so that the caller can fix the
			// conflict and try again.
			for _, done := range all[:i] {
				reg.Unregister(done)
			}
			return nil, err
		}
	}
	t := &Tracer{
		streams:       streams,
		refused:       refused,
		registrations: registrations,
		routes:        routes,
		backends:      backends,
		ejections:     ejections,
		ejectionSecs:  ejectionSecs,
	}
	// Curried once here so that the hot paths (BytesForwarded runs on every
	// write of every stream) do no label lookup and no allocation. Creating
	// the children also makes them show up, at zero, before any traffic, so
	// that rate() works from the first scrape.
	for i, d := range dirs {
		t.active[i] = active.WithLabelValues(d)
		t.handshake[i] = handshake.WithLabelValues(d)
		t.bytes[i][0] = bytes.WithLabelValues(d, FlowFromBackend)
		t.bytes[i][1] = bytes.WithLabelValues(d, FlowToBackend)
	}
	return t, nil
}

// dirIndex maps a direction to its index in the curried arrays; anything
// unexpected counts as inbound rather than panicking on the data path.
func dirIndex(d balancer.Direction) int {
	if d == balancer.Outbound {
		return 1
	}
	return 0
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// backendLabel returns p in its usual text form, from the cache.
func (t *Tracer) backendLabel(p peer.ID) string {
	if s, ok := t.ids.Load(p); ok {
		return s.(string)
	}
	s := p.String()
	t.ids.Store(p, s)
	return s
}

// inc adds one to the child of v with the given labels. It drops the
// update rather than panic, as WithLabelValues would, should a label value
// ever be unacceptable (not UTF-8): a metric is not worth a stream.
func inc(v *prometheus.CounterVec, labels ...string) {
	if c, err := v.GetMetricWithLabelValues(labels...); err == nil {
		c.Inc()
	}
}

// RegistrationHandled counts a routing request by status. The backend is
// not a label: it may be any peer that connected, not only allowed ones.
func (t *Tracer) RegistrationHandled(_ peer.ID, status pb.Status) {
	inc(t.registrations, statusLabel(status))
}

// RoutesChanged sets the routes and backends gauges.
func (t *Tracer) RoutesChanged(routes, backends int) {
	t.routes.Set(float64(routes))
	t.backends.Set(float64(backends))
}

// StreamAccepted counts a stream in flight and observes its handshake.
func (t *Tracer) StreamAccepted(dir balancer.Direction, _ protocol.ID, _ peer.ID, handshake time.Duration) {
	i := dirIndex(dir)
	t.active[i].Inc()
	t.handshake[i].Observe(handshake.Seconds())
}

// StreamRefused counts a refused stream.
func (t *Tracer) StreamRefused(dir balancer.Direction, proto protocol.ID, reason string) {
	tags := metricshelper.GetStringSlice()
	defer metricshelper.PutStringSlice(tags)
	*tags = append(*tags, dir.String(), string(proto), reasonLabel(reason))
	inc(t.refused, *tags...)
}

// StreamEnded counts a finished stream and takes it out of the active
// gauge. Its bytes were already counted by BytesForwarded.
func (t *Tracer) StreamEnded(dir balancer.Direction, proto protocol.ID, backend peer.ID, _, _ int64, clean bool) {
	t.active[dirIndex(dir)].Dec()
	outcome := OutcomeError
	if clean {
		outcome = OutcomeOK
	}
	tags := metricshelper.GetStringSlice()
	defer metricshelper.PutStringSlice(tags)
	*tags = append(*tags, dir.String(), string(proto), t.backendLabel(backend), outcome)
	inc(t.streams, *tags...)
}

// BytesForwarded adds n to the bytes counter of dir and flow. It is on the
// data path and does not allocate.
func (t *Tracer) BytesForwarded(dir balancer.Direction, toBackend bool, n int) {
	t.bytes[dirIndex(dir)][b2i(toBackend)].Add(float64(n))
}

// BackendEjected counts an ejection.
func (t *Tracer) BackendEjected(backend peer.ID, d time.Duration) {
	inc(t.ejections, t.backendLabel(backend))
	t.ejectionSecs.Add(d.Seconds())
}

// statusLabels and reasonLabels are computed once so that labelling does not
// allocate: Status.String and strings.ToLower would, on every call.
var (
	statusLabels = map[pb.Status]string{}
	reasonLabels = map[string]string{
		// The inbound reasons the balancer passes to StreamRefused, in
		// label form.
		"limit":               "limit",
		"rate":                "rate",
		"no backend":          "no_backend",
		"refused by backends": "refused_by_backends",
	}
)

func init() {
	for v, name := range pb.Status_name {
		statusLabels[pb.Status(v)] = strings.ToLower(name)
		// Outbound refusals carry the status name as their reason.
		reasonLabels[name] = strings.ToLower(name)
	}
}

// statusLabel is status in lower case; a status this build does not know
// (from a newer peer) is "other", keeping the label set closed.
func statusLabel(s pb.Status) string {
	if l, ok := statusLabels[s]; ok {
		return l
	}
	return "other"
}

// reasonLabel is the label form of a refusal reason. Reasons come from the
// balancer's code, not from the network, so an unknown one passes through
// as it is rather than hiding a new reason under "other".
func reasonLabel(r string) string {
	if l, ok := reasonLabels[r]; ok {
		return l
	}
	return r
}

// NewRegistry returns a registry holding the Go runtime and process
// collectors, which prometheus.DefaultRegisterer has and a fresh registry
// lacks. Use it rather than the default registry so that nothing a
// dependency registers globally slips onto the admin endpoint unnoticed,
// and so that tests can run several balancers in one process.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// Libp2pOptions returns the go-libp2p options that make a host register its
// own metrics on reg: the resource manager (libp2p_rcmgr_*, also for a
// resource manager built with rcmgr.NewResourceManager and passed in with
// libp2p.ResourceManager, as long as it was not built WithMetricsDisabled),
// swarm (libp2p_swarm_*), identify (libp2p_identify_*), event bus, QUIC and
// the other subsystems the host runs. Pass them to libp2p.New (or
// node.Config.Options) along with the host's other options, and serve the
// same reg (it must also be a prometheus.Gatherer, as *prometheus.Registry
// is) on the admin endpoint.
//
// Without these options go-libp2p registers on prometheus.DefaultRegisterer,
// which the admin endpoint does not serve unless given
// prometheus.DefaultGatherer. go-libp2p's collectors are package-level, so
// every host in the process feeds the same series; a daemon has one host.
// libp2p.New rejects a second PrometheusRegisterer option, and also
// rejects this one after libp2p.DisableMetrics.
func Libp2pOptions(reg prometheus.Registerer) []libp2p.Option {
	return []libp2p.Option{libp2p.PrometheusRegisterer(reg)}
}
