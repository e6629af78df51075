package admin_test

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/chromium"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
)

// TestBrowser loads the status page in a real headless Chromium, driven
// over the DevTools protocol, and checks that it renders the routes of a
// running balancer and, without a reload, shows a backend that registers
// afterwards.
//
// Set ADMIN_SCREENSHOT=file.png to save what the page looks like.
func TestBrowser(t *testing.T) {
	a, b := lbtest.NewIdentity(t), lbtest.NewIdentity(t)
	f := newFixture(t, []lbtest.Identity{a, b}, "")
	f.NewBackend(a, map[protocol.ID]network.StreamHandler{protoA1: testnet.Echo})
	testnet.Eventually(t, 10*time.Second, func() bool { return len(f.LB.Routes()) == 1 }, "A registered")
	// Traffic and a refusal, so that the page has numbers and events.
	d := f.NewPeer()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := d.NewStream(ctx, f.Host.ID(), protoA1)
	if err != nil {
		t.Fatal(err)
	}
	if err := testnet.RoundTrip(s, testnet.RandomBytes(64<<10)); err != nil {
		t.Fatal(err)
	}
	f.events.StreamRefused(balancer.Refusal{Direction: balancer.Inbound, Reason: balancer.ReasonLimit, Protocol: protoA1, Requested: protoA1,
		Peer: d.ID(), Detail: "per-peer limit of 10 streams reached"})

	br := chromium.Start(t)
	page := br.Open(t, f.srv.URL()+"/")

	protocols := func() []string {
		var out []string
		page.Eval(t, `[...document.querySelectorAll("#pools [data-protocol]")].map(e => e.dataset.protocol)`, &out)
		return out
	}
	testnet.Eventually(t, 30*time.Second, func() bool { return slices.Contains(protocols(), string(protoA1)) },
		"the page shows the pool of %s", protoA1)
	var text string
	page.Eval(t, `document.body.innerText`, &text)
	for _, want := range []string{f.Host.ID().String(), "least-streams", "serving", "refused", "limit", "per-peer limit of 10"} {
		if !strings.Contains(text, want) {
			t.Errorf("the page does not show %q:\n%s", want, text)
		}
	}
	var ttl string
	page.Eval(t, `document.querySelector("#pools td.ttl").textContent`, &ttl)
	if !strings.HasSuffix(ttl, "s") {
		t.Errorf("TTL cell shows %q", ttl)
	}
	// Mark this document: the update must come from the page's own
	// refresh, not from a reload.
	page.Eval(t, `window.__sameDocument = true`, nil)

	f.NewBackend(b, map[protocol.ID]network.StreamHandler{protoB1: testnet.Echo})
	testnet.Eventually(t, 30*time.Second, func() bool { return slices.Contains(protocols(), string(protoB1)) },
		"the page shows the pool of %s after B registered; it shows %v", protoB1, protocols())
	var same bool
	page.Eval(t, `window.__sameDocument === true`, &same)
	if !same {
		t.Error("the page was reloaded instead of updating itself")
	}
	var refreshes string
	page.Eval(t, `document.body.dataset.refreshes`, &refreshes)
	t.Logf("the page refreshed %s times", refreshes)

	if path := os.Getenv("ADMIN_SCREENSHOT"); path != "" {
		page.Screenshot(t, path)
		page.Eval(t, `window.scrollTo(0, document.body.scrollHeight)`, nil)
		time.Sleep(200 * time.Millisecond)
		page.Screenshot(t, strings.TrimSuffix(path, ".png")+"-bottom.png")
	}
	if errs := br.Errors(); len(errs) > 0 {
		t.Errorf("the page reported errors:\n%s", strings.Join(errs, "\n"))
	}
}
