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
// without the race detector (see proctest.Build).
package netfault_test

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

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
	proctest.Main(m,
		proctest.Binary{Name: "balancer", Pkg: "../../cmd/balancer", Path: &bin},
		proctest.Binary{Name: "remote", Pkg: "./internal/remote", Path: &remoteBin})
}

// startIn runs path with args in namespace ns with `ip netns exec` (which
// execs it: the process is the binary). With pipe set, standard input stays
// open as p.Stdin.
func startIn(t *testing.T, ns, path, name string, pipe bool, args ...string) *proctest.Proc {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, path}, args...)...)
	// Should this test binary die before its cleanups run (a timeout
	// panic), its processes die with it rather than live on in their
	// namespaces; TestMain of the next run deletes the namespaces.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return proctest.Start(t, name, cmd, proctest.Options{Pipe: pipe, Spawn: spawn})
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

// listenAddr is a multiaddr to listen on at ip, port, over tr.
func listenAddr(tr testnet.Transport, ip string, port int) string {
	if tr == testnet.QUIC {
		return fmt.Sprintf("/ip4/%s/udp/%d/quic-v1", ip, port)
	}
	return fmt.Sprintf("/ip4/%s/tcp/%d", ip, port)
}

// lbPort is where every test's balancer listens, in its own namespace.
const lbPort = 4001

// balancerProc is a `balancer serve` process in LB's namespace.
type balancerProc struct {
	*proctest.Proc
	addr  string // over the test's transport, ending in /p2p/ID
	admin *admin.Client
}

// serve starts `balancer serve` in LB's namespace, listening on lbPort over
// tr, with args, and waits for its address.
func (n *netw) serve(t *testing.T, tr testnet.Transport, key string, args ...string) *balancerProc {
	t.Helper()
	args = append([]string{"serve", "--identity", key, "--listen", listenAddr(tr, addrLB, lbPort)}, args...)
	p := startIn(t, n.nsLB, bin, "lb", false, args...)
	addr := p.Lines(t, 1, 20*time.Second)[0]
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
	return &balancerProc{Proc: p, addr: addr, admin: client}
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

// startEcho starts a TCP echo service in A's namespace.
func (n *netw) startEcho(t *testing.T) *testnet.TCPEcho {
	t.Helper()
	return testnet.ServeTCPEcho(t, n.listen(n.nsA, "127.0.0.1:0"), false)
}

// sidecar starts `balancer backend` in A's namespace with args.
func (n *netw) sidecar(t *testing.T, key, lbAddr string, args ...string) *proctest.Proc {
	t.Helper()
	args = append([]string{"backend", "--identity", key, "--balancer", lbAddr}, args...)
	return startIn(t, n.nsA, bin, "sidecar", false, args...)
}

// watcher starts the remote peer in D's namespace, watching whether the
// balancer at lbAddr advertises proto.
func (n *netw) watcher(t *testing.T, lbAddr, proto string) *proctest.Proc {
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

// dialD runs `balancer dial args...` in D's namespace with input on
// standard input, to completion within timeout.
func (n *netw) dialD(t *testing.T, input []byte, timeout time.Duration, args ...string) proctest.Result {
	t.Helper()
	p := startIn(t, n.nsD, bin, "dial", true, append([]string{"dial"}, args...)...)
	go func() {
		p.Stdin.Write(input)
		p.Stdin.Close()
	}()
	return p.Finish(t, timeout)
}

// waitRoute dials proto through the balancer from D until a stream
// round-trips, which is how a test knows that the sidecar registered.
func (n *netw) waitRoute(t *testing.T, lbAddr, proto string, timeout time.Duration) {
	t.Helper()
	proctest.WaitRoute(t, timeout, proto+" through "+lbAddr, "probe", func() proctest.Result {
		return n.dialD(t, []byte("probe"), 30*time.Second, "--timeout", "5s", lbAddr, proto)
	})
}

func parseInt(t *testing.T, s string) int64 {
	t.Helper()
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
