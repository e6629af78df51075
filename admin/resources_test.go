package admin_test

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/admin"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
)

// TestStatusScopes: /api/status and `balancer status` show the resource
// manager's limits in force and their use: the system, the transient
// scope, the balancer service, and the busiest peer first.
func TestStatusScopes(t *testing.T) {
	a := lbtest.NewIdentity(t)
	f := newFixture(t, []lbtest.Identity{a}, "")
	const proto protocol.ID = "/test/held"
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	be, _ := f.NewBackend(a, map[protocol.ID]network.StreamHandler{proto: func(s network.Stream) {
		s.Write([]byte{1})
		<-release
		s.Reset()
	}})
	_ = be
	testnet.Eventually(t, 10*time.Second, func() bool { return len(f.LB.Routes()) == 1 }, "route registered")
	busy, idle := f.NewPeer(), f.NewPeer()
	_ = idle
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const held = 3
	for i := 0; i < held; i++ {
		s, err := busy.NewStream(ctx, f.Host.ID(), proto)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(s, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
	}

	st, err := f.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]admin.Scope{}
	var names []string
	for _, s := range st.Scopes {
		byName[s.Name] = s
		names = append(names, s.Name)
	}
	for _, want := range []string{"system", "transient", "service libp2p.balancer"} {
		if _, ok := byName[want]; !ok {
			t.Errorf("status scopes %v lack %q", names, want)
		}
	}
	sys := byName["system"]
	if sys.StreamsIn < held || sys.StreamsInLimit <= 0 || sys.ConnsInLimit <= 0 || sys.MemoryLimit <= 0 {
		t.Errorf("system scope %+v: want use and limits", sys)
	}
	// Peers come after the three main scopes, the busiest first: busy
	// holds 3 inbound streams, the backend as many outbound.
	var first admin.Scope
	for _, s := range st.Scopes {
		if strings.HasPrefix(s.Name, "peer ") {
			first = s
			break
		}
	}
	if first.StreamsIn+first.StreamsOut < held {
		t.Errorf("busiest peer scope %+v, want one holding %d streams", first, held)
	}
	if p := byName["peer "+busy.ID().String()]; p.StreamsIn != held || p.StreamsInLimit <= 0 {
		t.Errorf("the remote peer's scope %+v, want %d inbound streams and a limit", p, held)
	}

	var out bytes.Buffer
	if err := admin.PrintStatus(ctx, &out, f.client); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "LIMITS") || !strings.Contains(out.String(), "service libp2p.balancer") {
		t.Errorf("balancer status does not show the limits:\n%s", out.String())
	}
	t.Logf("\n%s", out.String())
}
