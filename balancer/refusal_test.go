package balancer_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/libp2p-balancer/libp2p-balancer/admin"
	"github.com/libp2p-balancer/libp2p-balancer/backend"
	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/proctest"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
	"github.com/libp2p-balancer/libp2p-balancer/metrics"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// TestRefusalLogFlood: a stranger looping on /libp2p/balancer/forward and
// on the routing-request protocol, and a remote peer held by its rate
// limit, write a few log lines per kind, not one per stream; the counts in
// those lines add up to exactly what the metrics counted (docs/security.md,
// log flooding).
func TestRefusalLogFlood(t *testing.T) {
	const forwards, registrations, inbound = 300, 100, 200
	a := lbtest.NewIdentity(t)
	logs := &proctest.SyncBuffer{}
	reg := prometheus.NewRegistry()
	tr, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	f := lbtest.New(t, testnet.TCP, []lbtest.Identity{a},
		balancer.WithLogger(slog.New(slog.NewJSONHandler(logs, nil))),
		balancer.WithTracer(tr),
		balancer.WithLimits(balancer.Limits{NewStreamsPerSecondPerPeer: 5}))
	lb := f.Host.ID()
	be, _ := f.NewBackend(a, map[protocol.ID]network.StreamHandler{"/svc": testnet.Echo})
	lbtest.WaitRegistered(t, be, "/svc")

	stranger := f.NewPeer()
	for range forwards {
		s, err := stranger.NewStream(context.Background(), lb, wire.ForwardID)
		if err != nil {
			t.Fatal(err)
		}
		_ = s.SetDeadline(time.Now().Add(10 * time.Second))
		var resp pb.ForwardResponse
		if err := wire.NewReader(s).ReadMsg(&resp); err != nil || resp.Status != pb.Status_PERMISSION_DENIED {
			t.Fatalf("stranger's forward stream: %v %v", &resp, err)
		}
		s.Close()
	}
	for range registrations {
		if resp := lbtest.RawRequest(t, stranger, lb, &pb.RoutingRequest{Protocols: []string{"/x"}}); resp.Status != pb.Status_PERMISSION_DENIED {
			t.Fatalf("stranger's registration: %v", resp)
		}
	}
	flooder := f.NewPeer()
	lbtest.WaitServed(t, flooder, lb, true, "/svc")
	limited := 0
	for range inbound {
		var se *network.StreamError
		if err := f.EchoOnce(flooder, "/svc", []byte("flood")); errors.As(err, &se) && se.ErrorCode == network.StreamRateLimited {
			limited++
		}
	}
	if limited == 0 {
		t.Fatal("the flood was never rate limited")
	}

	// While the flood lasts (well within one 10 s interval, or two if the
	// machine is slow): at most a line when it starts and one per
	// interval after, per kind.
	kinds := []struct {
		msg, reason string
		metric      string
		labels      map[string]string
		want        int
	}{
		{"outbound stream refused", "PERMISSION_DENIED", "libp2p_balancer_streams_refused_total",
			map[string]string{"direction": "outbound", "reason": "permission_denied"}, forwards},
		{"registration refused", "PERMISSION_DENIED", "libp2p_balancer_registrations_total",
			map[string]string{"status": "permission_denied"}, registrations},
		// A refused stream's reset may reach the flooder as an error
		// without its code, so it counts at least those it saw.
		{"inbound stream refused", "rate", "libp2p_balancer_streams_refused_total",
			map[string]string{"direction": "inbound", "protocol": "/svc", "reason": "rate"}, -limited},
	}
	for _, k := range kinds {
		if lines, _ := logged(t, logs.Bytes(), k.msg, k.reason); lines == 0 || lines > 3 {
			t.Errorf("%s (%s): %d log lines during the flood, want 1 to 3", k.msg, k.reason, lines)
		}
	}
	// Close writes what was still being counted; then the lines add up to
	// every refusal, as the metrics do.
	f.LB.Close()
	for _, k := range kinds {
		_, total := logged(t, logs.Bytes(), k.msg, k.reason)
		got := int(gathered(t, reg, k.metric, k.labels))
		if total != got || (k.want > 0 && got != k.want) || (k.want < 0 && got < -k.want) {
			t.Errorf("%s (%s): %d in the metrics and %d in the log, want %d (negative: at least)", k.msg, k.reason, got, total, k.want)
		}
	}
}

// TestForgedForwardFlood: a peer looping on a backend's forward protocol,
// every stream of which is reset, writes a few log lines, not one per
// stream; their counts add up to every stream (docs/security.md, log
// flooding).
func TestForgedForwardFlood(t *testing.T) {
	const forged = 200
	a := lbtest.NewIdentity(t)
	f := lbtest.New(t, testnet.TCP, []lbtest.Identity{a})
	logs := &proctest.SyncBuffer{}
	be, ah := f.NewBackend(a, map[protocol.ID]network.StreamHandler{"/p": testnet.Echo},
		backend.WithLogger(slog.New(slog.NewJSONHandler(logs, nil))))
	forger := testnet.NewHost(t, testnet.TCP, testnet.Options{})
	forger.Peerstore().AddAddrs(ah.ID(), nil, time.Hour)
	testnet.Connect(t, ah, forger)
	for range forged {
		s, err := forger.NewStream(context.Background(), ah.ID(), wire.ForwardID)
		if err != nil {
			t.Fatal(err)
		}
		_ = s.SetDeadline(time.Now().Add(10 * time.Second))
		_ = wire.WriteMsg(s, &pb.Forward{Peer: []byte(f.Host.ID()), Protocols: []string{"/p"}})
		if _, err := io.ReadAll(s); err == nil {
			t.Fatal("forged forward stream was not reset")
		}
	}
	if lines, _ := logged(t, logs.Bytes(), "forward stream reset", "not a balancer"); lines == 0 || lines > 3 {
		t.Errorf("%d log lines during the flood, want 1 to 3", lines)
	}
	be.Close()
	if _, total := logged(t, logs.Bytes(), "forward stream reset", "not a balancer"); total != forged {
		t.Errorf("the log counts %d forged streams, want %d", total, forged)
	}
}

// logged returns the log lines with message msg and reason, and the
// refusals they stand for: one for a line without a count, count for a line
// that sums up.
func logged(t *testing.T, logs []byte, msg, reason string) (lines, total int) {
	t.Helper()
	sc := bufio.NewScanner(bytes.NewReader(logs))
	for sc.Scan() {
		var rec struct {
			Msg    string `json:"msg"`
			Reason string `json:"reason"`
			Count  *int   `json:"count"`
		}
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		if rec.Msg != msg || rec.Reason != reason {
			continue
		}
		lines++
		if rec.Count != nil {
			total += *rec.Count
		} else {
			total++
		}
	}
	return lines, total
}

// gathered returns the value of the one series of family name whose labels
// include want.
func gathered(t *testing.T, g prometheus.Gatherer, name string, want map[string]string) float64 {
	t.Helper()
	var found []float64
	for _, m := range family(t, g, name) {
		if labelsInclude(m, want) {
			found = append(found, m.GetCounter().GetValue())
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s%v: %d series, want 1", name, want, len(found))
	}
	return found[0]
}

func family(t *testing.T, g prometheus.Gatherer, name string) []*dto.Metric {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()
		}
	}
	return nil
}

func labelsInclude(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, lp := range m.GetLabel() {
		if v, ok := want[lp.GetName()]; ok && v == lp.GetValue() {
			n++
		}
	}
	return n == len(want)
}

// TestOutboundLabelsBounded: a backend allowed any protocol loops over
// random protocol IDs, refused by one target and accepted by another that
// confirms anything; the metrics gain no series per protocol ID, while a
// routed protocol keeps its own label (docs/security.md, metric label
// cardinality).
func TestOutboundLabelsBounded(t *testing.T) {
	const rounds = 40
	a := lbtest.NewIdentity(t)
	reg := prometheus.NewRegistry()
	tr, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	f := lbtest.New(t, testnet.TCP, []lbtest.Identity{a}, balancer.WithTracer(tr), loopbackTargets)
	be, ah := f.NewBackend(a, map[protocol.ID]network.StreamHandler{"/routed": testnet.Echo})
	lbtest.WaitRegistered(t, be, "/routed")
	none := testnet.NewHost(t, testnet.TCP, testnet.Options{})
	anything := testnet.NewHost(t, testnet.TCP, testnet.Options{})
	anything.SetStreamHandlerMatch("/", func(protocol.ID) bool { return true }, testnet.Echo)
	ah.Peerstore().AddAddrs(none.ID(), none.Addrs(), time.Hour)
	ah.Peerstore().AddAddrs(anything.ID(), anything.Addrs(), time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	open := func(target peer.ID, p protocol.ID) error {
		s, err := be.NewStream(ctx, target, p)
		if err == nil {
			testnet.CheckRoundTrip(t, s, []byte("x"))
		}
		return err
	}
	notSupported := &wire.StatusError{Status: pb.Status_PROTOCOL_NOT_SUPPORTED}
	for range rounds {
		b := make([]byte, 8)
		_, _ = rand.Read(b)
		p := protocol.ID(fmt.Sprintf("/random/%x", b))
		if err := open(none.ID(), p); !errors.Is(err, notSupported) {
			t.Fatalf("outbound on %s to a target that serves nothing: %v", p, err)
		}
		if err := open(anything.ID(), p); err != nil {
			t.Fatalf("outbound on %s to a target that accepts anything: %v", p, err)
		}
	}
	if err := open(none.ID(), "/routed"); !errors.Is(err, notSupported) {
		t.Fatalf("outbound on /routed: %v", err)
	}
	testnet.Eventually(t, 10*time.Second, func() bool { return f.LB.ActiveStreams() == 0 }, "every stream ended")

	protos := map[string]float64{}
	for _, name := range []string{"libp2p_balancer_streams_refused_total", "libp2p_balancer_streams_total"} {
		for _, m := range family(t, reg, name) {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "protocol" {
					protos[lp.GetValue()] += m.GetCounter().GetValue()
				}
			}
		}
	}
	want := map[string]float64{"other": 2 * rounds, "/routed": 1}
	if len(protos) != len(want) || protos["other"] != want["other"] || protos["/routed"] != want["/routed"] {
		t.Fatalf("protocol labels and their counts: %v, want %v", protos, want)
	}
}

// TestRefusalEvents: the events list names who was refused and on what, as
// the log does: an outbound PERMISSION_DENIED shows the protocol asked for,
// the backend and the target; a stranger's shows the stranger.
func TestRefusalEvents(t *testing.T) {
	b := lbtest.NewIdentity(t)
	events := admin.NewEvents(0)
	f := lbtest.New(t, testnet.TCP, nil, balancer.WithAllow(b.ID, "/ok"), balancer.WithTracer(events))
	e := testnet.NewHost(t, testnet.TCP, testnet.Options{})
	be, bh := f.NewBackend(b, nil)
	bh.Peerstore().AddAddrs(e.ID(), e.Addrs(), time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	denied := &wire.StatusError{Status: pb.Status_PERMISSION_DENIED}
	if _, err := be.NewStream(ctx, e.ID(), "/nope"); !errors.Is(err, denied) {
		t.Fatalf("outbound on a protocol not allowed: %v", err)
	}
	stranger := f.NewPeer()
	s, err := stranger.NewStream(ctx, f.Host.ID(), wire.ForwardID)
	if err != nil {
		t.Fatal(err)
	}
	var resp pb.ForwardResponse
	if err := wire.NewReader(s).ReadMsg(&resp); err != nil || resp.Status != pb.Status_PERMISSION_DENIED {
		t.Fatalf("stranger's forward stream: %v %v", &resp, err)
	}

	got := events.Recent()
	if len(got) != 2 {
		t.Fatalf("events: %+v, want 2", got)
	}
	st, bk := got[0], got[1]
	if bk.Kind != admin.KindStreamRefused || bk.Direction != "outbound" || bk.Protocol != "/nope" || bk.Peer != b.ID.String() ||
		bk.Target != e.ID().String() || bk.Reason != "PERMISSION_DENIED" || !strings.Contains(bk.Detail, "/nope") {
		t.Errorf("the backend's refusal: %+v", bk)
	}
	if st.Kind != admin.KindStreamRefused || st.Direction != "outbound" || st.Protocol != "" || st.Peer != stranger.ID().String() ||
		st.Target != "" || st.Reason != "PERMISSION_DENIED" {
		t.Errorf("the stranger's refusal: %+v", st)
	}
}
