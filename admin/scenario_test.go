package admin_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/libp2p-balancer/libp2p-balancer/admin"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// scenario is the known run the admin tests check figures against: on real
// loopback hosts, remote peer D opens four streams on A1, which backend A
// (scripted, so that it sends exactly one registration) serves; A refuses
// the fourth. A peer that is not an allowed backend tries to register.
// Backend B opens one stream to E through the balancer.
type scenario struct {
	*fixture
	a, b, stranger lbtest.Identity
	remote         peer.ID // D, the remote peer whose stream A refused
}

// Payload sizes: each stream carries its payload to the backend and the
// same back (testnet.Echo).
var (
	inboundSizes = []int{1000, 2000, 3000}
	outboundSize = 5000
)

func runScenario(t *testing.T) *scenario {
	t.Helper()
	a, b, stranger := lbtest.NewIdentity(t), lbtest.NewIdentity(t), lbtest.NewIdentity(t)
	f := newFixture(t, []lbtest.Identity{a, b}, "")

	sa := f.newScriptedBackend(a, func(n int32) bool { return n == 4 })
	if st := register(t, sa.host, f.Host.ID(), protoA1); st != pb.Status_OK {
		t.Fatalf("A's registration: %v", st)
	}
	s := testnet.NewHost(t, testnet.TCP, testnet.Options{Key: stranger.Key, NoListen: true})
	testnet.Connect(t, s, f.Host)
	if st := register(t, s, f.Host.ID(), protoA1); st != pb.Status_PERMISSION_DENIED {
		t.Fatalf("stranger's registration: %v, want PERMISSION_DENIED", st)
	}

	d := f.NewPeer()
	open := func() network.Stream {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		st, err := d.NewStream(ctx, f.Host.ID(), protoA1)
		if err != nil {
			t.Fatalf("D opens %s: %v", protoA1, err)
		}
		return st
	}
	for _, n := range inboundSizes {
		if err := testnet.RoundTrip(open(), testnet.RandomBytes(n)); err != nil {
			t.Fatalf("inbound stream of %d bytes: %v", n, err)
		}
	}
	if err := testnet.RoundTrip(open(), testnet.RandomBytes(10)); err == nil {
		t.Fatal("the stream A refuses went through")
	}

	beB, bHost := f.NewBackend(b, nil)
	e := testnet.NewHost(t, testnet.TCP, testnet.Options{})
	e.SetStreamHandler(protoB1, testnet.Echo)
	bHost.Peerstore().AddAddrs(e.ID(), e.Addrs(), time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := beB.NewStream(ctx, e.ID(), protoB1)
	if err != nil {
		t.Fatalf("B opens a stream to E: %v", err)
	}
	if err := testnet.RoundTrip(out, testnet.RandomBytes(outboundSize)); err != nil {
		t.Fatalf("outbound stream: %v", err)
	}

	// The balancer reports a stream's end before it stops counting the
	// stream as active.
	testnet.Eventually(t, 10*time.Second, func() bool { return f.LB.ActiveStreams() == 0 }, "no stream in flight")
	return &scenario{fixture: f, a: a, b: b, stranger: stranger, remote: d.ID()}
}

// TestScenario runs the scenario once and checks /metrics, the JSON API,
// the terminal table and the probes against it.
func TestScenario(t *testing.T) {
	sc := runScenario(t)
	t.Run("metrics", func(t *testing.T) { checkMetrics(t, sc) })
	t.Run("api", func(t *testing.T) { checkAPI(t, sc) })
	t.Run("print", func(t *testing.T) { checkPrint(t, sc) })
	t.Run("probes", func(t *testing.T) { checkProbes(t, sc) })
}

func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing %s: %v", url, err)
	}
	return mfs
}

// series returns the values of family name's series whose labels are
// exactly want (ignoring none), or false if there is no such series.
func series(mfs map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	mf := mfs[name]
	if mf == nil {
		return 0, false
	}
	for _, m := range mf.GetMetric() {
		if len(m.GetLabel()) != len(want) {
			continue
		}
		ok := true
		for _, lp := range m.GetLabel() {
			if v, has := want[lp.GetName()]; !has || v != lp.GetValue() {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

func checkMetrics(t *testing.T, sc *scenario) {
	mfs := scrape(t, sc.srv.URL()+"/metrics")
	a, b := sc.a.ID.String(), sc.b.ID.String()
	var in, out float64
	for _, n := range inboundSizes {
		in += float64(n)
	}
	out = float64(outboundSize)
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"libp2p_balancer_streams_total", map[string]string{"direction": "inbound", "protocol": string(protoA1), "backend": a, "outcome": "ok"}, 3},
		// B1 is neither routed nor granted by name (B may use any
		// protocol), so its label is "other".
		{"libp2p_balancer_streams_total", map[string]string{"direction": "outbound", "protocol": "other", "backend": b, "outcome": "ok"}, 1},
		{"libp2p_balancer_streams_refused_total", map[string]string{"direction": "inbound", "protocol": string(protoA1), "reason": "refused_by_backends"}, 1},
		{"libp2p_balancer_streams_active", map[string]string{"direction": "inbound"}, 0},
		{"libp2p_balancer_streams_active", map[string]string{"direction": "outbound"}, 0},
		{"libp2p_balancer_forwarded_bytes_total", map[string]string{"direction": "inbound", "flow": "to_backend"}, in},
		{"libp2p_balancer_forwarded_bytes_total", map[string]string{"direction": "inbound", "flow": "from_backend"}, in},
		{"libp2p_balancer_forwarded_bytes_total", map[string]string{"direction": "outbound", "flow": "to_backend"}, out},
		{"libp2p_balancer_forwarded_bytes_total", map[string]string{"direction": "outbound", "flow": "from_backend"}, out},
		{"libp2p_balancer_handshake_duration_seconds", map[string]string{"direction": "inbound"}, 3},
		{"libp2p_balancer_handshake_duration_seconds", map[string]string{"direction": "outbound"}, 1},
		{"libp2p_balancer_registrations_total", map[string]string{"status": "ok"}, 1},
		{"libp2p_balancer_registrations_total", map[string]string{"status": "permission_denied"}, 1},
		{"libp2p_balancer_routes", map[string]string{}, 1},
		{"libp2p_balancer_backends", map[string]string{}, 1},
		{"libp2p_balancer_backend_ejection_seconds_total", map[string]string{}, 0},
	} {
		got, ok := series(mfs, c.name, c.labels)
		if !ok {
			t.Errorf("%s%v: no such series", c.name, c.labels)
		} else if got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	// Exactly these series and no others: nothing counted twice under
	// another label, nothing about a stranger.
	for name, want := range map[string]int{
		"libp2p_balancer_streams_total":           2,
		"libp2p_balancer_streams_refused_total":   1,
		"libp2p_balancer_registrations_total":     2,
		"libp2p_balancer_backend_ejections_total": 0,
	} {
		got := 0
		if mf := mfs[name]; mf != nil {
			got = len(mf.GetMetric())
		}
		if got != want {
			t.Errorf("%s has %d series, want %d", name, got, want)
		}
	}
	// go-libp2p's own metrics come from the same endpoint.
	for _, prefix := range []string{"libp2p_rcmgr_", "libp2p_swarm_", "libp2p_identify_", "go_", "process_"} {
		if !slices.ContainsFunc(keys(mfs), func(n string) bool { return strings.HasPrefix(n, prefix) }) {
			t.Errorf("/metrics has no %s* metric", prefix)
		}
	}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func checkAPI(t *testing.T, sc *scenario) {
	ctx := context.Background()
	routes, err := sc.client.Routes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(routes) != 1 {
		t.Fatalf("routes: %+v, want one", routes)
	}
	r := routes[0]
	if r.Protocol != string(protoA1) || r.Backend != sc.a.ID.String() || r.Strategy != "least-streams" || r.Sticky ||
		!r.Connected || r.Ejected || r.Weight != 1 || r.ActiveStreams != 0 {
		t.Errorf("route: %+v", r)
	}
	if r.TTLSeconds <= 30 || r.TTLSeconds > 60 {
		t.Errorf("route TTL left %v s, want in (30, 60]", r.TTLSeconds)
	}
	if left := time.Until(r.Expires); left <= 30*time.Second || left > 60*time.Second {
		t.Errorf("route expires in %v", left)
	}

	backends, err := sc.client.Backends(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]admin.Backend{}
	for _, b := range backends {
		byID[b.ID] = b
	}
	if len(backends) != 2 {
		t.Fatalf("backends: %+v, want A and B", backends)
	}
	var in int64
	for _, n := range inboundSizes {
		in += int64(n)
	}
	a, b := byID[sc.a.ID.String()], byID[sc.b.ID.String()]
	if !a.Connected || !a.Healthy || a.BytesTo != in || a.BytesFrom != in || a.Streams != 0 ||
		!slices.Equal(a.Protocols, []string{string(protoA1)}) || len(a.Addrs) == 0 {
		t.Errorf("backend A: %+v", a)
	}
	if !b.Connected || !b.Healthy || b.BytesTo != int64(outboundSize) || b.BytesFrom != int64(outboundSize) ||
		len(b.Protocols) != 0 || b.Outbound != 0 {
		t.Errorf("backend B: %+v", b)
	}

	st, err := sc.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.PeerID != sc.Host.ID().String() || len(st.Addrs) == 0 || !st.Ready || st.Routes != 1 || st.Protocols != 1 ||
		st.Backends != 2 || st.BackendsConnected != 2 || st.BackendsEjected != 0 || st.ActiveStreams != 0 ||
		st.BytesTo != in+int64(outboundSize) || st.BytesFrom != in+int64(outboundSize) {
		t.Errorf("status: %+v", st)
	}
	for _, a := range st.Addrs {
		if !strings.HasSuffix(a, "/p2p/"+st.PeerID) {
			t.Errorf("address %s does not end in /p2p/<peer ID>", a)
		}
	}

	events, err := sc.client.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []admin.Event{
		{Kind: admin.KindStreamRefused, Direction: "inbound", Protocol: string(protoA1), Peer: sc.remote.String(),
			Reason: "refused by backends", Detail: "backends tried: 1"},
		{Kind: admin.KindRegistrationRefused, Peer: sc.stranger.ID.String(), Reason: "PERMISSION_DENIED"},
	}
	if len(events) != len(want) {
		t.Fatalf("events: %+v, want %+v", events, want)
	}
	for i := range want {
		got := events[i]
		if time.Since(got.Time) > time.Minute {
			t.Errorf("event %d time %v", i, got.Time)
		}
		got.Time = time.Time{}
		if got != want[i] {
			t.Errorf("event %d: %+v, want %+v", i, got, want[i])
		}
	}
}

func checkPrint(t *testing.T, sc *scenario) {
	var buf bytes.Buffer
	if err := admin.PrintStatus(context.Background(), &buf, sc.client); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	t.Logf("balancer status:\n%s", out)
	for _, want := range []string{
		"Balancer   " + sc.Host.ID().String(),
		"Ready      yes",
		"Routes     1 route on 1 protocol",
		"Backends   2 of 2 connected, 0 ejected",
		"PROTOCOL",
		string(protoA1) + "  least-streams  " + sc.a.ID.String() + "  serving",
		sc.b.ID.String() + "  yes",
		"5.9 KiB", // A: 6000 bytes each way
		"refused by backends: backends tried: 1",
		sc.remote.String(),
		"PERMISSION_DENIED",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
}

func checkProbes(t *testing.T, sc *scenario) {
	get := func(path string) (int, string) {
		resp, err := http.Get(sc.srv.URL() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := get("/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := get("/readyz"); code != 200 || body != "ready\n" {
		t.Errorf("/readyz: %d %q", code, body)
	}
	// A balancer that starts shutting down turns unready at once, and
	// stays alive.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := sc.LB.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "not serving") {
		t.Errorf("/readyz after Shutdown: %d %q", code, body)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz after Shutdown: %d", code)
	}
	st, err := sc.client.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Ready || st.NotReady == "" {
		t.Errorf("status after Shutdown: ready %v (%q)", st.Ready, st.NotReady)
	}
}
