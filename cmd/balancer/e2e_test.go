package main_test

import (
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/libp2p-balancer/libp2p-balancer/internal/node"
	"github.com/libp2p-balancer/libp2p-balancer/internal/proctest"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/proxyproto"
)

// peerOf returns the peer ID at the end of a printed address.
func peerOf(t *testing.T, addr string) peer.ID {
	t.Helper()
	ai, err := node.ParseAddrInfo(addr)
	if err != nil {
		t.Fatal(err)
	}
	return ai.ID
}

// TestSeedScenario runs the scenario the project was founded on with real
// processes: a balancer, sidecars in front of backends A (A1, A2) and B (B1,
// B2), peer D as `balancer dial`, and peer E, which serves only B2. D
// reaches A and A's services read D's peer ID from the PROXY header; B's
// outbound listener reaches E, which settles on B2 and sees the balancer's
// peer ID; half-closes cross in both directions.
func TestSeedScenario(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	aKey, aID := proctest.KeyFile(t, dir, "a.key")
	bKey, bID := proctest.KeyFile(t, dir, "b.key")
	dKey, dID := proctest.KeyFile(t, dir, "d.key")
	// E listens on loopback, which the default dial policy refuses for
	// outbound streams: --dial-loopback, as the README walk-through says.
	_, lbAddr := serve(t, "lb", "--identity", filepath.Join(dir, "lb.key"),
		"--allow", aID.String()+"=/seed/a1/1.0.0,/seed/a2/1.0.0",
		"--allow", bID.String()+"=/seed/b*", "--dial-loopback")
	lbID := peerOf(t, lbAddr)

	// E: an ordinary libp2p peer that serves B2 only. It greets, half-closes
	// its side, then reads everything the caller sends.
	type eSaw struct {
		remote peer.ID
		proto  string
		data   string
	}
	eSeen := make(chan eSaw, 1)
	k, _, _ := crypto.GenerateEd25519Key(nil)
	e, err := node.New(node.Config{Key: k, Listen: []ma.Multiaddr{ma.StringCast("/ip4/127.0.0.1/tcp/0")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	e.SetStreamHandler("/seed/b2/1.0.0", func(s network.Stream) {
		defer s.Close()
		_ = s.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.WriteString(s, "hello from E\n"); err != nil {
			s.Reset()
			return
		}
		if err := s.CloseWrite(); err != nil {
			s.Reset()
			return
		}
		data, err := io.ReadAll(s)
		if err != nil {
			s.Reset()
			return
		}
		eSeen <- eSaw{s.Conn().RemotePeer(), string(s.Protocol()), string(data)}
	})
	eAddrs, _ := node.Addrs(e, nil)

	a1, a2 := testnet.StartTCPEcho(t, true), testnet.StartTCPEcho(t, true)
	start(t, "sidecar-a", proctest.Options{}, "backend", "--identity", aKey, "--balancer", lbAddr, "--proxy-protocol",
		"--route", "/seed/a1/1.0.0="+a1.Addr, "--route", "/seed/a2/1.0.0="+a2.Addr)
	bsvc := testnet.StartTCPEcho(t, false)
	sideB := start(t, "sidecar-b", proctest.Options{}, "backend", "--identity", bKey, "--balancer", lbAddr,
		"--route", "/seed/b1/1.0.0="+bsvc.Addr, "--route", "/seed/b2/1.0.0="+bsvc.Addr,
		"--outbound", "127.0.0.1:0="+eAddrs[0].String()+"/seed/b1/1.0.0,/seed/b2/1.0.0")
	outAddr := sideB.Lines(t, 1, 20*time.Second)[0]

	// Inbound: D opens A1 and A2 on the balancer and reaches A's services,
	// which learn from the PROXY header that D is calling.
	for _, c := range []struct {
		proto string
		svc   *testnet.TCPEcho
	}{{"/seed/a1/1.0.0", a1}, {"/seed/a2/1.0.0", a2}} {
		waitRoute(t, lbAddr, c.proto, "probe", "probe")
		for len(c.svc.Headers) > 0 {
			<-c.svc.Headers // the probes'
		}
		payload := strings.Repeat("D to A on "+c.proto+"\n", 2000)
		res := dialOnce(t, payload, "--identity", dKey, lbAddr, c.proto)
		if res.Code != 0 || res.Stdout != payload {
			t.Fatalf("D on %s: exit %d, %d bytes back (want %d), stderr %q", c.proto, res.Code, len(res.Stdout), len(payload), res.Stderr)
		}
		var h *proxyproto.Header
		select {
		case h = <-c.svc.Headers:
		case <-time.After(10 * time.Second):
			t.Fatal("no PROXY header reached the service")
		}
		if h.PeerID != dID || h.Protocol != c.proto {
			t.Fatalf("PROXY header names peer %s on %q, want D %s on %q", h.PeerID, h.Protocol, dID, c.proto)
		}
		if h.Source.Addr().String() != "127.0.0.1" || h.Source.Port() == 0 {
			t.Fatalf("PROXY header source %v, want D's 127.0.0.1 address", h.Source)
		}
	}

	// B's protocols are routed too, and a protocol nobody serves is refused
	// with one clear line.
	waitRoute(t, lbAddr, "/seed/b1/1.0.0", "to B", "to B")
	res := dialOnce(t, "x", "--timeout", "10s", lbAddr, "/seed/none/1.0.0")
	if res.Code == 0 {
		t.Fatal("dial on an unrouted protocol succeeded")
	}
	oneLine(t, res.Stderr, "balancer dial:", "/seed/none/1.0.0")

	// Outbound: a local TCP client of sidecar B reaches E through the
	// balancer on B2. E half-closes first and still gets the client's data.
	var c net.Conn
	testnet.Eventually(t, 20*time.Second, func() bool {
		c, err = net.Dial("tcp", outAddr)
		return err == nil
	}, "sidecar B's outbound listener")
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	greeting, err := io.ReadAll(c)
	if err != nil || string(greeting) != "hello from E\n" {
		t.Fatalf("read %q, %v from E; want its greeting and then EOF", greeting, err)
	}
	if _, err := io.WriteString(c, "data after E's EOF"); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	select {
	case got := <-eSeen:
		if got.remote != lbID || got.proto != "/seed/b2/1.0.0" || got.data != "data after E's EOF" {
			t.Fatalf("E saw %+v; want the balancer %s on /seed/b2/1.0.0 with the client's data", got, lbID)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("E never got the stream's data")
	}
}

// TestServeBadConfig checks that each bad configuration fails at once with
// one line naming the culprit.
func TestServeBadConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.key")
	os.WriteFile(garbage, []byte("not a key"), 0o600)
	keyDir := filepath.Join(dir, "dir.key")
	os.Mkdir(keyDir, 0o700)
	badYAML := filepath.Join(dir, "bad.yaml")
	os.WriteFile(badYAML, []byte("listen: [/ip4/127.0.0.1/tcp/0]\nbogus_key: 1\n"), 0o600)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { busy.Close() })
	busyAddr := "/ip4/127.0.0.1/tcp/" + strings.Split(busy.Addr().String(), ":")[1]
	key := filepath.Join(dir, "ok.key")
	local := "/ip4/127.0.0.1/tcp/0"

	for _, c := range []struct {
		name string
		args []string
		want []string
	}{
		{"malformed key", []string{"serve", "--identity", garbage, "--listen", local}, []string{garbage, "malformed key"}},
		{"unreadable key", []string{"serve", "--identity", keyDir, "--listen", local}, []string{keyDir, "is a directory"}},
		{"bad multiaddr", []string{"serve", "--identity", key, "--listen", "/ip4/300.1.1.1/tcp/1"}, []string{`listen "/ip4/300.1.1.1/tcp/1"`}},
		{"bad peer ID", []string{"serve", "--identity", key, "--listen", local, "--allow", "QmNotAPeer"}, []string{`allow "QmNotAPeer"`, "bad peer ID"}},
		{"port in use", []string{"serve", "--identity", key, "--listen", busyAddr}, []string{busyAddr, "address already in use"}},
		{"unknown config key", []string{"serve", "--identity", key, "--config", badYAML}, []string{badYAML, "bogus_key"}},
		{"ttl", []string{"serve", "--identity", key, "--listen", local, "--ttl-default", "2m", "--ttl-max", "1m"}, []string{"ttl-max 1m0s"}},
		{"unknown flag", []string{"serve", "--bogus"}, []string{"-bogus"}},
		{"backend without /p2p", []string{"backend", "--identity", key, "--balancer", "/ip4/127.0.0.1/tcp/1", "--route", "/x=127.0.0.1:1"}, []string{`balancer "/ip4/127.0.0.1/tcp/1"`}},
		{"backend DNS name without /p2p", []string{"backend", "--identity", key, "--balancer", "/dns4/lb.example/tcp/4242", "--route", "/x=127.0.0.1:1"}, []string{`balancer "/dns4/lb.example/tcp/4242"`, "/p2p/PEER_ID"}},
		{"backend bad route", []string{"backend", "--identity", key, "--balancer", "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWEkmgYMKEKk5d2hg8xwtmu7S6gf2AHPqvB6TUvJ2m7m1f", "--route", "echo=127.0.0.1:1"}, []string{`route "echo=127.0.0.1:1"`}},
		{"dial bad address", []string{"dial", "/ip4/127.0.0.1/tcp/1", "/x"}, []string{`"/ip4/127.0.0.1/tcp/1"`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			p := start(t, c.name, proctest.Options{}, c.args...)
			if code := p.Wait(t, 20*time.Second); code == 0 {
				t.Fatal("exit code 0")
			}
			if out := p.Stdout.String(); out != "" {
				t.Fatalf("standard output %q, want nothing", out)
			}
			oneLine(t, p.Stderr.String(), c.want...)
		})
	}
}

// streamInFlight starts serve with --drain-timeout drain, a sidecar that
// routes /drain/1.0.0 to an echo service, and a dial on /drain/1.0.0 that
// has had first echoed and keeps its stream open.
func streamInFlight(t *testing.T, drain, first string) (lb *proctest.Proc, lbAddr string, d *proctest.Proc) {
	t.Helper()
	dir := t.TempDir()
	aKey, aID := proctest.KeyFile(t, dir, "a.key")
	lb, lbAddr = serve(t, "lb", "--identity", filepath.Join(dir, "lb.key"), "--allow", aID.String(), "--drain-timeout", drain)
	svc := testnet.StartTCPEcho(t, false)
	start(t, "sidecar", proctest.Options{}, "backend", "--identity", aKey, "--balancer", lbAddr, "--route", "/drain/1.0.0="+svc.Addr)
	waitRoute(t, lbAddr, "/drain/1.0.0", "probe", "probe")
	d = start(t, "dial", proctest.Options{Pipe: true}, "dial", lbAddr, "/drain/1.0.0")
	io.WriteString(d.Stdin, first)
	d.WaitOutput(t, first, 20*time.Second)
	return lb, lbAddr, d
}

// TestServeDrainsOnSIGTERM: on SIGTERM serve stops taking new streams, lets
// the stream in flight finish, and exits 0.
func TestServeDrainsOnSIGTERM(t *testing.T) {
	t.Parallel()
	lb, lbAddr, d := streamInFlight(t, "30s", "part one\n")

	lb.Signal(t, syscall.SIGTERM)
	// New streams are refused while the one in flight goes on.
	testnet.Eventually(t, 20*time.Second, func() bool {
		return dialOnce(t, "new", "--timeout", "5s", lbAddr, "/drain/1.0.0").Code != 0
	}, "new streams to be refused after SIGTERM")
	if lb.Exited() {
		t.Fatal("serve exited with a stream in flight")
	}
	io.WriteString(d.Stdin, "part two\n")
	d.Stdin.Close()
	if code := d.Wait(t, 20*time.Second); code != 0 {
		t.Fatalf("dial exited %d", code)
	}
	if got := d.Stdout.String(); got != "part one\npart two\n" {
		t.Fatalf("dial got %q", got)
	}
	if code := lb.Wait(t, 20*time.Second); code != 0 {
		t.Fatalf("serve exited %d after draining", code)
	}
}

// TestServeDrainTimeout: a stream still open when --drain-timeout runs out
// is cut, and serve exits 0.
func TestServeDrainTimeout(t *testing.T) {
	t.Parallel()
	lb, _, d := streamInFlight(t, "1s", "hello\n")
	begin := time.Now()
	lb.Signal(t, syscall.SIGTERM)
	if code := lb.Wait(t, 20*time.Second); code != 0 {
		t.Fatalf("serve exited %d", code)
	}
	if took := time.Since(begin); took < 900*time.Millisecond {
		t.Fatalf("serve exited after %v, before its 1s drain timeout", took)
	}
	if code := d.Wait(t, 20*time.Second); code == 0 {
		t.Fatal("dial exited 0 though its stream was cut")
	}
}

// TestTwoInstances: two serve processes share one key; a sidecar registers
// with both; peers reach the service through either; killing one does not
// disturb a stream through the other, nor new streams; and the sidecar
// registers again with the killed instance once it is back.
func TestTwoInstances(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	shared := filepath.Join(dir, "shared.key")
	idp := start(t, "id", proctest.Options{}, "id", "--identity", shared)
	if code := idp.Wait(t, 20*time.Second); code != 0 {
		t.Fatalf("id exited %d", code)
	}
	aKey, aID := proctest.KeyFile(t, dir, "a.key")
	allow := aID.String() + "=/two/*"
	lb1, addr1 := serve(t, "lb1", "--identity", shared, "--allow", allow)
	_, addr2 := serve(t, "lb2", "--identity", shared, "--allow", allow)
	id := strings.TrimSpace(idp.Stdout.String())
	if peerOf(t, addr1).String() != id || peerOf(t, addr2).String() != id {
		t.Fatalf("instances print %s and %s, want both %s", addr1, addr2, id)
	}
	svc := testnet.StartTCPEcho(t, false)
	start(t, "sidecar", proctest.Options{}, "backend", "--identity", aKey, "--balancer", addr1, "--balancer", addr2,
		"--route", "/two/echo/1.0.0="+svc.Addr)
	waitRoute(t, addr1, "/two/echo/1.0.0", "via one", "via one")
	waitRoute(t, addr2, "/two/echo/1.0.0", "via two", "via two")

	long := start(t, "dial-long", proctest.Options{Pipe: true}, "dial", addr2, "/two/echo/1.0.0")
	io.WriteString(long.Stdin, "before\n")
	long.WaitOutput(t, "before\n", 20*time.Second)

	lb1.Signal(t, syscall.SIGKILL)
	lb1.Wait(t, 20*time.Second)

	io.WriteString(long.Stdin, "after\n")
	long.Stdin.Close()
	if code := long.Wait(t, 20*time.Second); code != 0 || long.Stdout.String() != "before\nafter\n" {
		t.Fatalf("stream through instance two: exit %d, got %q", code, long.Stdout.String())
	}
	for i := range 3 {
		if res := dialOnce(t, "again", addr2, "/two/echo/1.0.0"); res.Code != 0 || res.Stdout != "again" {
			t.Fatalf("new stream %d through instance two: exit %d, got %q, stderr %q", i, res.Code, res.Stdout, res.Stderr)
		}
	}

	// Instance one comes back on its port; the sidecar registers again.
	listen := strings.TrimSuffix(addr1, "/p2p/"+id)
	p := start(t, "lb1-again", proctest.Options{}, "serve", "--identity", shared, "--allow", allow, "--listen", listen)
	if got := p.Lines(t, 1, 20*time.Second)[0]; got != addr1 {
		t.Fatalf("restarted instance prints %s, want %s", got, addr1)
	}
	waitRoute(t, addr1, "/two/echo/1.0.0", "back", "back")
}

// TestBackendDNSName: `backend --balancer` takes a DNS name; the sidecar
// resolves it (here /dns4/localhost, from /etc/hosts: no DNS traffic leaves
// the machine) and registers with the instance found. TestDNSNames in
// internal/sidecar follows records as they change, on a DNS server of its
// own.
func TestBackendDNSName(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	aKey, aID := proctest.KeyFile(t, dir, "a.key")
	_, addr := serve(t, "lb", "--identity", filepath.Join(dir, "lb.key"), "--allow", aID.String()+"=/dns/*")
	port := strings.Split(addr, "/")[4]
	name := "/dns4/localhost/tcp/" + port + "/p2p/" + peerOf(t, addr).String()
	svc := testnet.StartTCPEcho(t, false)
	side := start(t, "sidecar", proctest.Options{}, "backend", "--identity", aKey, "--balancer", name,
		"--resolve-interval", "1s", "--route", "/dns/echo/1.0.0="+svc.Addr)
	waitRoute(t, addr, "/dns/echo/1.0.0", "found", "found")
	if !strings.Contains(side.Stderr.String(), "balancer instance added") ||
		!strings.Contains(side.Stderr.String(), "/ip4/127.0.0.1/tcp/"+port) {
		t.Fatalf("the sidecar's log names no instance found at /ip4/127.0.0.1/tcp/%s:\n%s", port, side.Stderr.String())
	}
}

// TestDemo runs `balancer demo`.
func TestDemo(t *testing.T) {
	t.Parallel()
	p := start(t, "demo", proctest.Options{}, "demo", "--ttl", "1s")
	if code := p.Wait(t, 90*time.Second); code != 0 {
		t.Fatalf("demo exited %d", code)
	}
	if out := p.Stdout.String(); !strings.Contains(out, "every step succeeded") {
		t.Fatalf("demo output lacks its conclusion:\n%s", out)
	}
}

// TestHelp checks that --help on every command exits 0 and shows its flags
// with their defaults.
func TestHelp(t *testing.T) {
	t.Parallel()
	for cmd, want := range map[string][]string{
		"serve":   {"--identity", "--listen", "--allow", "--ttl-default", "--ttl-max", "--config", "--drain-timeout", "/ip4/0.0.0.0/tcp/4242", "/ip4/0.0.0.0/udp/4242/quic-v1", "balancer.key", "1m0s", "10m0s"},
		"backend": {"--identity", "--balancer", "--resolve-interval", "--route", "--outbound", "--proxy-protocol", "backend.key"},
		"dial":    {"MULTIADDR PROTOCOL...", "--timeout", "30s"},
		"id":      {"--identity", "balancer.key"},
		"demo":    {"--ttl", "2s"},
	} {
		p := start(t, cmd, proctest.Options{}, cmd, "--help")
		if code := p.Wait(t, 20*time.Second); code != 0 {
			t.Fatalf("%s --help exited %d", cmd, code)
		}
		for _, w := range want {
			if !strings.Contains(p.Stdout.String(), w) {
				t.Fatalf("%s --help lacks %q:\n%s", cmd, w, p.Stdout.String())
			}
		}
	}
}

// TestID: id creates a key (mode 0600) when missing and prints the same ID
// every time.
func TestID(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "k.key")
	var ids []string
	for range 2 {
		p := start(t, "id", proctest.Options{}, "id", "--identity", path)
		if code := p.Wait(t, 20*time.Second); code != 0 {
			t.Fatalf("id exited %d", code)
		}
		ids = append(ids, strings.TrimSpace(p.Stdout.String()))
	}
	if ids[0] != ids[1] {
		t.Fatalf("id printed %s, then %s", ids[0], ids[1])
	}
	if _, err := peer.Decode(ids[0]); err != nil {
		t.Fatalf("id printed %q: %v", ids[0], err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", st.Mode().Perm())
	}
}

// TestReadmeWalkthrough follows the README's five-minute walk-through, on
// free ports instead of the README's fixed ones.
func TestReadmeWalkthrough(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	run := func(args ...string) string {
		p := start(t, args[0], proctest.Options{Dir: dir}, args...)
		if code := p.Wait(t, 20*time.Second); code != 0 {
			t.Fatalf("%v exited %d", args, code)
		}
		return strings.TrimSpace(p.Stdout.String())
	}
	backendID := run("id", "--identity", "backend.key")
	lb := start(t, "serve", proctest.Options{Dir: dir}, "serve", "--identity", "lb.key", "--listen", "/ip4/127.0.0.1/tcp/0",
		"--allow", backendID+"=/whoami/*")
	lbAddr := lb.Lines(t, 1, 20*time.Second)[0]
	if want := run("id", "--identity", "lb.key"); !strings.HasSuffix(lbAddr, "/p2p/"+want) {
		t.Fatalf("serve printed %s; id of its key is %s", lbAddr, want)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	svcAddr := l.Addr().String()
	l.Close()
	startBin(t, whoamiBin, "whoami", proctest.Options{Dir: dir}, "--listen", svcAddr)
	start(t, "backend", proctest.Options{Dir: dir}, "backend", "--identity", "backend.key", "--balancer", lbAddr,
		"--route", "/whoami/1.0.0="+svcAddr, "--proxy-protocol")
	dID := run("id", "--identity", "d.key")
	var res proctest.Result
	testnet.Eventually(t, 30*time.Second, func() bool {
		res = dialOnce(t, "hello\n", "--identity", filepath.Join(dir, "d.key"), lbAddr, "/whoami/1.0.0")
		return res.Code == 0
	}, "the walk-through's dial to succeed")
	want := "hello " + dID + ", you came from 127.0.0.1:"
	if !strings.HasPrefix(res.Stdout, want) || !strings.HasSuffix(res.Stdout, " on /whoami/1.0.0\nhello\n") {
		t.Fatalf("dial printed %q, want %q... on /whoami/1.0.0 and the echo", res.Stdout, want)
	}

	// Outbound: a second balancer stands for a remote site, and a sidecar
	// goes out through it to the first one; whoami greets the second
	// balancer's peer ID, read with the README's bash line.
	outID := run("id", "--identity", "out.key")
	lb2 := start(t, "serve-2", proctest.Options{Dir: dir}, "serve", "--identity", "lb2.key", "--listen", "/ip4/127.0.0.1/tcp/0",
		"--admin", "off", "--dial-loopback", "--allow", outID+"=/whoami/*")
	lb2Addr := lb2.Lines(t, 1, 20*time.Second)[0]
	out := start(t, "backend-out", proctest.Options{Dir: dir}, "backend", "--identity", "out.key", "--balancer", lb2Addr,
		"--outbound", "127.0.0.1:0="+lbAddr+"/whoami/1.0.0")
	listen := out.Lines(t, 1, 20*time.Second)[0]
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		t.Fatalf("the outbound sidecar printed %q, want HOST:PORT", listen)
	}
	var greeting string
	testnet.Eventually(t, 30*time.Second, func() bool {
		c := exec.Command("bash", "-c", "head -n 1 < /dev/tcp/"+host+"/"+port)
		b, err := c.Output()
		greeting = string(b)
		return err == nil && greeting != ""
	}, "the walk-through's outbound connection to be greeted")
	lb2ID := run("id", "--identity", "lb2.key")
	if want := "hello " + lb2ID + ", you came from 127.0.0.1:"; !strings.HasPrefix(greeting, want) || !strings.HasSuffix(greeting, " on /whoami/1.0.0\n") {
		t.Fatalf("outbound greeting %q, want %q... on /whoami/1.0.0", greeting, want)
	}
}
