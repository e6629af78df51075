// Package harness is the benchmark harness of libp2p-balancer: it builds a
// direct stream, a circuit relay v2 path and the balancer's inbound and
// outbound paths on loopback (or across network namespaces with netem
// delay), runs the same workloads on each, and reports medians and ratios.
// cmd bench (go run ./bench) is its command line; docs/performance.md
// explains the figures.
package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"
)

// Workloads, in the order they run.
const (
	Bulk     = "bulk"
	Parallel = "parallel"
	RR       = "rr"
	RRConc   = "rr32" // request/response, RRWorkers streams at a time
	Idle     = "idle"
	Reg      = "reg"
)

// AllWorkloads lists every workload.
var AllWorkloads = []string{Bulk, Parallel, RR, RRConc, Idle, Reg}

// Config is one benchmark run.
type Config struct {
	Transports []string // "tcp", "quic"
	Setups     []string // see AllSetups
	Workloads  []string // see AllWorkloads
	Runs       int      // each figure is the median of Runs runs

	BulkSize        int64 // one stream, one way
	ParStreams      int
	ParSize         int64 // per stream
	RRCount         int   // sequential streams per run
	RRSize          int   // bytes each way
	RRWorkers       int   // rr32: streams open at once
	IdleStreams     int
	IdlePerConnQUIC int // streams per connection over QUIC (go-libp2p caps at 256)
	IdleWorkers     int // concurrent opens
	RegRoutes       int
	RegStep         int
	RegLookups      int // request/response streams per lookup sample

	// Separate runs the middle node (balancer or relay) in a child process
	// so its own CPU and memory are measured apart.
	Separate bool
	// Netns runs peers, middle and backends in three network namespaces
	// joined by veth pairs with netem delay.
	Netns     bool
	PeerDelay time.Duration // one way, peer ↔ middle
	BackDelay time.Duration // one way, middle ↔ backend

	Smoke      bool   // tiny sizes: say so in the report
	ProfileDir string // CPU profiles of the first run of each workload
	Timeout    time.Duration
	Log        io.Writer // progress lines; nil for none
}

// DefaultConfig is what `go run ./bench` measures: the workloads at
// full size, three runs each.
func DefaultConfig() Config {
	return Config{
		Transports: []string{"tcp", "quic"},
		Setups:     AllSetups,
		Workloads:  AllWorkloads,
		Runs:       3,
		BulkSize:   512 << 20,
		ParStreams: 32, ParSize: 32 << 20,
		RRCount: 2000, RRSize: 64, RRWorkers: 32,
		IdleStreams: 10000, IdlePerConnQUIC: 250, IdleWorkers: 32,
		RegRoutes: 250, RegStep: 50, RegLookups: 300,
		PeerDelay: 20 * time.Millisecond, BackDelay: time.Millisecond,
		Timeout: 45 * time.Minute,
	}
}

// SmokeConfig runs every setup and workload at tiny sizes, for CI.
func SmokeConfig() Config {
	c := DefaultConfig()
	c.Smoke = true
	c.Runs = 1
	c.BulkSize = 1 << 20
	c.ParStreams, c.ParSize = 4, 256<<10
	c.RRCount = 20
	c.IdleStreams, c.IdlePerConnQUIC = 60, 25
	c.RegRoutes, c.RegStep, c.RegLookups = 20, 10, 5
	c.Timeout = 2 * time.Minute
	return c
}

func (c *Config) logf(format string, args ...any) {
	if c.Log != nil {
		fmt.Fprintf(c.Log, format+"\n", args...)
	}
}

// Run runs the benchmark and returns its report. Every host, child process
// and namespace it started is gone when it returns.
func Run(ctx context.Context, cfg Config) (rep *Report, err error) {
	if cfg.Runs < 1 {
		cfg.Runs = 1
	}
	if cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Timeout)
		defer cancel()
	}
	pl, cleanup, err := newPlace(ctx, &cfg)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := cleanup(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if cfg.ProfileDir != "" {
		if err := os.MkdirAll(cfg.ProfileDir, 0o755); err != nil {
			return nil, err
		}
	}
	rep = newReport(&cfg)
	for _, tr := range cfg.Transports {
		if err := runTransport(ctx, &cfg, pl, tr, rep); err != nil {
			return rep, err
		}
	}
	rep.finish()
	if len(rep.Errors) > 0 {
		return rep, fmt.Errorf("%d failure(s), first: %s", len(rep.Errors), rep.Errors[0])
	}
	return rep, nil
}

// newPlace starts the agents: all in this process, the middle node in a
// child, or three children in network namespaces.
func newPlace(ctx context.Context, cfg *Config) (*place, func() error, error) {
	if cfg.Netns {
		return netnsPlace(ctx, cfg)
	}
	local := newLocalAgent()
	pl := &place{peer: local, mid: local, back: local, peerIP: "127.0.0.1", midIP: "127.0.0.1", backIP: "127.0.0.1"}
	agents := []Agent{local}
	if cfg.Separate {
		child, err := startChild("mid", nil)
		if err != nil {
			return nil, nil, fmt.Errorf("starting the middle node's process: %w", err)
		}
		pl.mid = child
		agents = append(agents, child)
	}
	return pl, func() error {
		for _, a := range agents {
			a.Close()
		}
		return nil
	}, nil
}

func runTransport(ctx context.Context, cfg *Config, pl *place, tr string, rep *Report) error {
	var setups []*setup
	defer func() {
		// The hosts of all setups live in the agents; closing the agents
		// at the end closes them, but free them now so the next transport
		// starts clean.
		for _, s := range setups {
			s.close()
		}
		for _, a := range []Agent{pl.peer, pl.mid, pl.back} {
			_, _ = a.Do(context.Background(), Request{Op: "close"})
		}
	}()
	for _, name := range cfg.Setups {
		cfg.logf("%s: building %s", tr, name)
		s, err := pl.build(ctx, name, tr)
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			rep.fail(fmt.Errorf("%s %s: setting up: %w", tr, name, err))
			continue
		}
		setups = append(setups, s)
	}
	for _, wl := range []string{Bulk, Parallel, RR, RRConc, Idle} {
		if !slices.Contains(cfg.Workloads, wl) {
			continue
		}
		failed := map[string]bool{}
		for run := range cfg.Runs {
			// Setups take turns within each run, so that load from other
			// users of the machine falls on all of them alike.
			for _, s := range setups {
				if failed[s.name] {
					continue
				}
				if wl == Idle && IsServe(s.name) {
					// Idle memory of `balancer serve` is the serve
					// mode's job (-serve), with peers as real traffic
					// has them.
					continue
				}
				cfg.logf("%s: %s run %d/%d on %s", tr, wl, run+1, cfg.Runs, s.name)
				m, err := measure(ctx, cfg, s, wl, run)
				if err != nil {
					if ctx.Err() != nil {
						return err
					}
					// One failure does not lose the rest of the report.
					cfg.logf("%s: %s on %s failed: %v", tr, wl, s.name, err)
					rep.fail(fmt.Errorf("%s %s %s: %w", tr, s.name, wl, err))
					failed[s.name] = true
					continue
				}
				rep.add(tr, s.name, m)
			}
		}
	}
	if slices.Contains(cfg.Workloads, Reg) {
		var lb *setup
		for _, s := range setups {
			if s.name == LBIn {
				lb = s
			}
		}
		if lb == nil {
			cfg.logf("%s: building %s for the registration workload", tr, LBIn)
			var err error
			if lb, err = pl.build(ctx, LBIn, tr); err != nil {
				rep.fail(fmt.Errorf("%s registration: %w", tr, err))
				return nil
			}
		}
		cfg.logf("%s: registration on %s", tr, LBIn)
		for run := range cfg.Runs {
			m, err := registration(ctx, cfg, lb)
			if err != nil {
				if ctx.Err() != nil {
					return err
				}
				rep.fail(fmt.Errorf("%s registration (run %d): %w", tr, run+1, err))
				break
			}
			rep.add(tr, LBIn, m)
		}
	}
	return nil
}

// sample is a process snapshot per distinct process.
type sample map[string]Stats

func takeSample(ctx context.Context, procs []Agent, gc bool) (sample, error) {
	out := sample{}
	for _, a := range procs {
		res, err := a.Do(ctx, Request{Op: "stats", GC: gc})
		if err != nil {
			return nil, err
		}
		out[a.Proc()] = *res.Stats
	}
	return out, nil
}

func cpuDelta(before, after sample, proc string) float64 {
	if proc != "" {
		return after[proc].CPU - before[proc].CPU
	}
	var d float64
	for p := range after {
		d += after[p].CPU - before[p].CPU
	}
	return d
}

// measure runs one workload once on setup s and returns its metrics.
func measure(ctx context.Context, cfg *Config, s *setup, wl string, run int) (map[string]float64, error) {
	if wl == Idle {
		return idle(ctx, cfg, s, run)
	}
	procs := s.procs()
	var w *Work
	switch wl {
	case Bulk:
		w = &Work{Kind: "bulk", Size: cfg.BulkSize}
	case Parallel:
		w = &Work{Kind: "parallel", Streams: cfg.ParStreams, Size: cfg.ParSize}
	case RR:
		w = &Work{Kind: "rr", Count: cfg.RRCount, Size: int64(cfg.RRSize)}
	case RRConc:
		w = &Work{Kind: "rr", Count: cfg.RRCount, Size: int64(cfg.RRSize), Workers: cfg.RRWorkers}
	default:
		return nil, fmt.Errorf("unknown workload %q", wl)
	}
	profiling := cfg.ProfileDir != "" && run == 0
	if profiling {
		for _, a := range procs {
			path := filepath.Join(cfg.ProfileDir, fmt.Sprintf("%s-%s-%s-%s.pprof", s.transport, s.name, wl, a.Proc()))
			if abs, err := filepath.Abs(path); err == nil {
				path = abs
			}
			if _, err := a.Do(ctx, Request{Op: "profile-start", Path: path}); err != nil {
				return nil, err
			}
		}
		defer func() {
			for _, a := range procs {
				_, _ = a.Do(ctx, Request{Op: "profile-stop"})
			}
		}()
	}
	before, err := takeSample(ctx, procs, false)
	if err != nil {
		return nil, err
	}
	p := s.pairs[0]
	res, err := p.agent.Do(ctx, Request{Op: "run", Name: p.host, Via: p.via, Target: &p.target, Work: w})
	if err != nil {
		return nil, err
	}
	after, err := takeSample(ctx, procs, false)
	if err != nil {
		return nil, err
	}
	r := res.Result
	m := map[string]float64{}
	midProc := ""
	if s.mid != nil && s.mid.Proc() != "self" {
		midProc = s.mid.Proc()
	}
	switch wl {
	case Bulk, Parallel:
		gb := float64(r.Bytes) / 1e9
		m[wl+"_MBps"] = float64(r.Bytes) / 1e6 / r.Seconds
		m[wl+"_cpu_s_per_GB"] = cpuDelta(before, after, "") / gb
		if midProc != "" {
			m[wl+"_mid_cpu_s_per_GB"] = cpuDelta(before, after, midProc) / gb
		}
	case RR, RRConc:
		m[wl+"_streams_per_s"] = float64(r.Count) / r.Seconds
		m[wl+"_p50_ms"] = r.P50ms
		m[wl+"_p99_ms"] = r.P99ms
		m[wl+"_cpu_ms_per_stream"] = cpuDelta(before, after, "") * 1e3 / float64(r.Count)
		if midProc != "" {
			m[wl+"_mid_cpu_ms_per_stream"] = cpuDelta(before, after, midProc) * 1e3 / float64(r.Count)
		}
	}
	return m, nil
}

// idle opens cfg.IdleStreams hold streams at once and reports the heap,
// stack and goroutines they cost in the measured process.
func idle(ctx context.Context, cfg *Config, s *setup, run int) (map[string]float64, error) {
	total := cfg.IdleStreams
	per := total
	if s.transport == "quic" && cfg.IdlePerConnQUIC > 0 {
		per = cfg.IdlePerConnQUIC
	}
	k := (total + per - 1) / per
	if err := s.grow(ctx, k); err != nil {
		return nil, err
	}
	mp := []Agent{s.measure}
	if err := settle(ctx, s.measure); err != nil {
		return nil, err
	}
	base, err := takeSample(ctx, mp, true)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	left := total
	var openErr error
	opened := []pair{}
	for i := 0; i < k && left > 0; i++ {
		n := min(per, left)
		p := s.pairs[i]
		opened = append(opened, p)
		if _, err := p.agent.Do(ctx, Request{Op: "run", Name: p.host, Via: p.via, Target: &p.target, Work: &Work{Kind: "idle-open", Streams: n, Workers: cfg.IdleWorkers}}); err != nil {
			openErr = err
			break
		}
		left -= n
	}
	openTime := time.Since(start)
	var held sample
	if openErr == nil {
		held, err = takeSample(ctx, mp, true)
		if err == nil && cfg.ProfileDir != "" && run == 0 {
			// What the held streams keep on the heap, where it is measured.
			path, _ := filepath.Abs(filepath.Join(cfg.ProfileDir, fmt.Sprintf("%s-%s-idle-heap-%s.pprof", s.transport, s.name, s.measure.Proc())))
			_, err = s.measure.Do(ctx, Request{Op: "heap-profile", Path: path})
		}
	}
	for _, p := range opened {
		if _, cerr := p.agent.Do(ctx, Request{Op: "run", Name: p.host, Via: p.via, Target: &p.target, Work: &Work{Kind: "idle-close", Workers: cfg.IdleWorkers}}); cerr != nil && openErr == nil {
			openErr = cerr
		}
	}
	if openErr != nil {
		return nil, openErr
	}
	if err != nil {
		return nil, err
	}
	if err := settle(ctx, s.measure); err != nil {
		return nil, err
	}
	b, h := base[s.measure.Proc()], held[s.measure.Proc()]
	n := float64(total)
	return map[string]float64{
		"idle_bytes_per_stream":      (float64(h.HeapInuse+h.StackInuse) - float64(b.HeapInuse+b.StackInuse)) / n,
		"idle_heap_per_stream":       (float64(h.HeapInuse) - float64(b.HeapInuse)) / n,
		"idle_goroutines_per_stream": float64(h.Goroutines-b.Goroutines) / n,
		"idle_open_per_s":            n / openTime.Seconds(),
	}, nil
}

// settle waits until the process of a has no forwarded stream in flight and
// its goroutine count has stopped falling, for at most 15 seconds.
func settle(ctx context.Context, a Agent) error {
	deadline := time.Now().Add(15 * time.Second)
	last := -1
	for time.Now().Before(deadline) {
		res, err := a.Do(ctx, Request{Op: "stats"})
		if err != nil {
			return err
		}
		st := res.Stats
		if st.Active == 0 && st.Goroutines == last {
			return nil
		}
		last = st.Goroutines
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return nil
}

// registration grows the routes of lb-in's backend to cfg.RegRoutes in
// steps of cfg.RegStep, one routing request per step carrying every route
// so far (as the backend library does), extends them all with one more
// request, and samples request/response latency through the balancer at
// each size to show that lookups stay flat. It releases the routes at the
// end.
func registration(ctx context.Context, cfg *Config, s *setup) (map[string]float64, error) {
	if cfg.RegStep <= 0 {
		cfg.RegStep = cfg.RegRoutes
	}
	protos := make([]string, cfg.RegRoutes)
	for i := range protos {
		// Short IDs: every route is advertised in the balancer's identify
		// message, whose 4 KiB budget (balancer.IdentifyBudget) holds
		// about 300 IDs of this length besides the host's own.
		protos[i] = fmt.Sprintf("/r/%05d", i)
	}
	back := s.pl.back
	p := s.pairs[0]
	lookup := func() (*Result, error) {
		res, err := p.agent.Do(ctx, Request{Op: "run", Name: p.host, Via: p.via, Target: &p.target, Work: &Work{Kind: "rr", Count: cfg.RegLookups, Size: int64(cfg.RRSize)}})
		if err != nil {
			return nil, err
		}
		return res.Result, nil
	}
	l0, err := lookup()
	if err != nil {
		return nil, fmt.Errorf("lookup with no extra route: %w", err)
	}
	// Each growth request adds one step of new routes, so that the cost of
	// adding shows as the table grows.
	var grow time.Duration
	var last float64
	var respBytes int64
	for k := 0; k < cfg.RegRoutes; k += cfg.RegStep {
		batch := protos[k:min(k+cfg.RegStep, cfg.RegRoutes)]
		res, err := back.Do(ctx, Request{Op: "register", Name: s.backend, Target: &s.lb, Protos: batch, TTL: 600})
		if err != nil {
			return nil, fmt.Errorf("registering routes %d..%d: %w", k, k+len(batch), err)
		}
		grow += time.Duration(res.Result.Seconds * float64(time.Second))
		last = res.Result.Seconds
		respBytes = max(respBytes, res.Result.Bytes)
	}
	lN, err := lookup()
	if err != nil {
		return nil, fmt.Errorf("lookup with %d routes: %w", cfg.RegRoutes, err)
	}
	// Extend every route, in the same steps.
	var extend time.Duration
	for k := 0; k < cfg.RegRoutes; k += cfg.RegStep {
		batch := protos[k:min(k+cfg.RegStep, cfg.RegRoutes)]
		res, err := back.Do(ctx, Request{Op: "register", Name: s.backend, Target: &s.lb, Protos: batch, TTL: 600})
		if err != nil {
			return nil, fmt.Errorf("extending routes %d..%d: %w", k, k+len(batch), err)
		}
		extend += time.Duration(res.Result.Seconds * float64(time.Second))
		respBytes = max(respBytes, res.Result.Bytes)
	}
	seen, err := p.agent.Do(ctx, Request{Op: "protos", Name: p.host, Target: &s.lb})
	if err != nil {
		return nil, err
	}
	for k := 0; k < cfg.RegRoutes; k += cfg.RegStep {
		batch := protos[k:min(k+cfg.RegStep, cfg.RegRoutes)]
		if _, err := back.Do(ctx, Request{Op: "release", Name: s.backend, Target: &s.lb, Protos: batch}); err != nil {
			return nil, fmt.Errorf("releasing: %w", err)
		}
	}
	return map[string]float64{
		"reg_grow_ms":            grow.Seconds() * 1e3,
		"reg_last_add_ms":        last * 1e3,
		"reg_extend_ms":          extend.Seconds() * 1e3,
		"reg_response_bytes":     float64(respBytes),
		"reg_lookup_p50_0_ms":    l0.P50ms,
		"reg_lookup_p50_N_ms":    lN.P50ms,
		"reg_lookup_ratio":       lN.P50ms / l0.P50ms,
		"reg_identify_protocols": float64(seen.N),
	}, nil
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// errSkip is returned when a mode cannot run on this machine.
var errSkip = errors.New("skipped")
