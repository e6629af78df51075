package balancer_test

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/proctest"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// TestLogWording: a release logs what was released and no TTL, and a
// backend without routes that reconnects is not said to resume routes
// (issue 14 read `released=[...] ttl=1m0s` and `routes resumed ...
// routes=0`).
func TestLogWording(t *testing.T) {
	var logs proctest.SyncBuffer
	a := lbtest.NewIdentity(t)
	f := lbtest.New(t, testnet.TCP, []lbtest.Identity{a}, balancer.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	ah := testnet.NewHost(t, testnet.TCP, testnet.Options{Key: a.Key, LinkPeers: []peer.ID{f.Host.ID()}})
	testnet.Connect(t, ah, f.Host)
	lbID := f.Host.ID()
	line := func(msg string) string {
		t.Helper()
		var found string
		testnet.Eventually(t, 10*time.Second, func() bool {
			for _, l := range strings.Split(logs.String(), "\n") {
				if strings.Contains(l, msg) {
					found = l
					return true
				}
			}
			return false
		}, "a log line %q", msg)
		return found
	}

	if resp := lbtest.RawRequest(t, ah, lbID, &pb.RoutingRequest{Protocols: []string{"/x/a", "/x/b"}}); resp.Status != pb.Status_OK {
		t.Fatalf("register: %v", resp)
	}
	if l := line(`added="[/x/a /x/b]"`); !strings.Contains(l, "ttl=1m0s") || strings.Contains(l, "released=") {
		t.Errorf("registration logged as %s; want the added protocols and their TTL only", l)
	}
	if resp := lbtest.RawRequest(t, ah, lbID, &pb.RoutingRequest{Release: []string{"/x/a", "/x/b"}}); resp.Status != pb.Status_OK {
		t.Fatalf("release: %v", resp)
	}
	if l := line(`released="[/x/a /x/b]"`); strings.Contains(l, "ttl=") || strings.Contains(l, "added=") || !strings.Contains(l, "routes=0") {
		t.Errorf("release logged as %s; want the released protocols and routes=0, no TTL", l)
	}

	if err := ah.Network().ClosePeer(lbID); err != nil {
		t.Fatal(err)
	}
	line("backend disconnected; it had no routes")
	testnet.Connect(t, ah, f.Host)
	line("backend reconnected; it has no routes")
	if strings.Contains(logs.String(), "routes resumed") || strings.Contains(logs.String(), "routes suspended") {
		t.Errorf("a backend without routes was said to suspend or resume them:\n%s", logs.String())
	}
}
