package metrics_test

import (
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/metrics"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

const protoA1 = "/test/a1/1.0.0"

// Real peer IDs: a peer.ID holds raw multihash bytes, which are not valid
// label values as they are.
var backendA, stranger = newID(), newID()

func newID() peer.ID {
	k, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		panic(err)
	}
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		panic(err)
	}
	return id
}

// exercise calls every Tracer method at least once, so that every vector
// has a child and every family shows up when gathered.
func exercise(t balancer.Tracer) {
	t.RegistrationHandled(stranger, pb.Status_PERMISSION_DENIED)
	t.RegistrationHandled(backendA, pb.Status_OK)
	t.RoutesChanged(3, 2)
	t.StreamAccepted(balancer.Inbound, protoA1, backendA, 3*time.Millisecond)
	t.StreamRefused(balancer.Refusal{Direction: balancer.Inbound, Reason: balancer.ReasonNoBackend, Protocol: protoA1, Requested: protoA1, Peer: stranger})
	t.StreamRefused(balancer.Refusal{Direction: balancer.Outbound, Status: pb.Status_PERMISSION_DENIED, Peer: stranger})
	t.BytesForwarded(balancer.Inbound, true, 100)
	t.BytesForwarded(balancer.Inbound, false, 50)
	t.StreamEnded(balancer.Inbound, protoA1, backendA, 100, 50, true)
	t.BackendEjected(backendA, 10*time.Second)
}

// value returns the value of the one series of family name whose labels
// include want, failing the test if there is not exactly one.
func value(t *testing.T, g prometheus.Gatherer, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var found []float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !hasLabels(m, want) {
				continue
			}
			switch {
			case m.Counter != nil:
				found = append(found, m.Counter.GetValue())
			case m.Gauge != nil:
				found = append(found, m.Gauge.GetValue())
			case m.Histogram != nil:
				found = append(found, float64(m.Histogram.GetSampleCount()))
			}
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s%v: %d series, want 1", name, want, len(found))
	}
	return found[0]
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, lp := range m.GetLabel() {
		if v, ok := want[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(want)
}

func TestValues(t *testing.T) {
	reg := prometheus.NewRegistry()
	tr, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	exercise(tr)
	tr.StreamAccepted(balancer.Outbound, "/x/1", backendA, time.Second)
	tr.BytesForwarded(balancer.Outbound, true, 7)
	tr.StreamEnded(balancer.Outbound, "/x/1", backendA, 7, 0, false)

	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"libp2p_balancer_registrations_total", map[string]string{"status": "ok"}, 1},
		{"libp2p_balancer_registrations_total", map[string]string{"status": "permission_denied"}, 1},
		{"libp2p_balancer_routes", nil, 3},
		{"libp2p_balancer_backends", nil, 2},
		{"libp2p_balancer_streams_active", map[string]string{"direction": "inbound"}, 0},
		{"libp2p_balancer_streams_active", map[string]string{"direction": "outbound"}, 0},
		{"libp2p_balancer_handshake_duration_seconds", map[string]string{"direction": "inbound"}, 1},
		{"libp2p_balancer_handshake_duration_seconds", map[string]string{"direction": "outbound"}, 1},
		{"libp2p_balancer_streams_refused_total", map[string]string{"direction": "inbound", "protocol": protoA1, "reason": "no_backend"}, 1},
		{"libp2p_balancer_streams_refused_total", map[string]string{"direction": "outbound", "protocol": "", "reason": "permission_denied"}, 1},
		{"libp2p_balancer_forwarded_bytes_total", map[string]string{"direction": "inbound", "flow": "to_backend"}, 100},
		{"libp2p_balancer_forwarded_bytes_total", map[string]string{"direction": "inbound", "flow": "from_backend"}, 50},
		{"libp2p_balancer_forwarded_bytes_total", map[string]string{"direction": "outbound", "flow": "to_backend"}, 7},
		{"libp2p_balancer_forwarded_bytes_total", map[string]string{"direction": "outbound", "flow": "from_backend"}, 0},
		{"libp2p_balancer_streams_total", map[string]string{"direction": "inbound", "protocol": protoA1, "backend": backendA.String(), "outcome": "ok"}, 1},
		{"libp2p_balancer_streams_total", map[string]string{"direction": "outbound", "protocol": "/x/1", "backend": backendA.String(), "outcome": "error"}, 1},
		{"libp2p_balancer_backend_ejections_total", map[string]string{"backend": backendA.String()}, 1},
		{"libp2p_balancer_backend_ejection_seconds_total", nil, 10},
	} {
		if got := value(t, reg, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}

	// The stranger's peer ID must not appear anywhere.
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetValue() == stranger.String() || lp.GetValue() == string(stranger) {
					t.Errorf("%s carries a stranger's peer ID as label %s", mf.GetName(), lp.GetName())
				}
			}
		}
	}
}

// TestUnknownStatus keeps the status label closed: a status number this
// build does not know becomes "other".
func TestUnknownStatus(t *testing.T) {
	reg := prometheus.NewRegistry()
	tr, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	tr.RegistrationHandled(backendA, pb.Status(12345))
	if got := value(t, reg, "libp2p_balancer_registrations_total", map[string]string{"status": "other"}); got != 1 {
		t.Fatalf("other = %v, want 1", got)
	}
}

// TestReasonLabels pins the reason label values: dashboards and alerts
// match them, so a change in the balancer's reasons must not move them.
func TestReasonLabels(t *testing.T) {
	reg := prometheus.NewRegistry()
	tr, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		r    balancer.Refusal
		want string
	}{
		{balancer.Refusal{Direction: balancer.Inbound, Reason: balancer.ReasonLimit}, "limit"},
		{balancer.Refusal{Direction: balancer.Inbound, Reason: balancer.ReasonRate}, "rate"},
		{balancer.Refusal{Direction: balancer.Inbound, Reason: balancer.ReasonNoBackend}, "no_backend"},
		{balancer.Refusal{Direction: balancer.Inbound, Reason: balancer.ReasonRefusedByBackends}, "refused_by_backends"},
		{balancer.Refusal{Direction: balancer.Outbound, Status: pb.Status_PROTOCOL_NOT_SUPPORTED}, "protocol_not_supported"},
		{balancer.Refusal{Direction: balancer.Outbound, Status: pb.Status(12345)}, "other"},
	} {
		c.r.Protocol = protoA1
		tr.StreamRefused(c.r)
		labels := map[string]string{"direction": c.r.Direction.String(), "protocol": protoA1, "reason": c.want}
		if got := value(t, reg, "libp2p_balancer_streams_refused_total", labels); got != 1 {
			t.Errorf("%s: %v, want 1", c.want, got)
		}
	}
}

// TestLint checks the metrics against Prometheus's naming conventions.
func TestLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	tr, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	exercise(tr)
	problems, err := promlint.NewWithMetricFamilies(gatherAll(t, reg)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	for _, mf := range gatherAll(t, reg) {
		if !strings.HasPrefix(mf.GetName(), metrics.Namespace+"_") {
			t.Errorf("%s lacks the %s_ prefix", mf.GetName(), metrics.Namespace)
		}
	}
}

func gatherAll(t *testing.T, g prometheus.Gatherer) []*dto.MetricFamily {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

func TestRegisterTwice(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := metrics.New(reg); err != nil {
		t.Fatal(err)
	}
	if _, err := metrics.New(reg); err == nil {
		t.Fatal("a second Tracer on the same registry: no error")
	}
}

// TestNoAlloc checks that the Tracer's methods do not allocate once their
// label combinations exist, as go-libp2p's relay metrics test does:
// BytesForwarded runs on every write of every forwarded stream.
func TestNoAlloc(t *testing.T) {
	reg := prometheus.NewRegistry()
	tr, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	exercise(tr)
	// The Tee a daemon builds must not add any either.
	tee := metrics.Tee(tr, nopTracer{})
	tests := []struct {
		name   string
		f      func()
		pooled bool // borrows a label slice from a sync.Pool
	}{
		{"BytesForwarded", func() { tr.BytesForwarded(balancer.Outbound, true, 1500) }, false},
		{"Tee.BytesForwarded", func() { tee.BytesForwarded(balancer.Inbound, false, 1500) }, false},
		{"StreamAccepted", func() { tr.StreamAccepted(balancer.Inbound, protoA1, backendA, time.Millisecond) }, false},
		{"RoutesChanged", func() { tr.RoutesChanged(4, 2) }, false},
		{"RegistrationHandled", func() { tr.RegistrationHandled(backendA, pb.Status_OK) }, false},
		{"BackendEjected", func() { tr.BackendEjected(backendA, time.Second) }, false},
		{"StreamEnded", func() { tr.StreamEnded(balancer.Inbound, protoA1, backendA, 1, 1, true) }, true},
		{"StreamRefused", func() {
			tr.StreamRefused(balancer.Refusal{Direction: balancer.Inbound, Reason: balancer.ReasonNoBackend, Protocol: protoA1, Requested: protoA1, Peer: stranger})
		}, true},
	}
	for _, tc := range tests {
		if tc.pooled && raceEnabled {
			continue
		}
		if allocs := testing.AllocsPerRun(1000, tc.f); allocs > 0 {
			t.Errorf("%s: %.2f allocations per call, want 0", tc.name, allocs)
		}
	}
}

type nopTracer struct{}

func (nopTracer) RegistrationHandled(peer.ID, pb.Status)                                   {}
func (nopTracer) RoutesChanged(int, int)                                                   {}
func (nopTracer) StreamAccepted(balancer.Direction, protocol.ID, peer.ID, time.Duration)   {}
func (nopTracer) StreamRefused(balancer.Refusal)                                           {}
func (nopTracer) StreamEnded(balancer.Direction, protocol.ID, peer.ID, int64, int64, bool) {}
func (nopTracer) BytesForwarded(balancer.Direction, bool, int)                             {}
func (nopTracer) BackendEjected(peer.ID, time.Duration)                                    {}

// TestTee checks that every call reaches every tracer, and that Tee
// unwraps what needs no fan-out.
func TestTee(t *testing.T) {
	reg1, reg2 := prometheus.NewRegistry(), prometheus.NewRegistry()
	t1, err := metrics.New(reg1)
	if err != nil {
		t.Fatal(err)
	}
	t2, err := metrics.New(reg2)
	if err != nil {
		t.Fatal(err)
	}
	exercise(metrics.Tee(nil, metrics.Tee(t1, nil), t2))
	for _, reg := range []prometheus.Gatherer{reg1, reg2} {
		if got := value(t, reg, "libp2p_balancer_backend_ejections_total", map[string]string{"backend": backendA.String()}); got != 1 {
			t.Errorf("ejections = %v, want 1", got)
		}
		if got := value(t, reg, "libp2p_balancer_streams_total", map[string]string{"outcome": "ok"}); got != 1 {
			t.Errorf("streams = %v, want 1", got)
		}
	}
	if got := metrics.Tee(nil, t1); got != balancer.Tracer(t1) {
		t.Errorf("Tee of one tracer = %T, want the tracer itself", got)
	}
}

// TestLibp2pOptions checks that a host built with Libp2pOptions puts
// go-libp2p's own metrics on the same registry.
func TestLibp2pOptions(t *testing.T) {
	reg := metrics.NewRegistry()
	h := testnet.NewHost(t, testnet.TCP, testnet.Options{Extra: metrics.Libp2pOptions(reg)})
	other := testnet.NewHost(t, testnet.TCP, testnet.Options{})
	testnet.Connect(t, other, h)
	prefixes := []string{"libp2p_rcmgr_", "libp2p_swarm_", "libp2p_identify_", "libp2p_eventbus_", "go_", "process_"}
	testnet.Eventually(t, 10*time.Second, func() bool {
		return len(missingPrefixes(gatherAll(t, reg), prefixes)) == 0
	}, "metrics with every prefix of %v", prefixes)
}

func missingPrefixes(mfs []*dto.MetricFamily, prefixes []string) []string {
	var missing []string
	for _, p := range prefixes {
		found := false
		for _, mf := range mfs {
			if strings.HasPrefix(mf.GetName(), p) {
				found = true
				break
			}
		}
		if !found {
			missing = append(missing, p)
		}
	}
	return missing
}
