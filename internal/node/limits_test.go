package node_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	"github.com/libp2p/go-libp2p/p2p/net/connmgr"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/libp2p-balancer/libp2p-balancer/internal/node"
	"github.com/libp2p-balancer/libp2p-balancer/internal/proctest"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
)

// scaled builds the default limits for a machine with mem bytes of memory
// and fds file descriptors, as AutoScale would there.
func scaled(mem int64, fds int, link ...peer.ID) rcmgr.ConcreteLimitConfig {
	l := wire.Limits(link...)
	return l.Scale(mem/8, fds/2)
}

// TestDefaultCapacity: with nothing configured, a balancer on a 24 GiB
// machine (this project's reference machine; ulimit -n 20000) takes at
// least 1,000 remote peers and 20,000 forwarded streams over TCP and over
// QUIC, holds one remote peer to wire.PeerStreams, and a backend host
// carries its side of 20,000 streams from its balancer. The figures for a
// small machine are those docs/spec.md gives.
func TestDefaultCapacity(t *testing.T) {
	c := node.CapacityOf(scaled(24<<30, 20000))
	t.Logf("24 GiB: %+v", c)
	if c.Peers < 1000 || c.Streams < 20000 || c.StreamsQUIC < 20000 {
		t.Errorf("24 GiB: capacity %+v, want at least 1000 peers and 20000 streams", c)
	}
	if c.PeerStreams != wire.PeerStreams {
		t.Errorf("per-peer streams %d, want %d", c.PeerStreams, wire.PeerStreams)
	}
	small := node.CapacityOf(scaled(0, 0))
	t.Logf("minimal: %+v", small)
	if small.Peers != 256 || small.StreamsQUIC != 4096 || small.Streams != 256 {
		// FD base 256 bounds peers when the FD limit is unknown.
		t.Errorf("minimal capacity %+v, want 256 peers, 4096 QUIC and 256 TCP streams", small)
	}

	// The backend's side: 20,000 inbound forward streams from one
	// balancer, each with its yamux window.
	lb := newID(t)
	p := scaled(24<<30, 20000, lb).ToPartialLimitConfig()
	sys := p.System
	if in, mem := sys.StreamsInbound.Build(0), sys.Memory.Build(0); in < 20000 || mem < 20000*256<<10 {
		t.Errorf("backend host: system streams in %d, memory %d: too small for 20,000 streams", in, mem)
	}
	if l := p.Peer[lb]; l.StreamsInbound.Build(0) < 20000 || l.Conns.Build(0) < 80 {
		t.Errorf("link peer limits %+v: too small for 20,000 streams or 80 QUIC lanes", l)
	}
	if l := p.PeerDefault; l.StreamsInbound.Build(0) != wire.PeerStreams || l.Conns.Build(0) != wire.PeerConns {
		t.Errorf("remote peer limits %+v, want %d streams and %d conns", l, wire.PeerStreams, wire.PeerConns)
	}
}

func newID(t *testing.T) peer.ID {
	_, id := testnet.Key(t)
	return id
}

// TestResourceManagerYAML: the resource_manager section takes go-libp2p's
// vocabulary in snake_case and applies it over the defaults; bad values
// are one-line errors naming the key.
func TestResourceManagerYAML(t *testing.T) {
	id := newID(t)
	var l node.Limits
	doc := `
resource_manager:
  system: {conns_inbound: 5000, memory: 2GiB, streams: unlimited}
  peer_default: {streams_inbound: 64}
  protocol: {/chat/1.0.0: {streams_inbound: 100}}
  peer: {` + id.String() + `: {streams: 0}}
connection_manager: {low_water: 100, high_water: 200, grace_period: 30s}
backend_networks: [10.0.0.0/8, 192.168.1.7]
`
	if err := yaml.Unmarshal([]byte(doc), &l); err != nil {
		t.Fatal(err)
	}
	if err := l.Check(); err != nil {
		t.Fatal(err)
	}
	p := l.Concrete().ToPartialLimitConfig()
	if got := p.System.ConnsInbound.Build(0); got != 5000 {
		t.Errorf("system conns_inbound %d, want 5000", got)
	}
	if got := p.System.Memory.Build(0); got != 2<<30 {
		t.Errorf("system memory %d, want 2 GiB", got)
	}
	if got := p.System.Streams; got != rcmgr.Unlimited {
		t.Errorf("system streams %v, want unlimited", got)
	}
	def := scaled(0, 0).ToPartialLimitConfig() // any machine: the key left out keeps the default
	if p.System.StreamsInbound.Build(0) < def.System.StreamsInbound.Build(0) {
		t.Errorf("system streams_inbound %v lost its default", p.System.StreamsInbound)
	}
	if got := p.PeerDefault.StreamsInbound.Build(0); got != 64 {
		t.Errorf("peer_default streams_inbound %d, want 64", got)
	}
	if got := p.Protocol["/chat/1.0.0"].StreamsInbound.Build(0); got != 100 {
		t.Errorf("protocol streams_inbound %d, want 100", got)
	}
	if got := p.Peer[id].Streams; got != rcmgr.BlockAllLimit {
		t.Errorf("peer streams %v, want block all", got)
	}
	if l.ConnManager != (node.ConnManager{LowWater: 100, HighWater: 200, GracePeriod: 30 * time.Second}) {
		t.Errorf("connection_manager %+v", l.ConnManager)
	}

	for doc, want := range map[string]string{
		"resource_manager: {system: {streams_inbound: -1}}":         "resource_manager.system.streams_inbound \"-1\"",
		"resource_manager: {system: {streams_inbound: lots}}":       "want a positive number",
		"resource_manager: {sytem: {streams: 1}}":                   "resource_manager.sytem: unknown scope",
		"resource_manager: {system: {stream: 1}}":                   "resource_manager.system.stream: unknown limit",
		"resource_manager: {system: {memory: 2TB}}":                 "resource_manager.system.memory \"2TB\"",
		"resource_manager: {peer: {notapeer: {streams: 1}}}":        `"notapeer" is not a peer ID`,
		"resource_manager: {system: 5}":                             "want a mapping of limits",
		"connection_manager: {low_water: 300, high_water: 200}":     "low_water 300 is above high_water 200",
		"connection_manager: {grace_period: -1s}":                   "grace_period -1s",
		"backend_networks: [10.0.0.0/33]":                           `backend_networks "10.0.0.0/33"`,
		"resource_manager: {protocol: {/p: {streams_inbound: []}}}": "resource_manager.protocol./p.streams_inbound",
	} {
		var l node.Limits
		err := yaml.Unmarshal([]byte(doc), &l)
		if err == nil {
			err = l.Check()
		}
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error %v, want one line containing %q", doc, err, want)
		}
	}
}

// TestPeerLimit: on a host with the default limits, one remote peer past
// wire.PeerStreams streams is refused with code 0x1002 (resource limit
// exceeded), counted and logged once, while another peer is still served.
func TestPeerLimit(t *testing.T) {
	for _, tr := range testnet.Transports {
		t.Run(string(tr), func(t *testing.T) { testPeerLimit(t, tr) })
	}
}

func testPeerLimit(t *testing.T, tr testnet.Transport) {
	key, _ := testnet.Key(t)
	var logs proctest.SyncBuffer
	reg := prometheus.NewRegistry()
	listen := ma.StringCast("/ip4/127.0.0.1/tcp/0")
	if tr == testnet.QUIC {
		listen = ma.StringCast("/ip4/127.0.0.1/udp/0/quic-v1")
	}
	h, err := node.New(node.Config{Key: key, Listen: []ma.Multiaddr{listen},
		Log: slog.New(slog.NewTextHandler(&logs, nil)), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	const proto = protocol.ID("/hold/1.0.0")
	var mu sync.Mutex
	held := 0
	release := make(chan struct{})
	h.SetStreamHandler(proto, func(s network.Stream) {
		defer s.Close()
		mu.Lock()
		held++
		mu.Unlock()
		s.Write([]byte{1})
		<-release
	})
	t.Cleanup(func() { close(release) })

	// QUIC caps a connection at 256 streams each way; TCP shows the
	// per-peer limit with a single connection.
	n := wire.PeerStreams
	if tr == testnet.QUIC {
		n = 256
	}
	greedy := testnet.NewHost(t, tr, testnet.Options{NoListen: true, Unlimited: true})
	testnet.Connect(t, greedy, h)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	open := func(c interface {
		NewStream(context.Context, peer.ID, ...protocol.ID) (network.Stream, error)
	}) error {
		s, err := c.NewStream(ctx, h.ID(), proto)
		if err != nil {
			return err
		}
		_, err = io.ReadFull(s, make([]byte, 1))
		return err
	}
	for i := 0; i < n; i++ {
		if err := open(greedy); err != nil {
			t.Fatalf("stream %d: %v", i+1, err)
		}
	}
	if tr == testnet.TCP {
		err := open(greedy)
		var se *network.StreamError
		if !errors.As(err, &se) || se.ErrorCode != network.StreamResourceLimitExceeded {
			t.Fatalf("stream %d of one peer: %v, want a reset with code 0x1002", n+1, err)
		}
		for i := 0; i < 5; i++ {
			open(greedy)
		}
		refused := refusedCount(t, reg, "stream", "peer")
		if refused < 6 {
			t.Errorf("refusals counted: %v, want 6", refused)
		}
		if got := strings.Count(logs.String(), "resource limit refused"); got != 1 {
			t.Errorf("%d log lines for 6 refusals, want 1:\n%s", got, logs.String())
		}
	}
	other := testnet.NewHost(t, tr, testnet.Options{NoListen: true})
	testnet.Connect(t, other, h)
	if err := open(other); err != nil {
		t.Fatalf("another peer: %v", err)
	}
}

// refusedCount reads libp2p_balancer_resource_refusals_total{resource, limit}.
func refusedCount(t *testing.T, g prometheus.Gatherer, resource, limit string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "libp2p_balancer_resource_refusals_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			if labels["resource"] == resource && labels["limit"] == limit {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestConnManagerWatermarks: by default the connection manager trims
// nothing the limits let in (a trim would reset the forwarded streams on the
// connection); connection_manager sets it.
func TestConnManagerWatermarks(t *testing.T) {
	for _, tc := range []struct {
		cm              node.ConnManager
		low, high       int
		grace           time.Duration
		defaultWaterMks bool
	}{
		{cm: node.ConnManager{}, defaultWaterMks: true, grace: time.Minute},
		{cm: node.ConnManager{LowWater: 10, HighWater: 20, GracePeriod: time.Second}, low: 10, high: 20, grace: time.Second},
	} {
		key, _ := testnet.Key(t)
		lim := node.Limits{ConnManager: tc.cm}
		h, err := node.New(node.Config{Key: key, Limits: lim})
		if err != nil {
			t.Fatal(err)
		}
		info := h.ConnManager().(*connmgr.BasicConnMgr).GetInfo()
		h.Close()
		if tc.defaultWaterMks {
			sys := lim.Concrete().ToPartialLimitConfig().System
			tc.low, tc.high = sys.ConnsInbound.Build(0), sys.Conns.Build(0)
			if tc.low < node.CapacityOf(lim.Concrete()).Peers {
				t.Errorf("low water %d below the peer capacity", tc.low)
			}
		}
		if info.LowWater != tc.low || info.HighWater != tc.high || info.GracePeriod != tc.grace {
			t.Errorf("%+v: connection manager %d/%d/%v, want %d/%d/%v", tc.cm,
				info.LowWater, info.HighWater, info.GracePeriod, tc.low, tc.high, tc.grace)
		}
	}
}
