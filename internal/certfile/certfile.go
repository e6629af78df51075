// Package certfile serves a TLS certificate kept in PEM files that the
// operator supplies and renews (from an ACME client such as certbot or
// lego, or an internal CA): the secure WebSocket listeners (/tls/ws) of
// `balancer serve` take it through tls.Config.GetCertificate, so that
// Reload swaps in renewed files for new connections without closing the
// listeners or the connections already open.
package certfile

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"time"
)

// Pair is a certificate chain and its private key, loaded from two PEM
// files. Its methods are safe for concurrent use.
type Pair struct {
	certPath, keyPath string

	mu   sync.RWMutex
	cert *tls.Certificate
}

// Load reads the pair from certPath (the certificate chain, leaf first)
// and keyPath (its private key). Its errors name the file at fault: a
// missing or unreadable file, PEM that holds no certificate or key, or a
// key that does not belong to the certificate.
func Load(certPath, keyPath string) (*Pair, error) {
	p := &Pair{certPath: certPath, keyPath: keyPath}
	c, err := p.read()
	if err != nil {
		return nil, err
	}
	p.cert = c
	return p, nil
}

func (p *Pair) read() (*tls.Certificate, error) {
	if p.certPath == "" || p.keyPath == "" {
		return nil, errors.New("tls: both a certificate file and a key file are needed")
	}
	certPEM, err := os.ReadFile(p.certPath)
	if err != nil {
		return nil, fmt.Errorf("tls certificate: %w", bare(err))
	}
	keyPEM, err := os.ReadFile(p.keyPath)
	if err != nil {
		return nil, fmt.Errorf("tls key: %w", bare(err))
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// crypto/tls says "private key does not match public key", or
		// that a file holds no PEM block of the kind expected, without
		// naming the files.
		return nil, fmt.Errorf("tls certificate %s and key %s: %w", p.certPath, p.keyPath, err)
	}
	return &c, nil
}

// bare keeps the path and the cause of a file error, dropping the
// operation ("open").
func bare(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", pe.Path, pe.Err)
	}
	return err
}

// Reload reads the files again. On success, new TLS handshakes use the new
// pair; on error the pair in use stays, and the error says why.
func (p *Pair) Reload() error {
	c, err := p.read()
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.cert = c
	p.mu.Unlock()
	return nil
}

// GetCertificate returns the current certificate, for
// tls.Config.GetCertificate.
func (p *Pair) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.cert, nil
}

// NotAfter is when the current certificate expires.
func (p *Pair) NotAfter() time.Time {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.cert.Leaf.NotAfter
}

// Leaf returns the current certificate's leaf.
func (p *Pair) Leaf() *x509.Certificate {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.cert.Leaf
}

// TLSConfig returns a server configuration that serves the current pair
// (TLS 1.2 at least, what browsers speak).
func (p *Pair) TLSConfig() *tls.Config {
	return &tls.Config{GetCertificate: p.GetCertificate, MinVersion: tls.VersionTLS12}
}
