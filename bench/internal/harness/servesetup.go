package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// The setups that run the balancer as operators do (issue 13: "the
// balancer in its own process as `cmd/balancer serve`"): `balancer serve`
// built from cmd/balancer, in a process of its own, with its defaults
// (wire.Limits, the connection manager, metrics, logging) and only the
// flags a deployment of this shape needs: --allow for the backend, and
// --dial-loopback for serve-out, whose targets listen on loopback.
// Everything else is as in lb-in and lb-out.
const (
	ServeIn  = "serve-in"  // D → LB → A, LB being `balancer serve`
	ServeOut = "serve-out" // B → LB → E, LB being `balancer serve --dial-loopback`
)

// IsServe reports whether setup runs `balancer serve` (no idle workload:
// that is the serve mode's).
func IsServe(setup string) bool { return setup == ServeIn || setup == ServeOut }

// serveBinary builds cmd/balancer once per bench process.
var serveBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "bench-balancer-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "balancer")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/libp2p-balancer/libp2p-balancer/cmd/balancer").CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build cmd/balancer: %v\n%s", err, out)
	}
	return bin, nil
})

// serveAgent stands for a `balancer serve` process among the setup's
// agents: it answers "stats" with the process's CPU time from /proc, and
// has no other op (the process is configured by its flags).
type serveAgent struct {
	label string
	cmd   *exec.Cmd
	dir   string
	done  chan struct{}
}

// startServe starts `balancer serve` on a loopback address of transport tr
// with a fresh identity and the flags in args, its stderr going to
// stderr, and returns it with the balancer's address. label names its
// process in reports.
func startServe(ctx context.Context, label, tr string, stderr io.Writer, args ...string) (*serveAgent, peer.AddrInfo, error) {
	bin, err := serveBinary()
	if err != nil {
		return nil, peer.AddrInfo{}, err
	}
	dir, err := os.MkdirTemp("", "bench-serve-")
	if err != nil {
		return nil, peer.AddrInfo{}, err
	}
	listen := "/ip4/127.0.0.1/tcp/0"
	if tr == "quic" {
		listen = "/ip4/127.0.0.1/udp/0/quic-v1"
	}
	args = append([]string{"serve", "--listen", listen, "--identity", filepath.Join(dir, "lb.key")}, args...)
	cmd := exec.Command(bin, args...)
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, peer.AddrInfo{}, err
	}
	a := &serveAgent{label: label, cmd: cmd, dir: dir, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(a.done) }()
	lines := bufio.NewScanner(stdout)
	got := make(chan string, 1)
	go func() {
		if lines.Scan() {
			got <- lines.Text()
		}
		close(got)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	var line string
	select {
	case l, ok := <-got:
		if !ok {
			a.Close()
			return nil, peer.AddrInfo{}, errors.New("balancer serve printed no address")
		}
		line = l
	case <-ctx.Done():
		a.Close()
		return nil, peer.AddrInfo{}, ctx.Err()
	case <-time.After(30 * time.Second):
		a.Close()
		return nil, peer.AddrInfo{}, errors.New("balancer serve printed no address in 30 s")
	}
	info, err := peer.AddrInfoFromString(strings.TrimSpace(line))
	if err != nil {
		a.Close()
		return nil, peer.AddrInfo{}, fmt.Errorf("balancer serve printed %q: %w", line, err)
	}
	return a, *info, nil
}

func (a *serveAgent) Proc() string { return a.label }

func (a *serveAgent) Do(_ context.Context, r Request) (Response, error) {
	switch r.Op {
	case "stats":
		cpu, err := procCPU(a.cmd.Process.Pid)
		if err != nil {
			return Response{}, err
		}
		return Response{Stats: &Stats{CPU: cpu}}, nil
	case "profile-start", "profile-stop", "close":
		return Response{}, nil // not profiled; closed by Close
	}
	return Response{}, fmt.Errorf("%s: balancer serve has no op %q", a.label, r.Op)
}

// Close stops the process as an operator would (SIGINT, then its drain),
// killing it after 30 s.
func (a *serveAgent) Close() error {
	_ = a.cmd.Process.Signal(os.Interrupt)
	select {
	case <-a.done:
	case <-time.After(30 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
	}
	return os.RemoveAll(a.dir)
}

// procCPU returns a process's user+system CPU seconds from /proc/PID/stat.
func procCPU(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	// utime and stime are fields 14 and 15, the 12th and 13th after ")".
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: utime %q stime %q", pid, f[11], f[12])
	}
	return (ut + st) / clockTicks, nil
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times: 100 on every
// Linux architecture Go runs on.
const clockTicks = 100

// buildServe starts ServeIn or ServeOut in s.
func (pl *place) buildServe(ctx context.Context, s *setup, prefix string) error {
	if pl.public {
		return errors.New("the serve setups run on this host's loopback, not in -netns")
	}
	tr, name := s.transport, s.name
	beKey, beID, err := newKey()
	if err != nil {
		return err
	}
	var extra []string
	if name == ServeOut {
		extra = append(extra, "--dial-loopback")
	}
	args := append([]string{"--admin", "off", "--allow", beID.String() + "=" + strings.Join(protoStrings(), ",")}, extra...)
	lbAgent, lb, err := startServe(ctx, "serve-"+tr+"-"+name, tr, io.Discard, args...)
	if err != nil {
		return err
	}
	s.closers = append(s.closers, func() { lbAgent.Close() })
	be := prefix + "A"
	if name == ServeOut {
		be = prefix + "B"
	}
	if _, err := pl.mkHost(ctx, pl.back, HostSpec{Name: be, Transport: tr, Key: beKey, Limits: LimitsLink, LinkPeers: []peer.ID{lb.ID}}, pl.backIP); err != nil {
		return err
	}
	if err := pl.do(ctx, pl.back, Request{Op: "backend", Name: be, Target: &lb}); err != nil {
		return err
	}
	s.mid, s.measure = lbAgent, lbAgent
	s.agents = []Agent{pl.peer, lbAgent, pl.back}
	s.addPair = pl.balancerPairs(prefix, tr, lb, be, name == ServeOut)
	return nil
}
