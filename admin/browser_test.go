package admin_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/proctest"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
)

// TestBrowser loads the status page in a real headless Chromium, driven
// over the DevTools protocol, and checks that it renders the routes of a
// running balancer and, without a reload, shows a backend that registers
// afterwards.
//
// Set ADMIN_SCREENSHOT=file.png to save what the page looks like.
func TestBrowser(t *testing.T) {
	a, b := newIdentity(t), newIdentity(t)
	f := newFixture(t, []identity{a, b}, "")
	f.newBackend(a, map[protocol.ID]network.StreamHandler{protoA1: echo})
	testnet.Eventually(t, 10*time.Second, func() bool { return len(f.lb.Routes()) == 1 }, "A registered")
	// Traffic and a refusal, so that the page has numbers and events.
	d := f.newPeer()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := d.NewStream(ctx, f.host.ID(), protoA1)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(s, randomBytes(64<<10)); err != nil {
		t.Fatal(err)
	}
	f.events.StreamRefused(balancer.Refusal{Direction: balancer.Inbound, Reason: balancer.ReasonLimit, Protocol: protoA1, Requested: protoA1,
		Peer: d.ID(), Detail: "per-peer limit of 10 streams reached"})

	br := startBrowser(t)
	page := br.open(t, f.srv.URL()+"/")

	protocols := func() []string {
		var out []string
		page.eval(t, `[...document.querySelectorAll("#pools [data-protocol]")].map(e => e.dataset.protocol)`, &out)
		return out
	}
	waitFor(t, 30*time.Second, func() bool { return slices.Contains(protocols(), string(protoA1)) },
		"the page shows the pool of %s", protoA1)
	var text string
	page.eval(t, `document.body.innerText`, &text)
	for _, want := range []string{f.host.ID().String(), "least-streams", "serving", "refused", "limit", "per-peer limit of 10"} {
		if !strings.Contains(text, want) {
			t.Errorf("the page does not show %q:\n%s", want, text)
		}
	}
	var ttl string
	page.eval(t, `document.querySelector("#pools td.ttl").textContent`, &ttl)
	if !strings.HasSuffix(ttl, "s") {
		t.Errorf("TTL cell shows %q", ttl)
	}
	// Mark this document: the update must come from the page's own
	// refresh, not from a reload.
	page.eval(t, `window.__sameDocument = true`, nil)

	f.newBackend(b, map[protocol.ID]network.StreamHandler{protoB1: echo})
	waitFor(t, 30*time.Second, func() bool { return slices.Contains(protocols(), string(protoB1)) },
		"the page shows the pool of %s after B registered; it shows %v", protoB1, protocols())
	var same bool
	page.eval(t, `window.__sameDocument === true`, &same)
	if !same {
		t.Error("the page was reloaded instead of updating itself")
	}
	var refreshes string
	page.eval(t, `document.body.dataset.refreshes`, &refreshes)
	t.Logf("the page refreshed %s times", refreshes)

	if path := os.Getenv("ADMIN_SCREENSHOT"); path != "" {
		page.screenshot(t, path)
		page.eval(t, `window.scrollTo(0, document.body.scrollHeight)`, nil)
		time.Sleep(200 * time.Millisecond)
		page.screenshot(t, strings.TrimSuffix(path, ".png")+"-bottom.png")
	}
	if errs := br.errors(); len(errs) > 0 {
		t.Errorf("the page reported errors:\n%s", strings.Join(errs, "\n"))
	}
}

func waitFor(t *testing.T, timeout time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v: "+msg, append([]any{timeout}, args...)...)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// browser is a headless Chromium driven over the DevTools protocol on a
// pipe (--remote-debugging-pipe: requests on its fd 3, answers and events
// on its fd 4, each a JSON message ended by a NUL byte), which needs no
// port and no WebSocket client.
type browser struct {
	cmd  *exec.Cmd
	in   *os.File // our end of its fd 3
	out  *os.File // our end of its fd 4
	done chan struct{}

	mu      sync.Mutex
	nextID  int
	pending map[int]chan cdpMessage
	errs    []string
}

type cdpMessage struct {
	ID        int             `json:"id,omitempty"`
	SessionID string          `json:"sessionId,omitempty"`
	Method    string          `json:"method,omitempty"`
	Params    json.RawMessage `json:"params,omitempty"`
	Result    json.RawMessage `json:"result,omitempty"`
	Error     *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error,omitempty"`
}

// chromiumNames are the names Debian and others give the browser.
var chromiumNames = []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"}

func startBrowser(t *testing.T) *browser {
	t.Helper()
	var bin string
	for _, n := range chromiumNames {
		if p, err := exec.LookPath(n); err == nil {
			bin = p
			break
		}
	}
	if bin == "" {
		t.Fatalf("no Chromium found (looked for %v): the status page test needs it; install it with `apt-get install -y chromium`", chromiumNames)
	}
	profile := t.TempDir()
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--disable-quic", "--no-first-run", "--no-default-browser-check",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-extensions", "--disable-default-apps", "--disable-domain-reliability",
		"--disable-client-side-phishing-detection", "--no-pings", "--mute-audio",
		"--disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication",
		"--user-data-dir="+profile, "--window-size=1200,800",
		"--remote-debugging-pipe", "about:blank")
	cmd.ExtraFiles = []*os.File{inR, outW} // fds 3 and 4
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stderr proctest.SyncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	inR.Close()
	outW.Close()
	br := &browser{cmd: cmd, in: inW, out: outR, done: make(chan struct{}), pending: map[int]chan cdpMessage{}}
	go br.read()
	t.Cleanup(func() {
		// Ask politely, then end the browser's process group (its renderer
		// and helper processes), which this test started.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = br.call(ctx, "", "Browser.close", nil, nil)
		cancel()
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		br.in.Close()
		<-br.done
		if t.Failed() {
			t.Logf("chromium's stderr:\n%s", stderr.String())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var v struct{ Product string }
	if err := br.call(ctx, "", "Browser.getVersion", nil, &v); err != nil {
		t.Fatalf("Chromium does not answer on its DevTools pipe: %v\n%s", err, stderr.String())
	}
	t.Logf("browser: %s", v.Product)
	return br
}

// read dispatches answers to their callers and keeps the page's errors.
func (br *browser) read() {
	defer close(br.done)
	r := bufio.NewReader(br.out)
	for {
		raw, err := r.ReadBytes(0)
		if err != nil {
			br.mu.Lock()
			for id, ch := range br.pending {
				close(ch)
				delete(br.pending, id)
			}
			br.mu.Unlock()
			return
		}
		var m cdpMessage
		if err := json.Unmarshal(raw[:len(raw)-1], &m); err != nil {
			continue
		}
		br.mu.Lock()
		if m.ID != 0 {
			if ch := br.pending[m.ID]; ch != nil {
				ch <- m
				delete(br.pending, m.ID)
			}
		} else if e := pageError(m); e != "" {
			br.errs = append(br.errs, e)
		}
		br.mu.Unlock()
	}
}

// pageError describes an uncaught exception or an error logged by the page
// (a Content-Security-Policy violation shows up as one), or returns "".
func pageError(m cdpMessage) string {
	switch m.Method {
	case "Runtime.exceptionThrown":
		var p struct {
			ExceptionDetails struct {
				Text      string
				Exception struct{ Description string }
			}
		}
		_ = json.Unmarshal(m.Params, &p)
		return "exception: " + p.ExceptionDetails.Text + " " + p.ExceptionDetails.Exception.Description
	case "Log.entryAdded":
		var p struct {
			Entry struct{ Level, Source, Text, URL string }
		}
		_ = json.Unmarshal(m.Params, &p)
		if p.Entry.Level == "error" {
			return fmt.Sprintf("log (%s): %s %s", p.Entry.Source, p.Entry.Text, p.Entry.URL)
		}
	}
	return ""
}

func (br *browser) errors() []string {
	br.mu.Lock()
	defer br.mu.Unlock()
	return slices.Clone(br.errs)
}

// call sends one command (to a page when session is set) and decodes its
// result into result.
func (br *browser) call(ctx context.Context, session, method string, params, result any) error {
	br.mu.Lock()
	br.nextID++
	id := br.nextID
	ch := make(chan cdpMessage, 1)
	br.pending[id] = ch
	br.mu.Unlock()
	req := map[string]any{"id": id, "method": method}
	if params != nil {
		req["params"] = params
	}
	if session != "" {
		req["sessionId"] = session
	}
	raw, err := json.Marshal(req)
	if err != nil {
		return err
	}
	if _, err := br.in.Write(append(raw, 0)); err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	select {
	case m, ok := <-ch:
		if !ok {
			return fmt.Errorf("%s: the browser went away", method)
		}
		if m.Error != nil {
			return fmt.Errorf("%s: %s (%d)", method, m.Error.Message, m.Error.Code)
		}
		if result != nil {
			return json.Unmarshal(m.Result, result)
		}
		return nil
	case <-ctx.Done():
		br.mu.Lock()
		delete(br.pending, id)
		br.mu.Unlock()
		return fmt.Errorf("%s: %w", method, ctx.Err())
	}
}

// tab is one page of the browser.
type tab struct {
	br      *browser
	session string
}

// open makes a new tab, watches it for errors, and loads url.
func (br *browser) open(t *testing.T, url string) *tab {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var target struct{ TargetID string }
	if err := br.call(ctx, "", "Target.createTarget", map[string]any{"url": "about:blank"}, &target); err != nil {
		t.Fatal(err)
	}
	var att struct{ SessionID string }
	if err := br.call(ctx, "", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &att); err != nil {
		t.Fatal(err)
	}
	tb := &tab{br: br, session: att.SessionID}
	for _, m := range []string{"Runtime.enable", "Log.enable", "Page.enable"} {
		if err := br.call(ctx, tb.session, m, nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	var nav struct{ ErrorText string }
	if err := br.call(ctx, tb.session, "Page.navigate", map[string]any{"url": url}, &nav); err != nil {
		t.Fatal(err)
	}
	if nav.ErrorText != "" {
		t.Fatalf("loading %s: %s", url, nav.ErrorText)
	}
	return tb
}

// eval evaluates a JavaScript expression in the page and decodes its value
// into v (nil to drop it).
func (tb *tab) eval(t *testing.T, expr string, v any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var res struct {
		Result struct {
			Value json.RawMessage
		}
		ExceptionDetails *struct{ Text string }
	}
	if err := tb.br.call(ctx, tb.session, "Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true}, &res); err != nil {
		t.Fatal(err)
	}
	if res.ExceptionDetails != nil {
		t.Fatalf("evaluating %s: %s", expr, res.ExceptionDetails.Text)
	}
	if v == nil || len(res.Result.Value) == 0 {
		return
	}
	if err := json.Unmarshal(res.Result.Value, v); err != nil {
		t.Fatalf("evaluating %s: %v (value %s)", expr, err, res.Result.Value)
	}
}

func (tb *tab) screenshot(t *testing.T, path string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var shot struct{ Data string }
	if err := tb.br.call(ctx, tb.session, "Page.captureScreenshot", map[string]any{"format": "png"}, &shot); err != nil {
		t.Fatal(err)
	}
	png, err := base64.StdEncoding.DecodeString(shot.Data)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
}
