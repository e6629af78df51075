package testnet

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
	madns "github.com/multiformats/go-multiaddr-dns"
)

// DNS is an authoritative DNS server on 127.0.0.1 (UDP, port 0) whose
// records a test changes while it runs, so that DNS discovery is tested
// against real queries and answers without touching the machine's
// resolver. It answers A and TXT queries from its tables (names are
// case-insensitive, with or without the final dot), with an empty answer
// for other types of a known name, and NXDOMAIN for unknown names.
type DNS struct {
	addr string

	mu      sync.Mutex
	a       map[string][]net.IP
	txt     map[string][]string
	queries map[string]int
}

// NewDNS starts a DNS server, stopped when the test ends.
func NewDNS(t testing.TB) *DNS {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &DNS{addr: pc.LocalAddr().String(), a: map[string][]net.IP{}, txt: map[string][]string{}, queries: map[string]int{}}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(d.serve)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.ActivateAndServe()
	}()
	t.Cleanup(func() {
		_ = srv.Shutdown()
		<-done
	})
	return d
}

// Addr returns the server's host:port.
func (d *DNS) Addr() string { return d.addr }

// SetA replaces name's A records; none removes the name.
func (d *DNS) SetA(name string, ips ...net.IP) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.a[canonical(name)] = ips
}

// SetTXT replaces name's TXT records (one string each); none removes them.
// For a /dnsaddr/DOMAIN name, set _dnsaddr.DOMAIN to "dnsaddr=MULTIADDR"
// values.
func (d *DNS) SetTXT(name string, values ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.txt[canonical(name)] = values
}

// Queries returns how many queries for name the server has answered.
func (d *DNS) Queries(name string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.queries[canonical(name)]
}

// Resolver returns a multiaddr resolver that sends every query to this
// server, whatever the machine's resolver configuration says.
func (d *DNS) Resolver(t testing.TB) *madns.Resolver {
	t.Helper()
	nr := &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "udp", d.addr)
		},
	}
	r, err := madns.NewResolver(madns.WithDefaultResolver(nr))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func canonical(name string) string { return strings.ToLower(dns.Fqdn(name)) }

// ttl is the TTL of every answer, in seconds: short, as a test changes
// records while it runs.
const ttl = 1

func (d *DNS) serve(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	d.mu.Lock()
	for _, q := range req.Question {
		name := canonical(q.Name)
		d.queries[name]++
		ips, hasA := d.a[name]
		txts, hasTXT := d.txt[name]
		if (!hasA || len(ips) == 0) && (!hasTXT || len(txts) == 0) {
			m.Rcode = dns.RcodeNameError
			continue
		}
		hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: ttl}
		switch q.Qtype {
		case dns.TypeA:
			for _, ip := range ips {
				hdr.Rrtype = dns.TypeA
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: ip.To4()})
			}
		case dns.TypeTXT:
			for _, v := range txts {
				hdr.Rrtype = dns.TypeTXT
				m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr, Txt: []string{v}})
			}
		}
	}
	d.mu.Unlock()
	_ = w.WriteMsg(m)
}
