package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// Network namespaces mode.
//
// Three namespaces, made by this process and deleted when it ends:
//
//	peer (D, E)  10.77.1.1 ── veth, netem PeerDelay each way ── 10.77.1.2  mid (LB / relay R)
//	mid          10.77.2.2 ── veth, netem BackDelay each way ── 10.77.2.1  back (A, B)
//
// The mid namespace forwards IP between its two links, so the direct
// setup's D → A path crosses both delays without any user-space hop, as it
// would if the backend were reachable. Each namespace runs one agent: this
// executable re-run under `ip netns exec`. The addresses are private
// (10.77.0.0/16) and exist only inside these namespaces.

// ErrNoNetns is returned (wrapped) when namespaces cannot be made here.
var ErrNoNetns = errors.New("network namespaces unavailable")

type netns struct {
	names []string
}

func runCmd(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func netnsPlace(ctx context.Context, cfg *Config) (*place, func() error, error) {
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, nil, fmt.Errorf("%w: %s not found; install it with `apt-get install -y iproute2`", ErrNoNetns, tool)
		}
	}
	if os.Geteuid() != 0 {
		return nil, nil, fmt.Errorf("%w: creating namespaces needs root (CAP_NET_ADMIN)", ErrNoNetns)
	}
	id := fmt.Sprint(os.Getpid())
	ns := &netns{}
	nsPeer, nsMid, nsBack := "lbbench-"+id+"-peer", "lbbench-"+id+"-mid", "lbbench-"+id+"-back"
	fail := func(err error) (*place, func() error, error) {
		ns.cleanup()
		return nil, nil, err
	}
	for _, n := range []string{nsPeer, nsMid, nsBack} {
		if err := runCmd("ip", "netns", "add", n); err != nil {
			return fail(fmt.Errorf("%w: %v", ErrNoNetns, err))
		}
		ns.names = append(ns.names, n)
	}
	vp, vm, vn, vb := "lbp"+id, "lbm"+id, "lbn"+id, "lbb"+id
	steps := [][]string{
		{"ip", "link", "add", vp, "netns", nsPeer, "type", "veth", "peer", "name", vm, "netns", nsMid},
		{"ip", "link", "add", vn, "netns", nsMid, "type", "veth", "peer", "name", vb, "netns", nsBack},
		{"ip", "-n", nsPeer, "addr", "add", "10.77.1.1/24", "dev", vp},
		{"ip", "-n", nsMid, "addr", "add", "10.77.1.2/24", "dev", vm},
		{"ip", "-n", nsMid, "addr", "add", "10.77.2.2/24", "dev", vn},
		{"ip", "-n", nsBack, "addr", "add", "10.77.2.1/24", "dev", vb},
	}
	for _, n := range []string{nsPeer, nsMid, nsBack} {
		steps = append(steps, []string{"ip", "-n", n, "link", "set", "lo", "up"})
	}
	steps = append(steps,
		[]string{"ip", "-n", nsPeer, "link", "set", vp, "up"},
		[]string{"ip", "-n", nsMid, "link", "set", vm, "up"},
		[]string{"ip", "-n", nsMid, "link", "set", vn, "up"},
		[]string{"ip", "-n", nsBack, "link", "set", vb, "up"},
		[]string{"ip", "-n", nsPeer, "route", "add", "default", "via", "10.77.1.2"},
		[]string{"ip", "-n", nsBack, "route", "add", "default", "via", "10.77.2.2"},
		[]string{"ip", "netns", "exec", nsMid, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"},
	)
	// netem on both ends of each link: the delay applies to each
	// direction. The large limit keeps netem's queue from dropping packets
	// of a bulk transfer (its default is 1,000 packets).
	for _, st := range steps {
		if err := runCmd(st...); err != nil {
			return fail(fmt.Errorf("%w: %v", ErrNoNetns, err))
		}
	}
	for _, q := range []struct {
		ns, dev string
		delay   time.Duration
	}{{nsPeer, vp, cfg.PeerDelay}, {nsMid, vm, cfg.PeerDelay}, {nsMid, vn, cfg.BackDelay}, {nsBack, vb, cfg.BackDelay}} {
		if q.delay <= 0 {
			continue
		}
		if err := runCmd("ip", "netns", "exec", q.ns, "tc", "qdisc", "add", "dev", q.dev, "root", "netem", "delay", q.delay.String(), "limit", "1000000"); err != nil {
			return fail(fmt.Errorf("%w: tc netem is not available in this kernel (module sch_netem); "+
				"-peer-delay 0 -back-delay 0 runs the namespaces without delay: %v", ErrNoNetns, err))
		}
	}
	var agents []Agent
	closeAgents := func() {
		for _, a := range agents {
			a.Close()
		}
	}
	for _, n := range [][2]string{{"peer", nsPeer}, {"mid", nsMid}, {"back", nsBack}} {
		a, err := startChild(n[0], []string{"ip", "netns", "exec", n[1]})
		if err != nil {
			closeAgents()
			return fail(err)
		}
		agents = append(agents, a)
	}
	pl := &place{
		peer: agents[0], mid: agents[1], back: agents[2],
		peerIP: "10.77.1.1", midIP: "0.0.0.0", backIP: "10.77.2.1",
		public: true,
	}
	cfg.logf("netns: %s, %s, %s; peer↔mid %v, mid↔back %v one way", nsPeer, nsMid, nsBack, cfg.PeerDelay, cfg.BackDelay)
	return pl, func() error {
		closeAgents()
		return ns.cleanup()
	}, nil
}

// cleanup deletes the namespaces (and with them the veth pairs).
func (ns *netns) cleanup() error {
	var first error
	for _, n := range ns.names {
		if err := runCmd("ip", "netns", "del", n); err != nil && first == nil {
			first = err
		}
	}
	ns.names = nil
	return first
}
