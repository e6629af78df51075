package certfile_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p-balancer/libp2p-balancer/internal/certfile"
)

func writePair(t *testing.T, dir, name string) (cert, key string) {
	t.Helper()
	cert, key = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := certfile.WriteSelfSigned(cert, key, time.Now().Add(time.Hour), "127.0.0.1", "localhost"); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// TestLoadErrors: each way a pair can be wrong gives an error that names
// the file at fault.
func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	cert, key := writePair(t, dir, "a")
	_, otherKey := writePair(t, dir, "b")
	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("not PEM\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	for _, tc := range []struct {
		name, cert, key string
		want            []string
		notExist        bool
	}{
		{"missing certificate", missing, key, []string{"tls certificate", missing, "no such file"}, true},
		{"missing key", cert, missing, []string{"tls key", missing, "no such file"}, true},
		{"no key given", cert, "", []string{"both a certificate file and a key file"}, false},
		{"mismatched pair", cert, otherKey, []string{cert, otherKey, "does not match"}, false},
		{"not PEM", junk, key, []string{junk, "PEM"}, false},
		{"key as certificate", key, cert, []string{key, cert}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := certfile.Load(tc.cert, tc.key)
			if err == nil {
				t.Fatal("loaded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if got := errors.Is(err, fs.ErrNotExist); got != tc.notExist {
				t.Errorf("errors.Is(err, fs.ErrNotExist) = %v, want %v", got, tc.notExist)
			}
		})
	}
}

// TestReload: a TLS listener serving the pair keeps its open connections
// when the files are renewed and reloaded, and new handshakes get the new
// certificate; a failed reload keeps the certificate in use.
func TestReload(t *testing.T) {
	dir := t.TempDir()
	cert, key := writePair(t, dir, "live")
	p, err := certfile.Load(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", p.TLSConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	dial := func() (*tls.Conn, *x509.Certificate) {
		t.Helper()
		c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c, c.ConnectionState().PeerCertificates[0]
	}
	echo := func(c *tls.Conn) error {
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		buf := make([]byte, 4)
		_, err := io.ReadFull(c, buf)
		return err
	}

	first, before := dial()
	if !before.Equal(p.Leaf()) {
		t.Fatal("the listener does not serve the loaded certificate")
	}
	// Renewal: new files in place of the old, then a reload.
	if err := certfile.WriteSelfSigned(cert, key, time.Now().Add(2*time.Hour), "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	if err := p.Reload(); err != nil {
		t.Fatal(err)
	}
	_, after := dial()
	if after.Equal(before) {
		t.Fatal("a new connection still gets the old certificate after Reload")
	}
	if !after.Equal(p.Leaf()) || !p.NotAfter().Equal(after.NotAfter) {
		t.Error("Leaf and NotAfter do not describe the certificate served")
	}
	if err := echo(first); err != nil {
		t.Fatalf("the connection opened before the reload broke: %v", err)
	}

	// A renewal gone wrong (key of another pair) keeps the current one.
	_, otherKey := writePair(t, dir, "other")
	b, err := os.ReadFile(otherKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.Reload(); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("Reload of a mismatched pair: %v", err)
	}
	if _, still := dial(); !still.Equal(after) {
		t.Error("a failed Reload changed the certificate served")
	}
}
