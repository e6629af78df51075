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
// protocols are routed ones, ones granted by exact name, or "other" (see
// balancer.Refusal.Protocol), backends are allowed backends, and statuses
// and reasons come from fixed lists. A peer that is not an allowed backend
// never becomes a label value.
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
// outbound ones the wire status in lower case. protocol is a routed
// protocol, one granted by exact name in the allow list, or "other" for an
// outbound protocol outside both (backends choose outbound protocols, and
// one looping over random protocol IDs must not create series without
// end); it is empty for an outbound refusal of a request that was not read
// (a peer that is not a backend, or a malformed request).
func New(reg prometheus.Registerer) (*Tracer, error) {
	if reg == nil {
		reg = prometheus.DefaultRegisterer
	}
	v := newVecs()
	if err := registerAll(reg, v.collectors()); err != nil {
		return nil, err
	}
	return v.tracer(), nil
}

// vecs are the Tracer's metric families, before registration.
type vecs struct {
	streams       *prometheus.CounterVec
	active        *prometheus.GaugeVec
	refused       *prometheus.CounterVec
	bytes         *prometheus.CounterVec
	handshake     *prometheus.HistogramVec
	registrations *prometheus.CounterVec
	routes        prometheus.Gauge
	backends      prometheus.Gauge
	ejections     *prometheus.CounterVec
	ejectionSecs  prometheus.Counter
}

// newVecs defines the metric families listed in New's comment.
func newVecs() *vecs {
	counterVec := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: name, Help: help}, labels)
	}
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Name: name, Help: help})
	}
	return &vecs{
		streams: counterVec("streams_total",
			"Forwarded streams that ended, by direction, protocol, backend and outcome.",
			"direction", "protocol", "backend", "outcome"),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: Namespace,
			Name:      "streams_active",
			Help:      "Forwarded streams in flight, by direction.",
		}, []string{"direction"}),
		refused: counterVec("streams_refused_total",
			"Streams refused before reaching a backend (inbound) or target (outbound), by direction, protocol and reason.",
			"direction", "protocol", "reason"),
		bytes: counterVec("forwarded_bytes_total",
			"Bytes forwarded, by stream direction and by flow (to or from the backend).",
			"direction", "flow"),
		handshake: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace,
			Name:      "handshake_duration_seconds",
			Help:      "Time until a backend (inbound) or target (outbound) accepted a forwarded stream, by direction.",
			Buckets:   HandshakeBuckets,
		}, []string{"direction"}),
		registrations: counterVec("registrations_total", "Routing requests handled, by response status.", "status"),
		routes:        gauge("routes", "Routes in the routing table (one per protocol and backend)."),
		backends:      gauge("backends", "Backends with at least one route."),
		ejections:     counterVec("backend_ejections_total", "Passive-health ejections, by backend.", "backend"),
		ejectionSecs: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace,
			Name:      "backend_ejection_seconds_total",
			Help:      "Total length of the passive-health ejections, in seconds.",
		}),
	}
}

func (v *vecs) collectors() []prometheus.Collector {
	return []prometheus.Collector{v.streams, v.active, v.refused, v.bytes, v.handshake, v.registrations,
		v.routes, v.backends, v.ejections, v.ejectionSecs}
}

// registerAll registers every collector in cs with reg, or none of them.
func registerAll(reg prometheus.Registerer, cs []prometheus.Collector) error {
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			// Leave reg as it was, so that the caller can fix the
			// conflict and try again.
			for _, done := range cs[:i] {
				reg.Unregister(done)
			}
			return err
		}
	}
	return nil
}

// tracer builds the Tracer on v, with the per-direction children curried
// once so that the hot paths (BytesForwarded runs on every write of every
// stream) do no label lookup and no allocation. Creating the children also
// makes them show up, at zero, before any traffic, so that rate() works
// from the first scrape.
func (v *vecs) tracer() *Tracer {
	t := &Tracer{
		streams:       v.streams,
		refused:       v.refused,
		registrations: v.registrations,
		routes:        v.routes,
		backends:      v.backends,
		ejections:     v.ejections,
		ejectionSecs:  v.ejectionSecs,
	}
	for i, d := range []balancer.Direction{balancer.Inbound, balancer.Outbound} {
		t.active[i] = v.active.WithLabelValues(d.String())
		t.handshake[i] = v.handshake.WithLabelValues(d.String())
		t.bytes[i][0] = v.bytes.WithLabelValues(d.String(), FlowFromBackend)
		t.bytes[i][1] = v.bytes.WithLabelValues(d.String(), FlowToBackend)
	}
	return t
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

// StreamRefused counts a refused stream, labelled with the bounded form of
// its protocol (r.Protocol, never r.Requested).
func (t *Tracer) StreamRefused(r balancer.Refusal) {
	tags := metricshelper.GetStringSlice()
	defer metricshelper.PutStringSlice(tags)
	*tags = append(*tags, r.Direction.String(), string(r.Protocol), reasonLabel(r))
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

// statusLabels are computed once so that labelling does not allocate:
// Status.String and strings.ToLower would, on every call.
var statusLabels = map[pb.Status]string{}

func init() {
	for v, name := range pb.Status_name {
		statusLabels[pb.Status(v)] = strings.ToLower(name)
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

// reasonLabel is the reason label of a refusal: the inbound reason, or the
// wire status of an outbound one in lower case. These values are the ones
// dashboards and alerts match; keep them.
func reasonLabel(r balancer.Refusal) string {
	switch r.Reason {
	case balancer.ReasonStatus:
		return statusLabel(r.Status)
	case balancer.ReasonLimit:
		return "limit"
	case balancer.ReasonRate:
		return "rate"
	case balancer.ReasonNoBackend:
		return "no_backend"
	case balancer.ReasonRefusedByBackends:
		return "refused_by_backends"
	}
	return "other"
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
