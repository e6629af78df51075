package node_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ws "github.com/libp2p/go-libp2p/p2p/transport/websocket"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/libp2p-balancer/libp2p-balancer/internal/certfile"
	"github.com/libp2p-balancer/libp2p-balancer/internal/node"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
)

// openConns opens up to n inbound connections from ip in the resource
// manager's accounting (no traffic: the resource manager only counts) and
// returns how many it accepted before the first refusal, and that error.
// With release, each is closed before the next opens, which leaves only
// the rate limit in play.
func openConns(t *testing.T, rm network.ResourceManager, ip string, n int, release bool) (int, error) {
	t.Helper()
	from := ma.StringCast("/ip4/" + ip + "/tcp/4001")
	for i := range n {
		s, err := rm.OpenConnection(network.DirInbound, true, from)
		if err != nil {
			return i, err
		}
		if release {
			s.Done()
		} else {
			t.Cleanup(s.Done)
		}
	}
	return n, nil
}

// TestConnsPerIP: go-libp2p's default lets one IP hold 8 connections and
// open 16 in a burst, which is what a reverse proxy in front of the
// balancer runs into with every browser behind it; ConnsPerIP moves both,
// and ProxyNetworks lifts them for the proxy's address only.
func TestConnsPerIP(t *testing.T) {
	const proxy, other = "203.0.113.7", "198.51.100.9"
	const exempt = 60
	for _, tc := range []struct {
		name        string
		cfg         node.Config
		ip          string
		open, burst int // how many at once, how many in a burst
	}{
		{"default", node.Config{}, other, 8, 16},
		{"raised", node.Config{ConnsPerIP: 50}, other, 50, 100},
		// Exempt: as many as the resource manager's other limits allow (it
		// holds about 80 connections not yet tied to a peer).
		{"proxy", node.Config{ProxyNetworks: []netip.Prefix{netip.MustParsePrefix(proxy + "/32")}}, proxy, exempt, 1000},
		{"not the proxy", node.Config{ProxyNetworks: []netip.Prefix{netip.MustParsePrefix(proxy + "/32")}}, other, 8, 16},
		{"loopback", node.Config{ProxyNetworks: []netip.Prefix{netip.MustParsePrefix(proxy + "/32")}}, "127.0.0.1", exempt, 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			limit := tc.open + 1
			if tc.open == exempt {
				limit = tc.open
			}
			rm, err := node.NewResourceManager(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer rm.Close()
			got, err := openConns(t, rm, tc.ip, limit, false)
			if got != tc.open {
				t.Errorf("%d connections open at once from %s, want %d (stopped by %v)", got, tc.ip, tc.open, err)
			}
			if err != nil && !strings.Contains(err.Error(), "per ip") {
				t.Errorf("refused for %v, want the per-IP limit", err)
			}

			rm2, err := node.NewResourceManager(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer rm2.Close()
			limit = tc.burst + 1
			if tc.burst >= 1000 {
				limit = tc.burst
			}
			got, err = openConns(t, rm2, tc.ip, limit, true)
			if got != tc.burst {
				t.Errorf("%d new connections in a burst from %s, want %d (stopped by %v)", got, tc.ip, tc.burst, err)
			}
		})
	}
	if _, err := node.NewResourceManager(node.Config{ConnsPerIP: -1}); err == nil {
		t.Error("a negative ConnsPerIP was accepted")
	}
}

func TestIsSecureWebSocket(t *testing.T) {
	for s, want := range map[string]bool{
		"/ip4/127.0.0.1/tcp/443/tls/ws":                   true,
		"/ip4/127.0.0.1/tcp/443/tls/sni/example.com/ws":   true,
		"/ip4/127.0.0.1/tcp/443/wss":                      true,
		"/ip4/127.0.0.1/tcp/80/ws":                        false,
		"/ip4/127.0.0.1/tcp/4242":                         false,
		"/ip4/127.0.0.1/udp/4242/quic-v1/webtransport":    false,
		"/dns4/example.com/tcp/443/tls/ws/p2p/12D3KooWAb": true,
	} {
		a, err := ma.NewMultiaddr(strings.TrimSuffix(s, "/p2p/12D3KooWAb"))
		if err != nil {
			t.Fatal(err)
		}
		if got := node.IsSecureWebSocket(a); got != want {
			t.Errorf("IsSecureWebSocket(%s) = %v, want %v", s, got, want)
		}
	}
}

// TestSecureWebSocket: a /tls/ws listener needs a certificate, and with
// one a go-libp2p peer that trusts it connects over it.
func TestSecureWebSocket(t *testing.T) {
	key, _ := testnet.Key(t)
	wss := ma.StringCast("/ip4/127.0.0.1/tcp/0/tls/ws")
	if _, err := node.New(node.Config{Key: key, Listen: []ma.Multiaddr{wss}}); err == nil ||
		!strings.Contains(err.Error(), "/tls/ws") || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("a /tls/ws listener without a certificate: %v", err)
	}

	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	if err := certfile.WriteSelfSigned(certPath, keyPath, time.Now().Add(time.Hour), "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	pair, err := certfile.Load(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	h, err := node.New(node.Config{Key: key, Listen: []ma.Multiaddr{wss}, TLS: pair.TLSConfig()})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	addrs, err := node.Addrs(h, []ma.Multiaddr{wss})
	if err != nil {
		t.Fatal(err)
	}
	ai, err := peer.AddrInfoFromP2pAddr(addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	if !node.IsSecureWebSocket(ai.Addrs[0]) {
		t.Fatalf("the host listens on %s, not a secure WebSocket", ai.Addrs[0])
	}
	roots := x509.NewCertPool()
	roots.AddCert(pair.Leaf())
	client, err := libp2p.New(libp2p.NoListenAddrs,
		libp2p.Transport(ws.New, ws.WithTLSClientConfig(&tls.Config{RootCAs: roots})))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := client.Connect(ctx, *ai); err != nil {
		t.Fatalf("connecting over %s: %v", ai.Addrs[0], err)
	}
}

// TestCertHashesFollowTheKey: the certificate hashes of WebTransport and
// WebRTC-direct addresses derive from the host's key (and, for
// WebTransport, the time), so two instances sharing a key publish the same
// addresses at the same moment, and a restart keeps them; another key
// gives other hashes.
func TestCertHashesFollowTheKey(t *testing.T) {
	listen := []ma.Multiaddr{
		ma.StringCast("/ip4/127.0.0.1/udp/0/quic-v1/webtransport"),
		ma.StringCast("/ip4/127.0.0.1/udp/0/webrtc-direct"),
	}
	hashes := func(key crypto.PrivKey) map[string][]string {
		t.Helper()
		h, err := node.New(node.Config{Key: key, Listen: listen})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		addrs, err := node.Addrs(h, listen)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string][]string{}
		for _, a := range addrs {
			tr := "webrtc-direct"
			if strings.Contains(a.String(), "/webtransport") {
				tr = "webtransport"
			}
			for _, c := range a {
				if c.Protocol().Code == ma.P_CERTHASH {
					out[tr] = append(out[tr], c.Value())
				}
			}
		}
		if len(out["webtransport"]) == 0 || len(out["webrtc-direct"]) == 0 {
			t.Fatalf("no certificate hashes in %v", addrs)
		}
		return out
	}
	key, _ := testnet.Key(t)
	other, _ := testnet.Key(t)
	a, b, c := hashes(key), hashes(key), hashes(other)
	for _, tr := range []string{"webtransport", "webrtc-direct"} {
		if !slices.Equal(a[tr], b[tr]) {
			t.Errorf("%s: two hosts with one key publish %v and %v", tr, a[tr], b[tr])
		}
		if slices.Equal(a[tr], c[tr]) {
			t.Errorf("%s: hosts with different keys publish the same hashes %v", tr, a[tr])
		}
	}
	// WebTransport publishes the current certificate and the next one.
	if n := len(a["webtransport"]); n != 2 {
		t.Errorf("webtransport publishes %d hashes %v, want 2 (current and next)", n, a["webtransport"])
	}
	t.Logf("hashes: %v", a)
}
