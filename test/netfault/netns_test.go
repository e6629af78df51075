//go:build linux

package netfault_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// The topology every test builds, in namespaces of its own (names are
// unique to the test run and the test):
//
//	D (remote peer)  10.77.1.2 ─┐
//	LB (balancer)    10.77.2.2 ─┼─ R (router: a TUN device and this process)
//	A (backend)      10.77.3.2 ─┘
//
// Each of D, LB and A has one veth (eth0) to R, whose ends are named r-d,
// r-lb and r-a. R's kernel hands every packet that arrives on a veth to a TUN
// device (policy routing), and the test process's router reads it there,
// drops or delays it as told, and writes it back, after which R's kernel
// forwards it to its destination. So every packet between D, LB and A
// crosses one emulated link, which does what tc netem would do on each veth
// (the kernel these tests run on has no sch_netem; see router).
//
// The addresses are private and exist only inside these namespaces, which
// have no link to any other; no packet leaves them.
const (
	addrD  = "10.77.1.2"
	addrLB = "10.77.2.2"
	addrA  = "10.77.3.2"
)

// nsPrefix starts the name of every namespace this test binary creates, so
// that leftovers of a killed run can be told apart (see sweepNamespaces).
var nsPrefix = fmt.Sprintf("lbt-%d-", os.Getpid())

var nsSeq atomic.Int64

// nsCheck is the result of checkNetns.
var nsCheck struct {
	once sync.Once
	err  error
}

// requireNetns fails the test, saying what is missing, unless this process
// can create network namespaces, veths and TUN devices with iproute2.
func requireNetns(t *testing.T) {
	t.Helper()
	checkNetns()
	if nsCheck.err != nil {
		t.Fatalf("netfault needs root, iproute2's `ip` (Debian package iproute2) and a kernel with "+
			"network namespaces, veth and TUN (/dev/net/tun); what failed: %v", nsCheck.err)
	}
}

// checkNetns checks, once, that namespaces can be made, and sets
// nsCheck.err if not.
func checkNetns() {
	nsCheck.once.Do(func() {
		if os.Geteuid() != 0 {
			nsCheck.err = fmt.Errorf("running as uid %d, not root", os.Geteuid())
			return
		}
		if _, err := exec.LookPath("ip"); err != nil {
			nsCheck.err = errors.New("no `ip` command on PATH (Debian package iproute2)")
			return
		}
		name := nsPrefix + "probe"
		if err := ip("netns", "add", name); err != nil {
			nsCheck.err = err
			return
		}
		defer ip("netns", "del", name)
		if err := ip("-n", name, "link", "add", "p0", "type", "veth", "peer", "name", "p1"); err != nil {
			nsCheck.err = fmt.Errorf("veth pairs: %w", err)
			return
		}
		f, err := openTUN(name)
		if err != nil {
			nsCheck.err = fmt.Errorf("TUN devices (/dev/net/tun): %w", err)
			return
		}
		f.Close()
	})
}

// ip runs the ip command; its error carries ip's own message.
func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// sweepNamespaces deletes namespaces left behind by test binaries that were
// killed before their cleanups ran: those with our prefix whose process is
// gone. Namespaces of a live process are never touched.
func sweepNamespaces() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		rest, ok := strings.CutPrefix(name, "lbt-")
		if !ok {
			continue
		}
		pidText, _, _ := strings.Cut(rest, "-")
		if pid, err := strconv.Atoi(pidText); err != nil || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat("/proc/" + pidText); err == nil {
			continue // that run is still going
		}
		ip("netns", "del", name)
	}
}

// inNetns runs fn on an OS thread that has joined network namespace ns.
// Sockets fn creates belong to ns for good and may be used from any
// goroutine afterwards. The thread is never returned to the runtime: the
// goroutine ends locked, so the thread ends with it.
func inNetns(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open("/run/netns/" + ns)
		if err != nil {
			errc <- err
			return
		}
		_, _, errno := syscall.RawSyscall(sysSetns, f.Fd(), syscall.CLONE_NEWNET, 0)
		f.Close()
		if errno != 0 {
			errc <- fmt.Errorf("setns %s: %w", ns, errno)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// openTUN creates a TUN device named tun0 in namespace ns and returns it,
// non-blocking and in the runtime's poller so that Close ends a Read.
func openTUN(ns string) (*os.File, error) {
	var f *os.File
	err := inNetns(ns, func() error {
		fd, err := syscall.Open("/dev/net/tun", syscall.O_RDWR|syscall.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		const iffTUN, iffNoPI, tunSetIff = 0x0001, 0x1000, 0x400454ca
		var ifr struct {
			name  [16]byte
			flags uint16
			_     [22]byte
		}
		copy(ifr.name[:], "tun0")
		ifr.flags = iffTUN | iffNoPI
		if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), tunSetIff, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
			syscall.Close(fd)
			return fmt.Errorf("TUNSETIFF: %w", errno)
		}
		if err := syscall.SetNonblock(fd, true); err != nil {
			syscall.Close(fd)
			return err
		}
		f = os.NewFile(uintptr(fd), "tun0")
		return nil
	})
	return f, err
}

// netw is one test's set of namespaces and its router.
type netw struct {
	t              *testing.T
	nsD, nsLB, nsA string
	nsR            string
	router         *router
}

// newNet builds the topology for t and removes it when t ends.
func newNet(t *testing.T) *netw {
	t.Helper()
	requireNetns(t)
	base := nsPrefix + strconv.FormatInt(nsSeq.Add(1), 10) + "-"
	n := &netw{t: t, nsD: base + "d", nsLB: base + "lb", nsA: base + "a", nsR: base + "r"}
	for _, ns := range []string{n.nsR, n.nsD, n.nsLB, n.nsA} {
		if err := ip("netns", "add", ns); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := ip("netns", "del", ns); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		})
	}
	must := func(args ...string) {
		t.Helper()
		if err := ip(args...); err != nil {
			t.Fatal(err)
		}
	}
	for i, end := range []struct{ ns, name, addr string }{
		{n.nsD, "r-d", addrD}, {n.nsLB, "r-lb", addrLB}, {n.nsA, "r-a", addrA},
	} {
		gw := fmt.Sprintf("10.77.%d.1", i+1)
		must("link", "add", "eth0", "netns", end.ns, "type", "veth", "peer", "name", end.name, "netns", n.nsR)
		must("-n", end.ns, "addr", "add", end.addr+"/24", "dev", "eth0")
		must("-n", end.ns, "link", "set", "dev", "lo", "up")
		must("-n", end.ns, "link", "set", "dev", "eth0", "up")
		must("-n", end.ns, "route", "add", "default", "via", gw)
		must("-n", n.nsR, "addr", "add", gw+"/24", "dev", end.name)
		must("-n", n.nsR, "link", "set", "dev", end.name, "up")
		// Whatever arrives on a veth goes to the TUN device first.
		must("-n", n.nsR, "rule", "add", "iif", end.name, "table", "100", "pref", "100")
	}
	must("-n", n.nsR, "link", "set", "dev", "lo", "up")
	tun, err := openTUN(n.nsR)
	if err != nil {
		t.Fatal(err)
	}
	n.router = newRouter(tun)
	t.Cleanup(n.router.close)
	must("-n", n.nsR, "link", "set", "dev", "tun0", "up")
	must("-n", n.nsR, "route", "add", "default", "dev", "tun0", "table", "100")
	// Forward, and accept what comes back from the TUN device with a
	// source that R routes through a veth.
	err = inNetns(n.nsR, func() error {
		for _, kv := range [][2]string{
			{"ipv4/ip_forward", "1"},
			{"ipv4/conf/all/rp_filter", "0"},
			{"ipv4/conf/default/rp_filter", "0"},
			{"ipv4/conf/tun0/rp_filter", "0"},
		} {
			if err := os.WriteFile("/proc/sys/net/"+kv[0], []byte(kv[1]), 0); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// cut takes backend A's link down, as if its cable were pulled: R's end of
// the veth goes down, A's end loses its carrier, and every packet to or
// from A is lost; neither side is told anything.
func (n *netw) cut() {
	n.t.Helper()
	if err := ip("-n", n.nsR, "link", "set", "dev", "r-a", "down"); err != nil {
		n.t.Fatal(err)
	}
}

// restore brings A's link back up.
func (n *netw) restore() {
	n.t.Helper()
	if err := ip("-n", n.nsR, "link", "set", "dev", "r-a", "up"); err != nil {
		n.t.Fatal(err)
	}
}

// listen opens a TCP listener in ns.
func (n *netw) listen(ns, addr string) net.Listener {
	n.t.Helper()
	var l net.Listener
	err := inNetns(ns, func() (err error) {
		l, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { l.Close() })
	return l
}

// dialIn opens a connection from ns.
func dialIn(ctx context.Context, ns, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNetns(ns, func() (err error) {
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// router is the emulated link: it reads every packet R forwards from the
// TUN device and writes it back after a delay, or drops it with some
// probability, as `tc qdisc add dev X root netem delay D loss L` would on
// each veth. The queue holds at most 1000 packets, netem's default limit, and
// drops at the tail beyond that. Packets keep their order.
type router struct {
	tun *os.File

	mu       sync.Mutex
	delay    time.Duration
	loss     float64
	isolated netip.Addr // every packet to or from it is dropped; invalid: none

	queue chan packet
	done  chan struct{}
	wg    sync.WaitGroup

	passed, dropped atomic.Int64
}

type packet struct {
	due  time.Time
	data []byte
}

func newRouter(tun *os.File) *router {
	r := &router{tun: tun, queue: make(chan packet, 1000), done: make(chan struct{})}
	r.wg.Add(2)
	go r.read()
	go r.write()
	return r
}

// impair sets the one-way delay and the loss probability applied to every
// packet from now on.
func (r *router) impair(delay time.Duration, loss float64) {
	r.mu.Lock()
	r.delay, r.loss = delay, loss
	r.mu.Unlock()
}

// isolate makes the router drop every packet to or from addr, as netem's
// "loss 100%" would on that host's link; an invalid addr ends it.
func (r *router) isolate(addr netip.Addr) {
	r.mu.Lock()
	r.isolated = addr
	r.mu.Unlock()
}

func (r *router) read() {
	defer r.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, err := r.tun.Read(buf)
		if err != nil {
			return
		}
		r.mu.Lock()
		delay, loss, isolated := r.delay, r.loss, r.isolated
		r.mu.Unlock()
		if isolated.IsValid() && n >= 20 && buf[0]>>4 == 4 {
			src, _ := netip.AddrFromSlice(buf[12:16])
			dst, _ := netip.AddrFromSlice(buf[16:20])
			if src == isolated || dst == isolated {
				r.dropped.Add(1)
				continue
			}
		}
		if loss > 0 && rand.Float64() < loss {
			r.dropped.Add(1)
			continue
		}
		p := packet{due: time.Now().Add(delay), data: append([]byte(nil), buf[:n]...)}
		select {
		case r.queue <- p:
		default:
			r.dropped.Add(1)
		}
	}
}

func (r *router) write() {
	defer r.wg.Done()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		var p packet
		select {
		case <-r.done:
			return
		case p = <-r.queue:
		}
		if wait := time.Until(p.due); wait > 0 {
			t.Reset(wait)
			select {
			case <-r.done:
				return
			case <-t.C:
			}
		}
		if _, err := r.tun.Write(p.data); err == nil {
			r.passed.Add(1)
		}
	}
}

func (r *router) close() {
	close(r.done)
	r.tun.Close()
	r.wg.Wait()
}
