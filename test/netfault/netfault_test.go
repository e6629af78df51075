//go:build linux

// Package netfault_test holds the fault tests that need a real network
// between separate processes: the balancer (`balancer serve`), a backend
// sidecar (`balancer backend`) and a remote peer each run in a network
// namespace of their own, joined through a router that can cut a link or
// add delay and loss. They show what a user sees when a backend's link is
// cut and restored, when packets are delayed and lost, and when the
// balancer process is restarted; docs/reliability.md maps each case to its
// test.
//
// The tests need root, iproute2 (`ip`) and a kernel with network
// namespaces, veth and TUN devices; without them they fail and say what is
// missing. They build `balancer` and the remote peer (internal/remote) once,
// without the race detector (see build).
package netfault_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/libp2p-balancer/libp2p-balancer/admin"
	"github.com/libp2p-balancer/libp2p-balancer/internal/daemon"
	"github.com/libp2p-balancer/libp2p-balancer/internal/proctest"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
)

// bin and remoteBin are the binaries under test, built once by TestMain.
var bin, remoteBin string

func TestMain(m *testing.M) {
	// The tests spend most of their time waiting for keepalives and
	// timeouts to run out, not computing: run them all at once, unless
	// -parallel says otherwise (its default is the number of CPUs).
	flag.Parse()
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "test.parallel" })
	if !explicit {
		flag.Set("test.parallel", "16")
	}
	if checkNetns(); nsCheck.err != nil {
		// Every test fails at its start saying what is missing; there is
		// nothing to build binaries for.
		os.Exit(m.Run())
	}
	sweepNamespaces()
	dir, err := os.MkdirTemp("", "balancer-netfault-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "balancer")
	remoteBin = filepath.Join(dir, "remote")
	errc := make(chan error, 1)
	go func() { errc <- proctest.Build(remoteBin, "./internal/remote") }()
	err = errors.Join(proctest.Build(bin, "../../cmd/balancer"), <-errc)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a process of a binary under test, run in a namespace with `ip
// netns exec` (which execs it: the process is the binary). It is killed
// when the test ends, and its output is logged if the test failed.
type proc struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout proctest.SyncBuffer
	stderr proctest.SyncBuffer
	done   chan struct{}
	err    error     // valid after done
	ended  time.Time // valid after done
	cursor int       // lines of stdout already consumed by next
}

// startIn runs path with args in namespace ns. With pipe set, standard
// input stays open as p.stdin.
func startIn(t *testing.T, ns, path, name string, pipe bool, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, done: make(chan struct{})}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns, path}, args...)...)
	p.cmd.Stdout = &p.stdout
	p.cmd.Stderr = &p.stderr
	// Should this test binary die before its cleanups run (a timeout
	// panic), its processes die with it rather than live on in their
	// namespaces; TestMain of the next run deletes the namespaces.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if pipe {
		w, err := p.cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		p.stdin = w
	}
	if err := spawn(p.cmd); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		p.ended = time.Now()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("--- %s: %s\n--- stdout:\n%s--- stderr:\n%s", name, strings.Join(args, " "), tail(p.stdout.String()), tail(p.stderr.String()))
		}
	})
	return p
}

// spawnC carries process starts to the one OS thread that forks them.
var spawnC = make(chan func())

// spawn starts cmd from a thread that lives as long as the test binary. The
// parent-death signal (Pdeathsig) is sent when the thread that forked a
// child exits, not the process, and the runtime does end threads: those
// that inNetns locks to a goroutine end with it.
func spawn(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	spawnC <- func() { errc <- cmd.Start() }
	return <-errc
}

func init() {
	go func() {
		runtime.LockOSThread() // for good: see spawn
		for f := range spawnC {
			f()
		}
	}()
}

// tail keeps the end of a long output, and only the size and hash of one
// that is not text.
func tail(s string) string {
	if !utf8.ValidString(s) || strings.ContainsRune(s, 0) {
		return digestOf([]byte(s)).String() + " of binary data\n"
	}
	const max = 8000
	if len(s) > max {
		return "[...]" + s[len(s)-max:]
	}
	return s
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill kills the process (SIGKILL) and waits for it.
func (p *proc) kill() {
	if !p.exited() {
		p.cmd.Process.Kill()
		<-p.done
	}
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("%s still running after %v", p.name, timeout)
	}
	var ee *exec.ExitError
	switch {
	case p.err == nil:
		return 0
	case errors.As(p.err, &ee):
		return ee.ExitCode()
	default:
		t.Fatalf("%s: %v", p.name, p.err)
		return -1
	}
}

// lines waits until the process has printed n lines and returns them.
func (p *proc) lines(t *testing.T, n int, timeout time.Duration) []string {
	t.Helper()
	var out []string
	testnet.Eventually(t, timeout, func() bool {
		s := p.stdout.String()
		if strings.Count(s, "\n") < n {
			return p.exited()
		}
		out = strings.Split(s, "\n")[:n]
		return true
	}, "%d lines on %s's standard output", n, p.name)
	if out == nil {
		t.Fatalf("%s exited (%v) after printing %q", p.name, p.err, p.stdout.String())
	}
	return out
}

// next waits for the next line of standard output, after those next has
// already returned, that starts with one of the words, and returns its
// fields.
func (p *proc) next(t *testing.T, timeout time.Duration, words ...string) []string {
	t.Helper()
	var found []string
	testnet.Eventually(t, timeout, func() bool {
		lines := strings.Split(p.stdout.String(), "\n")
		for ; p.cursor < len(lines)-1; p.cursor++ { // the last is unfinished
			f := strings.Fields(lines[p.cursor])
			for _, w := range words {
				if len(f) > 0 && f[0] == w {
					found = f
					p.cursor++
					return true
				}
			}
		}
		return p.exited()
	}, "a line starting with %v on %s's standard output", words, p.name)
	if found == nil {
		t.Fatalf("%s exited (%v) before printing a line starting with %v", p.name, p.err, words)
	}
	return found
}

// countErr counts the occurrences of s on standard error.
func (p *proc) countErr(s string) int {
	return strings.Count(p.stderr.String(), s)
}

// transport is what a test's libp2p connections run over.
type transport string

const (
	tcp  transport = "tcp"
	quic transport = "quic"
)

var transports = []transport{tcp, quic}

// listenAddr is a multiaddr to listen on at ip, port, over tr.
func listenAddr(tr transport, ip string, port int) string {
	if tr == quic {
		return fmt.Sprintf("/ip4/%s/udp/%d/quic-v1", ip, port)
	}
	return fmt.Sprintf("/ip4/%s/tcp/%d", ip, port)
}

// lbPort is where every test's balancer listens, in its own namespace.
const lbPort = 4001

// balancerProc is a `balancer serve` process in LB's namespace.
type balancerProc struct {
	*proc
	addr  string // over the test's transport, ending in /p2p/ID
	admin *admin.Client
}

// serve starts `balancer serve` in LB's namespace, listening on lbPort over
// tr, with args, and waits for its address.
func (n *netw) serve(t *testing.T, tr transport, key string, args ...string) *balancerProc {
	t.Helper()
	args = append([]string{"serve", "--identity", key, "--listen", listenAddr(tr, addrLB, lbPort)}, args...)
	p := startIn(t, n.nsLB, bin, "lb", false, args...)
	addr := p.lines(t, 1, 20*time.Second)[0]
	if !strings.Contains(addr, "/p2p/") {
		t.Fatalf("serve printed %q, want a multiaddr ending in /p2p/<peer ID>", addr)
	}
	// The admin listener is on LB's own loopback, reached from a thread in
	// LB's namespace.
	tp := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return dialIn(ctx, n.nsLB, network, addr)
	}}
	t.Cleanup(tp.CloseIdleConnections)
	client := &admin.Client{Addr: daemon.DefaultAdmin, HTTP: &http.Client{Transport: tp, Timeout: 5 * time.Second}}
	return &balancerProc{proc: p, addr: addr, admin: client}
}

// route returns the balancer's route of proto, if it has one.
func (b *balancerProc) route(t *testing.T, proto string) (admin.Route, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	routes, err := b.admin.Routes(ctx)
	if err != nil {
		t.Fatalf("admin API of the balancer: %v", err)
	}
	for _, r := range routes {
		if r.Protocol == proto {
			return r, true
		}
	}
	return admin.Route{}, false
}

// echoService is a TCP service in A's namespace that echoes what it reads
// as it reads it, half-closes when the caller does, and reports the length
// and SHA-256 of what it received on got.
type echoService struct {
	addr string
	got  chan digest
}

// digest is a payload's length and SHA-256.
type digest struct {
	n   int64
	sum string
}

func digestOf(b []byte) digest {
	s := sha256.Sum256(b)
	return digest{int64(len(b)), hex.EncodeToString(s[:])}
}

func (d digest) String() string { return fmt.Sprintf("%d bytes, sha256 %.16s…", d.n, d.sum) }

func (n *netw) startEcho(t *testing.T) *echoService {
	t.Helper()
	l := n.listen(n.nsA, "127.0.0.1:0")
	s := &echoService{addr: l.Addr().String(), got: make(chan digest, 64)}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				h := sha256.New()
				nb, err := io.Copy(c, io.TeeReader(c, h))
				if err != nil {
					return
				}
				c.(*net.TCPConn).CloseWrite()
				select {
				case s.got <- digest{nb, hex.EncodeToString(h.Sum(nil))}:
				default:
				}
			}()
		}
	}()
	return s
}

// sidecar starts `balancer backend` in A's namespace with args.
func (n *netw) sidecar(t *testing.T, key, lbAddr string, args ...string) *proc {
	t.Helper()
	args = append([]string{"backend", "--identity", key, "--balancer", lbAddr}, args...)
	return startIn(t, n.nsA, bin, "sidecar", false, args...)
}

// watcher starts the remote peer in D's namespace, watching whether the
// balancer at lbAddr advertises proto.
func (n *netw) watcher(t *testing.T, lbAddr, proto string) *proc {
	t.Helper()
	return startIn(t, n.nsD, remoteBin, "watcher", false, "--watch", lbAddr, "--proto", proto)
}

// at parses the UNIXNANO field of a remote peer's line.
func at(t *testing.T, fields []string) time.Time {
	t.Helper()
	if len(fields) < 2 {
		t.Fatalf("line %q has no time", fields)
	}
	ns, err := strconv.ParseInt(fields[1], 10, 64)
	if err != nil {
		t.Fatalf("line %q: %v", fields, err)
	}
	return time.Unix(0, ns)
}

// dialResult is what one `balancer dial` run in D's namespace produced.
type dialResult struct {
	code     int
	stdout   []byte
	stderr   string
	matching bool // stdout is the input
}

// dialD runs `balancer dial args...` in D's namespace with input on
// standard input, to completion within timeout.
func (n *netw) dialD(t *testing.T, input []byte, timeout time.Duration, args ...string) dialResult {
	t.Helper()
	p := startIn(t, n.nsD, bin, "dial", true, append([]string{"dial"}, args...)...)
	go func() {
		p.stdin.Write(input)
		p.stdin.Close()
	}()
	code := p.wait(t, timeout)
	out := p.stdout.Bytes()
	return dialResult{code: code, stdout: out, stderr: p.stderr.String(), matching: bytes.Equal(out, input)}
}

// waitRoute dials proto through the balancer from D until a stream
// round-trips, which is how a test knows that the sidecar registered.
func (n *netw) waitRoute(t *testing.T, lbAddr, proto string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		res := n.dialD(t, []byte("probe"), 30*time.Second, "--timeout", "5s", lbAddr, proto)
		if res.code == 0 && string(res.stdout) == "probe" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no route to %s through %s after %v: last dial exited %d, stdout %q, stderr %q",
				proto, lbAddr, timeout, res.code, res.stdout, res.stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func parseInt(t *testing.T, s string) int64 {
	t.Helper()
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
