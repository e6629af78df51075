package browser_test

import (
	"encoding/json"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p-balancer/libp2p-balancer/internal/chromium"
	"github.com/libp2p-balancer/libp2p-balancer/internal/proctest"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
)

// TestExample follows the README's "Reach a private service from a web
// page" with the real binaries: `balancer serve` on browser transports,
// examples/browser as the backend serving the page, and the page in
// Chromium. Over each address the page offers, a typed message comes back
// echoed by the balancer's peer ID, followed by the backend's push.
func TestExample(t *testing.T) {
	needBundle(t)
	dir := t.TempDir()
	lbBin, exBin := filepath.Join(dir, "balancer"), filepath.Join(dir, "browser")
	if err := proctest.Build(lbBin, "../../cmd/balancer"); err != nil {
		t.Fatal(err)
	}
	if err := proctest.Build(exBin, "../../examples/browser"); err != nil {
		t.Fatal(err)
	}
	lbKey, lbID := proctest.KeyFile(t, dir, "lb.key")
	echoKey, echoID := proctest.KeyFile(t, dir, "echo.key")

	lb := proctest.Start(t, "balancer", exec.Command(lbBin, "serve", "--identity", lbKey, "--admin", "off",
		"--listen", "/ip4/127.0.0.1/tcp/0",
		"--listen", "/ip4/127.0.0.1/tcp/0/ws",
		"--listen", "/ip4/127.0.0.1/udp/0/quic-v1/webtransport",
		"--listen", "/ip4/127.0.0.1/udp/0/webrtc-direct",
		"--allow", echoID.String()+"=/libp2p-balancer/example/*"), proctest.Options{})
	lbAddrs := lb.Lines(t, 4, 20*time.Second) // one per --listen
	web, err := filepath.Abs(filepath.Dir(bundle))
	if err != nil {
		t.Fatal(err)
	}
	ex := proctest.Start(t, "examples/browser", exec.Command(exBin, "--identity", echoKey, "--balancer", lbAddrs[0],
		"--http", "127.0.0.1:0", "--web", web), proctest.Options{})
	exLine := ex.Lines(t, 1, 20*time.Second)[0]
	pageURL, ok := strings.CutPrefix(exLine, "open ")
	if !ok {
		t.Fatalf("the example printed %q, want `open URL`", exLine)
	}
	// The page reads the balancer's browser addresses once, when it
	// loads; the backend knows them once identify has run.
	var addrs []string
	testnet.Eventually(t, 20*time.Second, func() bool {
		resp, err := http.Get(pageURL + "addrs.json")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		return json.NewDecoder(resp.Body).Decode(&addrs) == nil && len(addrs) == 3
	}, "the example serves the balancer's 3 browser addresses")

	br := chromium.Start(t)
	page := br.Open(t, pageURL)
	testnet.Eventually(t, 30*time.Second, func() bool {
		var ready bool
		return page.TryEval(`!document.getElementById("send").disabled`, &ready) == nil && ready
	}, "the page is ready")
	count := func(prefix string) (n int) {
		var lines []string
		page.Eval(t, `[...document.querySelectorAll("#log li")].map(li => li.textContent)`, &lines)
		for _, l := range lines {
			if strings.Contains(l, prefix) {
				n++
			}
		}
		return n
	}
	for i, a := range addrs {
		msg := "hello over " + a
		js, _ := json.Marshal(map[string]string{"addr": a, "msg": msg})
		page.Eval(t, `(() => { const p = `+string(js)+`;
			document.getElementById("addr").value = p.addr;
			document.getElementById("msg").value = p.msg;
			document.getElementById("send").click() })()`, nil)
		testnet.Eventually(t, 30*time.Second, func() bool {
			return count("echoed by "+lbID.String()) == i+1 && count("pushed by the backend, from "+lbID.String()) == i+1
		}, "the page shows the echo and the push over %s", a)
		if count(msg) != 1 {
			t.Errorf("the page does not show the echoed message %q", msg)
		}
	}
	if t.Failed() {
		var text string
		page.Eval(t, `document.body.innerText`, &text)
		t.Logf("the page:\n%s", text)
	}
	if errs := br.Errors(); len(errs) > 0 {
		t.Errorf("the page reported errors:\n%s", strings.Join(errs, "\n"))
	}
}
