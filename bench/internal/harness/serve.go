package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/libp2p-balancer/libp2p-balancer/internal/crowd"
)

// ServeConfig is a run of the serve mode (go run ./bench -serve): the
// balancer as operators run it, `balancer serve` built from cmd/balancer in
// a process of its own with nothing configured but the allowed backend, one
// backend (the library, on a host with the commands' default limits) and a
// crowd of plain go-libp2p client peers in this process, which hold idle
// echo streams through it.
type ServeConfig struct {
	Transport string        // "tcp" or "quic": how the peers and the backend reach the balancer
	Peers     int           // client peers, each its own host
	Streams   int           // idle streams held at once, spread evenly over the peers
	Hold      time.Duration // how long the streams stay held, idle, before they are echoed and closed
	Timeout   time.Duration
	Log       io.Writer
}

// DefaultServeConfig is issue 12's idle workload: 20,000 streams from 1,000
// peers.
func DefaultServeConfig() ServeConfig {
	return ServeConfig{Transport: "tcp", Peers: 1000, Streams: 20000, Timeout: 20 * time.Minute}
}

// ServeReport is what the serve mode measured in the balancer's process:
// its RSS (from /proc), and its heap and goroutines (from its own
// /metrics), with the peers connected and no stream, then with every
// stream held, each taken just after a garbage collection.
type ServeReport struct {
	Started             time.Time
	Machine             string
	Transport           string
	Peers, Connected    int
	Reconnected         int     // connections the peers made again (crowd.Reconnect)
	Streams, Held       int     // asked for; counted in flight by the balancer
	Echoed              int     // streams whose payload came back whole at the end
	OpenSeconds         float64 // time to open and echo every stream
	Base, Loaded        ProcSample
	RSSPerStream        float64 // bytes
	HeapPerStream       float64 // bytes
	StackPerStream      float64 // bytes
	GoroutinesPerStream float64
	HeldFor             string             `json:",omitempty"` // -hold
	AfterHold           *ProcSample        `json:",omitempty"` // the process at the end of the hold (no GC waited for)
	Refusals            map[string]float64 // libp2p_balancer_resource_refusals_total and streams_refused_total, by series
	Limits              string             // the "limits in force" line the balancer logged at start
	Errors              []string           `json:",omitempty"`
}

// ProcSample is one look at the balancer's process.
type ProcSample struct {
	RSS        float64 // bytes, VmRSS
	HeapInuse  float64 // go_memstats_heap_inuse_bytes
	StackInuse float64 // go_memstats_stack_inuse_bytes: goroutine stacks, in RSS but not in the heap
	Goroutines float64 // go_goroutines
	Inbound    float64 // libp2p_balancer_streams_active{direction="inbound"}
	GCs        float64 // go_gc_duration_seconds_count
	NoGC       bool    `json:",omitempty"` // no collection came within the wait: the heap figure includes garbage
}

func (c *ServeConfig) logf(format string, args ...any) {
	if c.Log != nil {
		fmt.Fprintf(c.Log, "serve: "+format+"\n", args...)
	}
}

// RunServe runs the serve mode. The balancer's process, the backend and the
// peers are gone when it returns.
func RunServe(ctx context.Context, cfg ServeConfig) (*ServeReport, error) {
	if cfg.Peers < 1 || cfg.Streams < cfg.Peers {
		return nil, errors.New("serve: need at least one peer and one stream per peer")
	}
	if cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Timeout)
		defer cancel()
	}
	cfg.logf("building cmd/balancer")
	if _, err := serveBinary(); err != nil {
		return nil, err
	}
	beKey, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		return nil, err
	}
	beID, err := peer.IDFromPrivateKey(beKey)
	if err != nil {
		return nil, err
	}
	admin, err := freeAddr()
	if err != nil {
		return nil, err
	}
	stderr := &limitsLine{w: io.Discard}
	if cfg.Log != nil {
		stderr.w = &prefixWriter{prefix: "[balancer] ", w: cfg.Log}
	}
	lbAgent, lbInfo, err := startServe(ctx, "balancer", cfg.Transport, stderr,
		"--admin", admin, "--allow", beID.String()+"="+string(ProtoHold))
	if err != nil {
		return nil, err
	}
	defer lbAgent.Close()
	lb := &lbInfo
	cmd := lbAgent.cmd

	machine := fmt.Sprintf("%s/%s, %d CPUs, GOMAXPROCS %d, %s", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version())
	if load, err := os.ReadFile("/proc/loadavg"); err == nil {
		machine += ", load average " + strings.Join(strings.Fields(string(load))[:3], " ")
	}
	rep := &ServeReport{Started: time.Now().UTC(), Machine: machine, Transport: cfg.Transport, Peers: cfg.Peers, Streams: cfg.Streams}
	keyBytes, err := crypto.MarshalPrivateKey(beKey)
	if err != nil {
		return nil, err
	}
	be, err := startChild("backend", nil)
	if err != nil {
		return nil, err
	}
	defer be.Close()
	if _, err := be.Do(ctx, Request{Op: "serve-backend", Name: "backend", Key: keyBytes, Target: lb, Protos: []string{string(ProtoHold)}}); err != nil {
		return nil, fmt.Errorf("backend not registered: %w", err)
	}

	cfg.logf("starting %d peers over %s", cfg.Peers, cfg.Transport)
	c, err := crowd.NewOver(cfg.Peers, cfg.Transport)
	defer c.Close()
	if err != nil {
		return nil, err
	}
	if err := c.Connect(ctx, *lb, 64); err != nil {
		return nil, err
	}
	// Connections closed right after their handshake (see
	// crowd.Reconnect) show within a moment; a real client dials again.
	time.Sleep(time.Second)
	rep.Reconnected, err = c.Reconnect(ctx, *lb, 16, 5)
	if err != nil {
		return nil, err
	}
	rep.Connected = c.Connected(lb.ID)
	cfg.logf("%d peers connected; waiting for a garbage collection in the balancer", rep.Connected)
	rep.Base, err = sampleAfterGC(ctx, cmd.Process.Pid, admin)
	if err != nil {
		return nil, err
	}
	perPeer := cfg.Streams / cfg.Peers
	start := time.Now()
	held, err := c.Hold(ctx, lb.ID, ProtoHold, perPeer, 2, 1, 64)
	if err != nil {
		rep.Errors = append(rep.Errors, err.Error())
		rep.Refusals = refusals(admin)
		return rep, err
	}
	rep.OpenSeconds = time.Since(start).Seconds()
	cfg.logf("%d streams held in %.1f s; waiting for a garbage collection in the balancer", len(held), rep.OpenSeconds)
	rep.Loaded, err = sampleAfterGC(ctx, cmd.Process.Pid, admin)
	if err != nil {
		crowd.Reset(held)
		return rep, err
	}
	rep.Held = int(rep.Loaded.Inbound)
	n := float64(len(held))
	rep.RSSPerStream = (rep.Loaded.RSS - rep.Base.RSS) / n
	rep.HeapPerStream = (rep.Loaded.HeapInuse - rep.Base.HeapInuse) / n
	rep.StackPerStream = (rep.Loaded.StackInuse - rep.Base.StackInuse) / n
	rep.GoroutinesPerStream = (rep.Loaded.Goroutines - rep.Base.Goroutines) / n
	rep.Refusals = refusals(admin)
	rep.Limits = stderr.line()
	if cfg.Hold > 0 {
		cfg.logf("holding the %d streams for %v", len(held), cfg.Hold)
		select {
		case <-ctx.Done():
			crowd.Reset(held)
			return rep, ctx.Err()
		case <-time.After(cfg.Hold):
		}
		rep.Held = len(held)
		if s, err := sampleProc(cmd.Process.Pid, admin); err == nil {
			rep.AfterHold = &s
			rep.Held = int(s.Inbound)
		}
		rep.Refusals = refusals(admin)
		rep.HeldFor = cfg.Hold.String()
	}
	ok, err := crowd.FinishAll(ctx, held, 256)
	rep.Echoed = ok
	if err != nil {
		rep.Errors = append(rep.Errors, fmt.Sprintf("%d of %d streams echoed whole; first failure: %v", ok, len(held), err))
		return rep, err
	}
	return rep, nil
}

// sampleAfterGC waits (at most 2.5 minutes: the Go runtime collects at
// least every 2) for the balancer's next garbage collection, so that its
// heap figure is the live heap rather than whatever garbage is waiting, and
// samples the process.
func sampleAfterGC(ctx context.Context, pid int, admin string) (ProcSample, error) {
	first, err := sampleProc(pid, admin)
	if err != nil {
		return first, err
	}
	var s ProcSample
	err = poll(ctx, 150*time.Second, func() bool {
		s, err = sampleProc(pid, admin)
		return err != nil || s.GCs > first.GCs
	})
	if err != nil && s.GCs <= first.GCs {
		s.NoGC = true
		err = nil
	}
	return s, err
}

func sampleProc(pid int, admin string) (ProcSample, error) {
	m, err := scrape(admin)
	if err != nil {
		return ProcSample{}, err
	}
	rss, err := vmRSS(pid)
	if err != nil {
		return ProcSample{}, err
	}
	return ProcSample{
		RSS:        rss,
		HeapInuse:  m["go_memstats_heap_inuse_bytes"],
		StackInuse: m["go_memstats_stack_inuse_bytes"],
		Goroutines: m["go_goroutines"],
		Inbound:    m[`libp2p_balancer_streams_active{direction="inbound"}`],
		GCs:        m["go_gc_duration_seconds_count"],
	}, nil
}

// scrape reads the balancer's /metrics into a map from series to value.
func scrape(admin string) (map[string]float64, error) {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out, sc.Err()
}

// refusals returns the balancer's refusal counters that are not zero.
func refusals(admin string) map[string]float64 {
	m, err := scrape(admin)
	if err != nil {
		return map[string]float64{"scrape failed: " + err.Error(): 0}
	}
	out := map[string]float64{}
	for k, v := range m {
		if v != 0 && (strings.HasPrefix(k, "libp2p_balancer_resource_refusals_total") || strings.HasPrefix(k, "libp2p_balancer_streams_refused_total")) {
			out[k] = v
		}
	}
	return out
}

func vmRSS(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 64)
			return kb * 1024, err
		}
	}
	return 0, errors.New("no VmRSS in /proc status")
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// poll checks cond every 200 ms until it holds, timeout passes, or ctx
// ends.
func poll(ctx context.Context, timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %v", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil
}

// limitsLine passes the balancer's standard error on and keeps its
// "limits in force" log line.
type limitsLine struct {
	w   io.Writer
	buf []byte

	mu   sync.Mutex
	seen string
}

func (l *limitsLine) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seen == "" {
		l.buf = append(l.buf, p...)
		for {
			i := strings.IndexByte(string(l.buf), '\n')
			if i < 0 {
				break
			}
			line := string(l.buf[:i])
			l.buf = l.buf[i+1:]
			if strings.Contains(line, "limits in force") {
				l.seen = line
				l.buf = nil
				break
			}
		}
		if len(l.buf) > 64<<10 {
			l.buf = nil
		}
	}
	return l.w.Write(p)
}

func (l *limitsLine) line() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seen
}

// Markdown writes the serve mode's figures as a table.
func (r *ServeReport) Markdown(w io.Writer, command string) {
	fmt.Fprintf(w, "## `balancer serve` with its defaults, %d peers, %d idle streams (%s)\n\n", r.Peers, r.Streams, r.Transport)
	fmt.Fprintf(w, "`%s` on %s, %s.\n\n", command, r.Machine, r.Started.Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(w, "| | peers connected, no stream | %d streams held |\n|---|---|---|\n", r.Streams)
	gc := func(s ProcSample) string {
		if s.NoGC {
			return " (no GC seen)"
		}
		return ""
	}
	fmt.Fprintf(w, "| RSS | %.1f MiB | %.1f MiB |\n", r.Base.RSS/(1<<20), r.Loaded.RSS/(1<<20))
	fmt.Fprintf(w, "| heap in use | %.1f MiB%s | %.1f MiB%s |\n", r.Base.HeapInuse/(1<<20), gc(r.Base), r.Loaded.HeapInuse/(1<<20), gc(r.Loaded))
	fmt.Fprintf(w, "| goroutine stacks | %.1f MiB | %.1f MiB |\n", r.Base.StackInuse/(1<<20), r.Loaded.StackInuse/(1<<20))
	fmt.Fprintf(w, "| goroutines | %.0f | %.0f |\n", r.Base.Goroutines, r.Loaded.Goroutines)
	fmt.Fprintf(w, "| inbound streams in flight | %.0f | %.0f |\n\n", r.Base.Inbound, r.Loaded.Inbound)
	fmt.Fprintf(w, "| per forwarded stream | value | target |\n|---|---|---|\n")
	fmt.Fprintf(w, "| RSS | %.1f KiB | ≤ 16 KiB |\n", r.RSSPerStream/1024)
	fmt.Fprintf(w, "| heap in use | %.1f KiB | ≤ 16 KiB |\n", r.HeapPerStream/1024)
	fmt.Fprintf(w, "| goroutine stacks (part of RSS, not of the heap) | %.1f KiB | |\n", r.StackPerStream/1024)
	fmt.Fprintf(w, "| goroutines | %.2f | 2 |\n\n", r.GoroutinesPerStream)
	fmt.Fprintf(w, "%d of %d peers connected; %d streams opened and echoed in %.1f s; %d echoed whole at the end.\n", r.Connected, r.Peers, r.Held, r.OpenSeconds, r.Echoed)
	if r.AfterHold != nil {
		fmt.Fprintf(w, "Held idle for %s: %.0f streams still in flight at the balancer at the end, RSS %.1f MiB, then echoed (count above).\n", r.HeldFor, r.AfterHold.Inbound, r.AfterHold.RSS/(1<<20))
	}
	if r.Reconnected > 0 {
		fmt.Fprintf(w, "%d connections were closed by the balancer's host right after their handshake and dialled again (go-libp2p's QUIC accept queue holds 16; see docs/performance.md).\n", r.Reconnected)
	}
	if len(r.Refusals) == 0 {
		fmt.Fprintln(w, "No refusal counted.")
	} else {
		for k, v := range r.Refusals {
			fmt.Fprintf(w, "- `%s` %.0f\n", k, v)
		}
	}
	if r.Limits != "" {
		fmt.Fprintf(w, "\nThe balancer's start-up line:\n\n    %s\n", r.Limits)
	}
	for _, e := range r.Errors {
		fmt.Fprintf(w, "\nFailed: %s\n", e)
	}
}

// JSON writes the report as indented JSON.
func (r *ServeReport) JSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}
