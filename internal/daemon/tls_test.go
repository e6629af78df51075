package daemon_test

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	ma "github.com/multiformats/go-multiaddr"

	"github.com/libp2p-balancer/libp2p-balancer/internal/certfile"
	"github.com/libp2p-balancer/libp2p-balancer/internal/daemon"
	"github.com/libp2p-balancer/libp2p-balancer/internal/node"
)

func tlsConfig(t *testing.T) daemon.Config {
	cfg := daemon.DefaultConfig()
	cfg.Admin = "off"
	cfg.Identity = filepath.Join(t.TempDir(), "lb.key")
	cfg.Listen = []string{"/ip4/127.0.0.1/tcp/0/tls/ws"}
	return cfg
}

// TestTLSConfigErrors: a /tls/ws listener without a certificate, half a
// pair, a missing file or a mismatched pair each stop the daemon before it
// starts, with one line naming the setting or the files.
func TestTLSConfigErrors(t *testing.T) {
	dir := t.TempDir()
	certA, keyA := filepath.Join(dir, "a.crt"), filepath.Join(dir, "a.key")
	certB, keyB := filepath.Join(dir, "b.crt"), filepath.Join(dir, "b.key")
	for _, p := range [][2]string{{certA, keyA}, {certB, keyB}} {
		if err := certfile.WriteSelfSigned(p[0], p[1], time.Now().Add(time.Hour), "127.0.0.1"); err != nil {
			t.Fatal(err)
		}
	}
	for name, c := range map[string]struct {
		mod  func(*daemon.Config)
		want []string
	}{
		"no certificate": {func(c *daemon.Config) {}, []string{"/tls/ws", "tls-cert", "tls-key"}},
		"wss spelling":   {func(c *daemon.Config) { c.Listen = []string{"/ip4/127.0.0.1/tcp/0/wss"} }, []string{"/wss", "tls-cert"}},
		"no key":         {func(c *daemon.Config) { c.TLSCert = certA }, []string{"tls-cert and tls-key"}},
		"missing file":   {func(c *daemon.Config) { c.TLSCert, c.TLSKey = certA, filepath.Join(dir, "nope.key") }, []string{"nope.key", "no such file"}},
		"mismatch":       {func(c *daemon.Config) { c.TLSCert, c.TLSKey = certA, keyB }, []string{certA, keyB, "does not match"}},
		"swapped":        {func(c *daemon.Config) { c.TLSCert, c.TLSKey = keyA, certA }, []string{keyA, "switched"}},
		"conns per ip":   {func(c *daemon.Config) { c.ConnsPerIP = -1 }, []string{"conns-per-ip -1"}},
		"proxy network":  {func(c *daemon.Config) { c.ProxyNetworks = []string{"10.0.0.0/33"} }, []string{`proxy-network "10.0.0.0/33"`}},
	} {
		cfg := tlsConfig(t)
		if name == "conns per ip" || name == "proxy network" {
			cfg.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
		}
		c.mod(&cfg)
		_, err := daemon.Start(cfg, nil)
		if err == nil {
			t.Errorf("%s: started", name)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) || strings.Contains(err.Error(), "\n") {
				t.Errorf("%s: err = %v, want one line naming %q", name, err, w)
			}
		}
		if _, serr := os.Stat(cfg.Identity); serr == nil {
			t.Errorf("%s: the identity file was created before the check failed", name)
		}
	}
	cfg := tlsConfig(t)
	cfg.Listen = []string{"/ip4/127.0.0.1/tcp/0"}
	cfg.ProxyNetworks = []string{"10.0.0.5", "10.1.0.0/16", "2001:db8::/48"}
	if _, err := cfg.Check(); err != nil {
		t.Errorf("proxy networks as addresses and prefixes: %v", err)
	}
}

// TestTLSReload: the daemon serves the configured certificate on /tls/ws;
// after the files are renewed, ReloadCertificate (what SIGHUP calls) makes
// new connections get the new one while a connection opened before stays
// up; a broken renewal keeps the current certificate.
func TestTLSReload(t *testing.T) {
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "lb.crt"), filepath.Join(dir, "lb.key.pem")
	if err := certfile.WriteSelfSigned(certPath, keyPath, time.Now().Add(time.Hour), "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	cfg := tlsConfig(t)
	cfg.TLSCert, cfg.TLSKey = certPath, keyPath
	d, err := daemon.Start(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var hostport string
	for _, a := range d.Addrs() {
		if node.IsSecureWebSocket(a) {
			port, err := a.ValueForProtocol(ma.P_TCP)
			if err != nil {
				t.Fatal(err)
			}
			hostport = "127.0.0.1:" + port
		}
	}
	if hostport == "" {
		t.Fatalf("no /tls/ws address in %v", d.Addrs())
	}
	served := func() (*tls.Conn, *x509.Certificate) {
		t.Helper()
		c, err := tls.Dial("tcp", hostport, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c, c.ConnectionState().PeerCertificates[0]
	}
	readPEM := func(p string) *x509.Certificate {
		pair, err := certfile.Load(p, keyPath)
		if err != nil {
			t.Fatal(err)
		}
		return pair.Leaf()
	}
	first, got := served()
	if want := readPEM(certPath); !got.Equal(want) {
		t.Fatal("the /tls/ws listener does not serve the configured certificate")
	}
	if err := certfile.WriteSelfSigned(certPath, keyPath, time.Now().Add(2*time.Hour), "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	if err := d.ReloadCertificate(); err != nil {
		t.Fatal(err)
	}
	_, renewed := served()
	if renewed.Equal(got) || !renewed.Equal(readPEM(certPath)) {
		t.Fatal("after ReloadCertificate a new connection does not get the renewed certificate")
	}
	// The connection opened before the reload still works: the WebSocket
	// listener answers an HTTP request on it.
	if _, err := io.WriteString(first, "GET / HTTP/1.1\r\nHost: lb\r\n\r\n"); err != nil {
		t.Fatalf("the connection opened before the reload: %v", err)
	}
	first.SetReadDeadline(time.Now().Add(5 * time.Second))
	status, err := bufio.NewReader(first).ReadString('\n')
	if err != nil || !strings.HasPrefix(status, "HTTP/1.1 ") {
		t.Fatalf("the connection opened before the reload: %q, %v", status, err)
	}
	// A half-written renewal: a key that belongs to another certificate.
	other := filepath.Join(dir, "other")
	if err := certfile.WriteSelfSigned(other+".crt", other+".key", time.Now().Add(time.Hour), "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(other + ".key")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := d.ReloadCertificate(); err == nil {
		t.Fatal("a mismatched renewal was reloaded")
	}
	if _, still := served(); !still.Equal(renewed) {
		t.Fatal("a failed reload changed the certificate served")
	}
}
