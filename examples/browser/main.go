// Command browser is the private backend of the README's "Reach a private
// service from a web page": it registers an echo protocol with a balancer
// that listens on browser transports, serves a web page running js-libp2p,
// and, after each echo, opens a stream back to the page through the
// balancer. The page sees only the balancer's peer ID, both ways.
//
//	go run ./examples/browser --balancer /ip4/127.0.0.1/tcp/4242/p2p/12D3KooW...
//
// The page's script is test/browser/web (the same source as the browser
// test), bundled first with `npm ci && npm run build` in that folder.
package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	rcmgr "github.com/libp2p/go-libp2p/p2p/host/resource-manager"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/libp2p-balancer/libp2p-balancer/backend"
	"github.com/libp2p-balancer/libp2p-balancer/internal/keyfile"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
)

// The protocols of test/browser/web/src/client.js.
const (
	echoProto = "/libp2p-balancer/example/echo/1.0.0"
	pushProto = "/libp2p-balancer/example/push/1.0.0"
)

//go:embed index.html
var indexHTML []byte

func main() {
	identity := flag.String("identity", "echo.key", "private key `PATH` of this backend, created when missing; the balancer allows its peer ID")
	balancerAddr := flag.String("balancer", "", "the balancer's `MULTIADDR`, ending in /p2p/<its peer ID>")
	httpAddr := flag.String("http", "127.0.0.1:8080", "`HOST:PORT` to serve the page on")
	web := flag.String("web", filepath.Join("test", "browser", "web", "dist"), "`DIR` of the bundled page script")
	flag.Parse()
	if err := run(*identity, *balancerAddr, *httpAddr, *web); err != nil {
		fmt.Fprintln(os.Stderr, "browser:", err)
		os.Exit(1)
	}
}

func run(identity, balancerAddr, httpAddr, web string) error {
	if _, err := os.Stat(filepath.Join(web, "example.js")); err != nil {
		return fmt.Errorf("the page's script is missing (%v): run `npm ci && npm run build` in test/browser/web first", err)
	}
	if balancerAddr == "" {
		return errors.New("--balancer: give the balancer's address, as `balancer serve` prints it")
	}
	ai, err := peer.AddrInfoFromString(balancerAddr)
	if err != nil {
		return fmt.Errorf("--balancer %q: %w", balancerAddr, err)
	}
	key, _, err := keyfile.LoadOrCreate(identity)
	if err != nil {
		return err
	}

	// A host that only dials: nobody reaches this backend but the balancer.
	// The forwarded streams all come from the balancer's peer, on one
	// protocol, so its limits are raised for that peer (wire.AddLimits).
	limits := rcmgr.DefaultLimits
	wire.AddLimits(&limits, ai.ID)
	rm, err := rcmgr.NewResourceManager(rcmgr.NewFixedLimiter(limits.AutoScale()))
	if err != nil {
		return err
	}
	h, err := libp2p.New(libp2p.Identity(key), libp2p.ResourceManager(rm), libp2p.NoListenAddrs)
	if err != nil {
		return err
	}
	defer h.Close()
	b, err := backend.New(h, []peer.AddrInfo{*ai})
	if err != nil {
		return err
	}
	defer b.Close()
	b.SetStreamHandler(echoProto, func(s network.Stream) { echo(b, s) })
	slog.Info("backend started", "peer", h.ID(), "balancer", ai.ID, "protocol", echoProto)

	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(indexHTML)
	})
	// The balancer's browser addresses, as identify told this backend:
	// WebTransport's certificate hashes change every few days, so the page
	// asks for the current ones instead of embedding them.
	mux.HandleFunc("GET /addrs.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(browserAddrs(h.Peerstore().Addrs(ai.ID), ai.ID))
	})
	mux.Handle("GET /", http.FileServer(http.Dir(web)))
	l, err := net.Listen("tcp", httpAddr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	fmt.Printf("open http://%s/\n", l.Addr())

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	srv.Close()
	return nil
}

// echo sends back what the page writes until it half-closes, then pushes
// a stream to the page: backend.NewStream goes out through the balancer,
// so the page sees it come from the balancer's peer ID.
func echo(b *backend.Backend, s network.Stream) {
	defer s.Close()
	remote := s.Conn().RemotePeer()
	n, err := io.Copy(s, s)
	if err != nil {
		s.Reset()
		slog.Warn("echo failed", "peer", remote, "err", err)
		return
	}
	s.CloseWrite()
	slog.Info("echoed", "peer", remote, "bytes", n)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ps, err := b.NewStream(ctx, remote, pushProto)
	if err != nil {
		slog.Warn("push failed", "peer", remote, "err", err)
		return
	}
	defer ps.Close()
	fmt.Fprintf(ps, "hello %s: you echoed %d bytes", remote, n)
	ps.CloseWrite()
	ps.SetReadDeadline(time.Now().Add(10 * time.Second))
	io.Copy(io.Discard, ps) // until the page closes its end
	slog.Info("pushed", "peer", remote)
}

// browserAddrs keeps the addresses a browser can dial (WebSockets,
// WebTransport, WebRTC-direct), each ending in /p2p/<id>.
func browserAddrs(addrs []ma.Multiaddr, id peer.ID) []string {
	out := []string{}
	for _, a := range addrs {
		s := a.String()
		if strings.Contains(s, "/ws") || strings.Contains(s, "/webtransport/") || strings.Contains(s, "/webrtc-direct/") {
			out = append(out, s+"/p2p/"+id.String())
		}
	}
	return out
}
