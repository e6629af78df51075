package daemon_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/libp2p-balancer/libp2p-balancer/internal/daemon"
	"github.com/libp2p-balancer/libp2p-balancer/internal/node"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// TestOutboundDialPolicy (issue 11, item 2): `balancer serve`'s host
// carries the dial gater, so under the default configuration a backend can
// make it dial a loopback peer neither by naming the address nor through
// the address the balancer learned from identify; outbound.dial_loopback
// lets it.
func TestOutboundDialPolicy(t *testing.T) {
	for _, loopback := range []bool{false, true} {
		aKey, _, _ := crypto.GenerateEd25519Key(nil)
		aID, _ := peer.IDFromPrivateKey(aKey)
		cfg := daemon.DefaultConfig()
		cfg.Admin = "off"
		cfg.Identity = filepath.Join(t.TempDir(), "lb.key")
		cfg.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
		cfg.Allow = []daemon.Allow{{Peer: aID.String()}}
		cfg.Outbound.Loopback = loopback
		d, err := daemon.Start(cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		// E connected, so the balancer learned its loopback address from
		// identify; then it left.
		a, e := backendAndGoneTarget(t, d, aKey)

		for _, hints := range [][][]byte{nil, {e.Addrs()[0].Bytes()}} {
			s, err := a.NewStream(context.Background(), d.ID(), wire.ForwardID)
			if err != nil {
				t.Fatal(err)
			}
			_ = s.SetDeadline(time.Now().Add(20 * time.Second))
			_ = wire.WriteMsg(s, &pb.Forward{Peer: []byte(e.ID()), Protocols: []string{"/e"}, Addrs: hints})
			var resp pb.ForwardResponse
			if err := wire.NewReader(s).ReadMsg(&resp); err != nil {
				t.Fatal(err)
			}
			s.Reset()
			switch {
			case loopback && resp.Status != pb.Status_OK:
				t.Fatalf("dial_loopback on, %d hints: %v %q, want OK", len(hints), resp.Status, resp.Text)
			case !loopback && (resp.Status != pb.Status_DIAL_FAILED || !strings.Contains(resp.Text, "loopback")):
				t.Fatalf("default, %d hints: %v %q, want DIAL_FAILED naming the loopback policy", len(hints), resp.Status, resp.Text)
			}
			if loopback {
				_ = d.Host().Network().ClosePeer(e.ID())
			}
		}
	}
}

// backendAndGoneTarget connects a backend host with key aKey and a target
// E to the daemon's balancer. E serves "/e" and stays until the balancer
// has its identify (so its peerstore holds E's loopback address), then
// disconnects: an outbound request to E makes the balancer dial it.
func backendAndGoneTarget(t *testing.T, d *daemon.Daemon, aKey crypto.PrivKey) (a, e host.Host) {
	t.Helper()
	newHost := func(key crypto.PrivKey) host.Host {
		if key == nil {
			key, _, _ = crypto.GenerateEd25519Key(nil)
		}
		h, err := node.New(node.Config{Key: key, Listen: []ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/tcp/0")}, LinkPeers: []peer.ID{d.ID()}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		if err := h.Connect(context.Background(), peer.AddrInfo{ID: d.ID(), Addrs: d.Host().Addrs()}); err != nil {
			t.Fatal(err)
		}
		return h
	}
	a, e = newHost(aKey), newHost(nil)
	e.SetStreamHandler("/e", func(s network.Stream) { s.Close() })
	testnet.Eventually(t, 10*time.Second, func() bool {
		p, _ := d.Host().Peerstore().GetProtocols(e.ID())
		return len(p) > 0
	}, "identify of E")
	_ = e.Network().ClosePeer(d.ID())
	testnet.Eventually(t, 10*time.Second, func() bool { return d.Host().Network().Connectedness(e.ID()) != network.Connected }, "E gone")
	return a, e
}
