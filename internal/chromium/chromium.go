// Package chromium drives a real headless Chromium for the project's browser
// tests (the status page's, and js-libp2p pages in test/browser): it starts
// the browser with the DevTools protocol on a pipe (--remote-debugging-pipe:
// requests on its fd 3, answers and events on its fd 4, each a JSON message
// ended by a NUL byte), which needs no port and no WebSocket client, opens
// tabs, evaluates JavaScript in them and collects the errors pages report.
// The browser is closed when its test ends.
package chromium

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p-balancer/libp2p-balancer/internal/proctest"
)

// Names are the names Debian and others give the browser, looked up in
// this order on $PATH.
var Names = []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"}

// Browser is a headless Chromium driven over the DevTools protocol.
type Browser struct {
	cmd  *exec.Cmd
	in   *os.File // our end of its fd 3
	out  *os.File // our end of its fd 4
	done chan struct{}

	mu      sync.Mutex
	nextID  int
	pending map[int]chan message
	errs    []string
}

type message struct {
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

// Start starts a headless Chromium with a fresh profile, quiet (no
// background networking, sync, extensions or component updates), plus the
// extra command-line flags given, and closes it when t ends. It fails t
// with how to install Chromium when none is found.
func Start(t testing.TB, flags ...string) *Browser {
	t.Helper()
	var bin string
	for _, n := range Names {
		if p, err := exec.LookPath(n); err == nil {
			bin = p
			break
		}
	}
	if bin == "" {
		t.Fatalf("no Chromium found (looked for %v): this browser test needs it; install it with `apt-get install -y chromium` (.ci/run does)", Names)
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
	args := []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--no-first-run", "--no-default-browser-check",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-extensions", "--disable-default-apps", "--disable-domain-reliability",
		"--disable-client-side-phishing-detection", "--no-pings", "--mute-audio",
		"--disable-features=Translate,MediaRouter,OptimizationHints,AutofillServerCommunication",
		"--user-data-dir=" + profile, "--window-size=1200,800",
	}
	args = append(args, flags...)
	args = append(args, "--remote-debugging-pipe", "about:blank")
	cmd := exec.Command(bin, args...)
	cmd.ExtraFiles = []*os.File{inR, outW} // fds 3 and 4
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stderr proctest.SyncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	inR.Close()
	outW.Close()
	br := &Browser{cmd: cmd, in: inW, out: outR, done: make(chan struct{}), pending: map[int]chan message{}}
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

// read dispatches answers to their callers and keeps the pages' errors.
func (br *Browser) read() {
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
		var m message
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

// pageError describes an uncaught exception or an error logged by a page
// (a Content-Security-Policy violation shows up as one), or returns "".
func pageError(m message) string {
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

// Errors returns the uncaught exceptions and logged errors of every tab so
// far.
func (br *Browser) Errors() []string {
	br.mu.Lock()
	defer br.mu.Unlock()
	return slices.Clone(br.errs)
}

// call sends one command (to a page when session is set) and decodes its
// result into result.
func (br *Browser) call(ctx context.Context, session, method string, params, result any) error {
	br.mu.Lock()
	br.nextID++
	id := br.nextID
	ch := make(chan message, 1)
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

// Tab is one page of the browser.
type Tab struct {
	br      *Browser
	session string
}

// Open makes a new tab, watches it for errors, and loads url.
func (br *Browser) Open(t testing.TB, url string) *Tab {
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
	tb := &Tab{br: br, session: att.SessionID}
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

// Eval evaluates a JavaScript expression in the page and decodes its value
// into v (nil to drop it). A promise is awaited.
func (tb *Tab) Eval(t testing.TB, expr string, v any) {
	t.Helper()
	if err := tb.TryEval(expr, v); err != nil {
		t.Fatal(err)
	}
}

// TryEval is Eval returning its error, for polling from goroutines other
// than the test's.
func (tb *Tab) TryEval(expr string, v any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var res struct {
		Result struct {
			Value json.RawMessage
		}
		ExceptionDetails *struct {
			Text      string
			Exception struct{ Description string }
		}
	}
	params := map[string]any{"expression": expr, "returnByValue": true, "awaitPromise": true}
	if err := tb.br.call(ctx, tb.session, "Runtime.evaluate", params, &res); err != nil {
		return err
	}
	if res.ExceptionDetails != nil {
		return fmt.Errorf("evaluating %s: %s %s", expr, res.ExceptionDetails.Text, res.ExceptionDetails.Exception.Description)
	}
	if v == nil || len(res.Result.Value) == 0 {
		return nil
	}
	if err := json.Unmarshal(res.Result.Value, v); err != nil {
		return fmt.Errorf("evaluating %s: %v (value %s)", expr, err, res.Result.Value)
	}
	return nil
}

// Screenshot saves what the tab shows as a PNG file.
func (tb *Tab) Screenshot(t testing.TB, path string) {
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
