// Package browser_test runs js-libp2p in a real headless Chromium against a
// balancer: the page (web/src/test.js, bundled with esbuild from the
// packages pinned in web/package-lock.json) dials the balancer over each
// browser transport, echoes 1 MiB through it to a private Go backend, and
// receives a stream that the backend opens to it through the balancer.
// What the page reports is what the test asserts.
//
// The bundle is built outside Go, as .ci/run does:
//
//	cd test/browser/web && npm ci && npm run build
//
// Without it, or without Chromium, the test fails and says so.
package browser_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/libp2p-balancer/libp2p-balancer/backend"
	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/certfile"
	"github.com/libp2p-balancer/libp2p-balancer/internal/chromium"
	"github.com/libp2p-balancer/libp2p-balancer/internal/node"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
)

// The protocols of web/src/client.js.
const (
	echoProto = "/libp2p-balancer/example/echo/1.0.0"
	pushProto = "/libp2p-balancer/example/push/1.0.0"
)

// echoSize is what the page echoes over each transport.
const echoSize = 1 << 20

// bundle is the page's script, built by `npm run build` in web/.
var bundle = filepath.Join("web", "dist", "test.js")

// result is what the page reports for one address.
type result struct {
	Addr       string
	Transport  string
	PagePeer   string
	RemotePeer string
	RemoteAddr string
	Sent       int
	Received   int
	Exact      bool
	MS         int
	PushFrom   string
	PushText   string
	Error      string
}

// TestBrowserTransports: a page in Chromium reaches a private backend
// through the balancer over /ws, /tls/ws (with a certificate the test makes
// and tells Chromium to trust), WebTransport and WebRTC-direct, each on
// its own js-libp2p node. Over each it echoes 1 MiB byte-exact with a
// half-close, sees the balancer's peer ID as the remote, and receives the
// stream the backend then opens to the page's peer ID through the
// balancer, which also comes from the balancer's peer ID.
func TestBrowserTransports(t *testing.T) {
	needBundle(t)
	start := time.Now()
	f := newFixture(t,
		"/ip4/127.0.0.1/tcp/0/ws",
		"/ip4/127.0.0.1/tcp/0/tls/ws",
		"/ip4/127.0.0.1/udp/0/quic-v1/webtransport",
		"/ip4/127.0.0.1/udp/0/webrtc-direct",
	)
	br := chromium.Start(t, f.trustFlag)
	results := f.run(t, br)
	t.Logf("the browser test took %v in all", time.Since(start).Round(time.Millisecond))
	f.check(t, results, "ws", "wss", "webtransport", "webrtc-direct")
	if errs := br.Errors(); len(errs) > 0 {
		t.Errorf("the page reported errors:\n%s", strings.Join(errs, "\n"))
	}
}

// needBundle fails the test when the page's script has not been built.
func needBundle(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(bundle); err != nil {
		t.Fatalf("the page's bundle %s is missing (%v): build it with `cd test/browser/web && npm ci && npm run build`, as .ci/run does", bundle, err)
	}
}

// pushText is the line the backend writes on the stream it pushes to a
// page that echoed n bytes.
func pushText(to peer.ID, n int64) string {
	return fmt.Sprintf("hello %s: you echoed %d bytes", to, n)
}

// fixture is a balancer host built as `balancer serve` builds it
// (internal/node: go-libp2p's default transports and security), a balancer
// on it, a private backend serving the echo protocol through it over TCP,
// and an HTTP server for the page.
type fixture struct {
	h     host.Host
	lb    *balancer.Balancer
	be    *backend.Backend
	srv   *httptest.Server
	addrs []string // the browser addresses, full, in the order asked
	// trustFlag tells Chromium to accept the self-signed certificate of
	// the /tls/ws listener, by the hash of its public key.
	trustFlag string

	mu      sync.Mutex
	npushed int
	errs    []string
}

// newFixture starts the balancer on the browser addresses given (plus TCP,
// for the backend) and a backend that has registered the echo protocol.
// The secure WebSocket listeners serve a self-signed certificate for
// 127.0.0.1 from PEM files, as an operator's would be.
func newFixture(t *testing.T, browserAddrs ...string) *fixture {
	t.Helper()
	key, id := testnet.Key(t)
	bkey, bid := testnet.Key(t)
	var listen []ma.Multiaddr
	for _, s := range append([]string{"/ip4/127.0.0.1/tcp/0"}, browserAddrs...) {
		listen = append(listen, ma.StringCast(s))
	}
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := certfile.WriteSelfSigned(certPath, keyPath, time.Now().Add(time.Hour), "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	pair, err := certfile.Load(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	spki := sha256.Sum256(pair.Leaf().RawSubjectPublicKeyInfo)
	h, err := node.New(node.Config{Key: key, Listen: listen, LinkPeers: []peer.ID{bid}, TLS: pair.TLSConfig()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	lb, err := balancer.New(h, balancer.WithAllow(bid))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lb.Close() })
	full, err := node.Addrs(h, listen)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{h: h, lb: lb, trustFlag: "--ignore-certificate-errors-spki-list=" + base64.StdEncoding.EncodeToString(spki[:])}
	var tcp []ma.Multiaddr
	for _, a := range full {
		switch {
		case isPlainTCP(a):
			tcp = append(tcp, a)
		case strings.HasPrefix(a.String(), "/ip4/127.0.0.1/"):
			f.addrs = append(f.addrs, a.String())
		}
	}
	if len(f.addrs) != len(browserAddrs) {
		t.Fatalf("the balancer listens on %v; want one loopback address for each of %v", full, browserAddrs)
	}

	bh := testnet.NewHost(t, testnet.TCP, testnet.Options{Key: bkey, LinkPeers: []peer.ID{id}, NoListen: true})
	ai, err := peer.AddrInfoFromP2pAddr(tcp[0])
	if err != nil {
		t.Fatal(err)
	}
	f.be, err = backend.New(bh, []peer.AddrInfo{*ai})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.be.Close() })
	f.be.SetStreamHandler(echoProto, f.echo)
	testnet.Eventually(t, 10*time.Second, func() bool { return len(lb.Routes()) == 1 }, "the backend registered %s", echoProto)

	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, testPage)
	})
	mux.Handle("GET /", http.FileServer(http.Dir(filepath.Dir(bundle))))
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

// isPlainTCP says whether a is /ip4/.../tcp/N/p2p/... with nothing else.
func isPlainTCP(a ma.Multiaddr) bool {
	var names []string
	for _, p := range a.Protocols() {
		names = append(names, p.Name)
	}
	return strings.Join(names, "/") == "ip4/tcp/p2p"
}

// testPage loads the bundle, which reads its parameters from the URL.
const testPage = `<!doctype html>
<meta charset="utf-8">
<title>libp2p-balancer browser test</title>
<link rel="icon" href="data:,">
<script type="module" src="/test.js"></script>
`

// echo is the backend's service: it echoes the stream until the remote
// half-closes, half-closes in turn, then opens a stream to the remote peer
// through the balancer and writes pushText on it.
func (f *fixture) echo(s network.Stream) {
	defer s.Close()
	n, err := io.Copy(s, s)
	if err != nil {
		f.fail("echo: %v", err)
		s.Reset()
		return
	}
	if err := s.CloseWrite(); err != nil {
		f.fail("echo: close write: %v", err)
		return
	}
	remote := s.Conn().RemotePeer()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	ps, err := f.be.NewStream(ctx, remote, pushProto)
	if err != nil {
		f.fail("push to %s: %v", remote, err)
		return
	}
	defer ps.Close()
	if _, err := io.WriteString(ps, pushText(remote, n)); err != nil {
		f.fail("push to %s: write: %v", remote, err)
		ps.Reset()
		return
	}
	if err := ps.CloseWrite(); err != nil {
		f.fail("push to %s: close write: %v", remote, err)
		return
	}
	// The page closes its end once it has read everything.
	_ = ps.SetReadDeadline(time.Now().Add(15 * time.Second))
	if _, err := io.Copy(io.Discard, ps); err != nil {
		f.fail("push to %s: waiting for the page to close: %v", remote, err)
		return
	}
	f.mu.Lock()
	f.npushed++
	f.mu.Unlock()
}

func (f *fixture) fail(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs = append(f.errs, fmt.Sprintf(format, args...))
}

// run opens the page on every browser address of the balancer and returns
// what it reports once it is done.
func (f *fixture) run(t *testing.T, br *chromium.Browser) []result {
	t.Helper()
	q := url.Values{"addr": f.addrs, "size": {strconv.Itoa(echoSize)}}
	page := br.Open(t, f.srv.URL+"/?"+q.Encode())
	defer func() {
		if t.Failed() {
			var raw any
			_ = page.TryEval(`window.results`, &raw)
			t.Logf("the page's results so far: %+v", raw)
		}
	}()
	testnet.Eventually(t, 120*time.Second, func() bool {
		var done bool
		return page.TryEval(`window.done === true`, &done) == nil && done
	}, "the page did not finish its run over %v", f.addrs)
	var results []result
	page.Eval(t, `window.results`, &results)
	return results
}

// check asserts the page's results: one for each transport named, each
// without error, 1 MiB echoed byte-exact from the balancer's peer ID, and
// the backend's push received from the balancer's peer ID.
func (f *fixture) check(t *testing.T, results []result, transports ...string) {
	t.Helper()
	if len(results) != len(transports) {
		t.Fatalf("the page reported %d results, want one for each of %v: %+v", len(results), transports, results)
	}
	lb := f.h.ID().String()
	for i, r := range results {
		t.Run(transports[i], func(t *testing.T) {
			if r.Transport != transports[i] {
				t.Fatalf("result %d is over %s (%s), want %s", i, r.Transport, r.Addr, transports[i])
			}
			if r.Error != "" {
				t.Fatalf("the page failed over %s: %s", r.Addr, r.Error)
			}
			if r.RemotePeer != lb {
				t.Errorf("the page reached %s, want the balancer %s", r.RemotePeer, lb)
			}
			if r.Sent != echoSize || r.Received != echoSize || !r.Exact {
				t.Errorf("echo: sent %d, received %d, byte-exact %v; want %d both ways, byte-exact", r.Sent, r.Received, r.Exact, echoSize)
			}
			if r.PushFrom != lb {
				t.Errorf("the pushed stream came from %s, want the balancer %s", r.PushFrom, lb)
			}
			pp, err := peer.Decode(r.PagePeer)
			if err != nil {
				t.Fatalf("the page's peer ID %q: %v", r.PagePeer, err)
			}
			if want := pushText(pp, echoSize); r.PushText != want {
				t.Errorf("pushed text %q, want %q (the backend must see the page's own peer ID)", r.PushText, want)
			}
			t.Logf("1 MiB echoed in %d ms over %s", r.MS, r.RemoteAddr)
		})
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range f.errs {
		t.Errorf("backend: %s", e)
	}
	if f.npushed != len(transports) {
		t.Errorf("the backend completed %d pushes, want %d", f.npushed, len(transports))
	}
}
