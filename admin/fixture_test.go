package admin_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
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
	"github.com/libp2p-balancer/libp2p-balancer/metrics"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

const (
	protoA1 protocol.ID = "/test/a1/1.0.0"
	protoB1 protocol.ID = "/test/b1/1.0.0"
)

type identity struct {
	key crypto.PrivKey
	id  peer.ID
}

func newIdentity(t *testing.T) identity {
	k, id := testnet.Key(t)
	return identity{k, id}
}

// fixture is a balancer wired as a daemon wires it: a Prometheus registry
// fed by the metrics Tracer and by go-libp2p, the Events recorder, and an
// admin Server on a loopback port.
type fixture struct {
	t      *testing.T
	host   host.Host
	lb     *balancer.Balancer
	reg    *prometheus.Registry
	events *admin.Events
	srv    *admin.Server
	client *admin.Client
	logs   *proctest.SyncBuffer // what the admin Handler logged
}

// newFixture starts a balancer that allows the given backends any protocol,
// and its admin listener with token (empty for none).
func newFixture(t *testing.T, allowed []identity, token string) *fixture {
	t.Helper()
	reg := metrics.NewRegistry()
	mt, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	events := admin.NewEvents(0)
	var ids []peer.ID
	opts := []balancer.Option{
		balancer.WithTracer(metrics.Tee(mt, events)),
		balancer.WithLogger(slog.New(slog.DiscardHandler)),
		// Outbound targets listen on loopback, which the default dial
		// policy refuses.
		balancer.WithDialPolicy(balancer.DialPolicy{Loopback: true}),
	}
	for _, a := range allowed {
		ids = append(ids, a.id)
		opts = append(opts, balancer.WithAllow(a.id))
	}
	h := testnet.NewHost(t, testnet.TCP, testnet.Options{
		LinkPeers: ids,
		Extra:     append(metrics.Libp2pOptions(reg), libp2p.Ping(false)),
	})
	lb, err := balancer.New(h, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lb.Close() })
	logs := &proctest.SyncBuffer{}
	srv := &admin.Server{
		Addr: "127.0.0.1:0",
		Handler: &admin.Handler{
			Balancer: lb,
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
	return &fixture{t: t, host: h, lb: lb, reg: reg, events: events, srv: srv,
		client: &admin.Client{Addr: srv.ListenAddr().String(), Token: token}, logs: logs}
}

// newBackend starts a backend of the backend package with identity who,
// serving handlers.
func (f *fixture) newBackend(who identity, handlers map[protocol.ID]network.StreamHandler) (*backend.Backend, host.Host) {
	f.t.Helper()
	h := testnet.NewHost(f.t, testnet.TCP, testnet.Options{Key: who.key, LinkPeers: []peer.ID{f.host.ID()}, NoListen: true})
	be, err := backend.New(h, []peer.AddrInfo{testnet.Info(f.host)}, backend.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { be.Close() })
	for p, hd := range handlers {
		be.SetStreamHandler(p, hd)
	}
	return be, h
}

// newPeer starts a plain host of the outside world, connected to the
// balancer.
func (f *fixture) newPeer() host.Host {
	f.t.Helper()
	h := testnet.NewHost(f.t, testnet.TCP, testnet.Options{})
	testnet.Connect(f.t, h, f.host)
	return h
}

// scriptedBackend is a backend peer driven by hand at the wire level, so
// that a test knows exactly how many registrations it sends: it accepts
// each forwarded stream and echoes it, except those refuse says to refuse,
// which it answers REJECTED.
type scriptedBackend struct {
	host     host.Host
	forwards atomic.Int32
}

func (f *fixture) newScriptedBackend(who identity, refuse func(n int32) bool) *scriptedBackend {
	f.t.Helper()
	h := testnet.NewHost(f.t, testnet.TCP, testnet.Options{Key: who.key, LinkPeers: []peer.ID{f.host.ID()}, NoListen: true})
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
		echo(s)
	})
	testnet.Connect(f.t, h, f.host)
	return sb
}

// register sends one routing request from h and returns the status.
func register(t *testing.T, h host.Host, lb peer.ID, protos ...protocol.ID) pb.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := h.NewStream(ctx, lb, wire.RoutingRequestID)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	req := &pb.RoutingRequest{TtlSeconds: 60}
	for _, p := range protos {
		req.Protocols = append(req.Protocols, string(p))
	}
	if err := wire.WriteMsg(s, req); err != nil {
		t.Fatal(err)
	}
	var resp pb.RoutingResponse
	if err := wire.NewReader(s).ReadMsg(&resp); err != nil {
		t.Fatalf("reading routing response: %v", err)
	}
	return resp.GetStatus()
}

// echo answers a stream with everything it read, after the writer's
// half-close, then closes.
func echo(s network.Stream) {
	defer s.Close()
	data, err := io.ReadAll(s)
	if err != nil {
		s.Reset()
		return
	}
	if _, err := s.Write(data); err != nil {
		s.Reset()
	}
}

// roundTrip writes payload on s, half-closes, and returns the error of
// reading the echo back, which it checks.
func roundTrip(s network.Stream, payload []byte) error {
	_ = s.SetDeadline(time.Now().Add(30 * time.Second))
	errc := make(chan error, 1)
	go func() {
		_, err := s.Write(payload)
		if err == nil {
			err = s.CloseWrite()
		}
		errc <- err
	}()
	got, err := io.ReadAll(s)
	werr := <-errc
	if err != nil {
		s.Reset()
		return err
	}
	if werr != nil {
		s.Reset()
		return werr
	}
	if !bytes.Equal(got, payload) {
		s.Reset()
		return io.ErrUnexpectedEOF
	}
	return s.Close()
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}
