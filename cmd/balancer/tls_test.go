package main_test

import (
	"crypto/tls"
	"crypto/x509"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	ma "github.com/multiformats/go-multiaddr"

	"github.com/libp2p-balancer/libp2p-balancer/internal/certfile"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
)

// TestServeTLSReload: `serve` with --tls-cert and --tls-key serves the
// certificate on its /tls/ws address, and SIGHUP after a renewal makes new
// connections get the renewed one, without stopping; a broken renewal is
// logged and the previous certificate stays.
func TestServeTLSReload(t *testing.T) {
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "lb.crt"), filepath.Join(dir, "lb.pem")
	if err := certfile.WriteSelfSigned(certPath, keyPath, time.Now().Add(time.Hour), "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	p, _ := serve(t, "serve", "--identity", filepath.Join(dir, "lb.key"),
		"--listen", "/ip4/127.0.0.1/tcp/0/tls/ws", "--tls-cert", certPath, "--tls-key", keyPath)
	addr := p.Lines(t, 2, 10*time.Second)[1] // after serve's TCP address
	if !strings.Contains(addr, "/tls/ws/") {
		t.Fatalf("serve printed %q, want a /tls/ws address", addr)
	}
	port, err := ma.StringCast(addr).ValueForProtocol(ma.P_TCP)
	if err != nil {
		t.Fatal(err)
	}
	served := func() *x509.Certificate {
		t.Helper()
		c, err := tls.Dial("tcp", "127.0.0.1:"+port, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0]
	}
	leaf := func() *x509.Certificate {
		pair, err := certfile.Load(certPath, keyPath)
		if err != nil {
			t.Fatal(err)
		}
		return pair.Leaf()
	}
	if !served().Equal(leaf()) {
		t.Fatal("serve does not serve the certificate of --tls-cert")
	}

	if err := certfile.WriteSelfSigned(certPath, keyPath, time.Now().Add(2*time.Hour), "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	renewed := leaf()
	p.Signal(t, syscall.SIGHUP)
	testnet.Eventually(t, 10*time.Second, func() bool { return served().Equal(renewed) },
		"new connections get the renewed certificate after SIGHUP")

	// The key of another certificate in place of ours: logged, not applied.
	if err := certfile.WriteSelfSigned(filepath.Join(dir, "x.crt"), keyPath, time.Now().Add(time.Hour), "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	p.Signal(t, syscall.SIGHUP)
	testnet.Eventually(t, 10*time.Second, func() bool { return strings.Contains(p.Stderr.String(), "TLS certificate not reloaded") },
		"serve logs the failed reload")
	if !served().Equal(renewed) {
		t.Error("a failed reload changed the certificate served")
	}
	if p.Exited() {
		t.Fatal("serve exited on SIGHUP")
	}
}
