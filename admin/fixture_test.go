package admin_test

import (
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/prometheus/client_golang/prometheus"

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

const (
	protoA1 protocol.ID = "/test/a1/1.0.0"
	protoB1 protocol.ID = "/test/b1/1.0.0"
)

// fixture is a balancer wired as a daemon wires it: a Prometheus registry
// fed by the metrics Tracer and by go-libp2p, the Events recorder, and an
// admin Server on a loopback port.
type fixture struct {
	*lbtest.Fixture
	t      *testing.T
	reg    *prometheus.Registry
	events *admin.Events
	srv    *admin.Server
	client *admin.Client
	logs   *proctest.SyncBuffer // what the admin Handler logged
}

// newFixture starts a balancer that allows the given backends any protocol,
// and its admin listener with token (empty for none).
func newFixture(t *testing.T, allowed []lbtest.Identity, token string) *fixture {
	t.Helper()
	reg := metrics.NewRegistry()
	mt, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	events := admin.NewEvents(0)
	h := lbtest.Host(t, testnet.TCP, allowed, metrics.Libp2pOptions(reg)...)
	lbf := lbtest.On(t, testnet.TCP, h, allowed,
		balancer.WithTracer(metrics.Tee(mt, events)),
		balancer.WithLogger(slog.New(slog.DiscardHandler)),
		// Outbound targets listen on loopback, which the default dial
		// policy refuses.
		balancer.WithDialPolicy(balancer.DialPolicy{Loopback: true}))
	lbf.BackendOptions = []backend.Option{backend.WithLogger(slog.New(slog.DiscardHandler))}
	logs := &proctest.SyncBuffer{}
	srv := &admin.Server{
		Addr: "127.0.0.1:0",
		Handler: &admin.Handler{
			Balancer: lbf.LB,
			Host:     h,
			Gatherer: reg,
			Events:   events,
			Token:    token,
			Log:      slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		},
		Log: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return &fixture{Fixture: lbf, t: t, reg: reg, events: events, srv: srv,
		client: &admin.Client{Addr: srv.ListenAddr().String(), Token: token}, logs: logs}
}

// scriptedBackend is a backend peer driven by hand at the wire level, so
// that a test knows exactly how many registrations it sends: it accepts
// each forwarded stream and echoes it, except those refuse says to refuse,
// which it answers REJECTED.
type scriptedBackend struct {
	host     host.Host
	forwards atomic.Int32
}

func (f *fixture) newScriptedBackend(who lbtest.Identity, refuse func(n int32) bool) *scriptedBackend {
	f.t.Helper()
	h := testnet.NewHost(f.t, testnet.TCP, testnet.Options{Key: who.Key, LinkPeers: []peer.ID{f.Host.ID()}, NoListen: true})
	sb := &scriptedBackend{host: h}
	h.SetStreamHandler(wire.ForwardID, func(s network.Stream) {
		n := sb.forwards.Add(1)
		_ = s.SetDeadline(time.Now().Add(10 * time.Second))
		var fwd pb.Forward
		if err := wire.NewReader(s).ReadMsg(&fwd); err != nil {
			s.Reset()
			return
		}
		if refuse(n) {
			wire.WriteFinal(s, &pb.ForwardResponse{Status: pb.Status_REJECTED, Text: "scripted refusal"})
			return
		}
		if err := wire.WriteMsg(s, &pb.ForwardResponse{Status: pb.Status_OK, Protocol: fwd.Protocols[0]}); err != nil {
			s.Reset()
			return
		}
		_ = s.SetDeadline(time.Time{})
		testnet.Echo(s)
	})
	testnet.Connect(f.t, h, f.Host)
	return sb
}

// register sends one routing request from h and returns the status.
func register(t *testing.T, h host.Host, lb peer.ID, protos ...protocol.ID) pb.Status {
	t.Helper()
	req := &pb.RoutingRequest{TtlSeconds: 60}
	for _, p := range protos {
		req.Protocols = append(req.Protocols, string(p))
	}
	return lbtest.RawRequest(t, h, lb, req).GetStatus()
}
