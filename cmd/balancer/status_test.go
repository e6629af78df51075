package main_test

import (
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p-balancer/libp2p-balancer/internal/proctest"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
)

// freePort returns a loopback address with a port nobody listens on now.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestStatusAndAdmin: `serve --admin` serves metrics and the status page,
// and `balancer status` prints the balancer's routes as a table.
func TestStatusAndAdmin(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	aKey, aID := proctest.KeyFile(t, dir, "a.key")
	admin := freePort(t)
	_, lbAddr := serve(t, "lb", "--identity", filepath.Join(dir, "lb.key"), "--allow", aID.String(), "--admin", admin)
	echo := testnet.StartTCPEcho(t, false)
	start(t, "a", proctest.Options{}, "backend", "--identity", aKey, "--balancer", lbAddr, "--route", "/status/echo/1.0.0="+echo.Addr)
	waitRoute(t, lbAddr, "/status/echo/1.0.0", "ping\n", "ping")

	p := start(t, "status", proctest.Options{}, "status", "--admin", admin)
	if code := p.Wait(t, 30*time.Second); code != 0 {
		t.Fatalf("status exited %d: %s", code, p.Stderr.String())
	}
	out := p.Stdout.String()
	for _, want := range []string{peerOf(t, lbAddr).String(), "/status/echo/1.0.0", aID.String()} {
		if !strings.Contains(out, want) {
			t.Fatalf("status output lacks %q:\n%s", want, out)
		}
	}
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`libp2p_balancer_streams_total{backend="` + aID.String() + `",direction="inbound",outcome=`, "libp2p_balancer_routes 1", "libp2p_swarm_"} {
		if !strings.Contains(string(body), want) {
			t.Fatalf("/metrics lacks %q", want)
		}
	}
}
