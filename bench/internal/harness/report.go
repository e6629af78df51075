package harness

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"time"
)

// Report is what a run measured: every run's value, the medians, the
// ratios and the targets checked against them. It marshals to the JSON the
// -json flag writes.
type Report struct {
	Started   time.Time
	Mode      string // in-process, separate, netns
	Machine   string
	Libp2p    string
	Config    Config                                     `json:"-"`
	Runs      map[string]map[string]map[string][]float64 // transport → setup → metric → one value per run
	Median    map[string]map[string]map[string]float64   // the same, median
	Rows      []Row
	Targets   []Target
	Transport []string
	Errors    []string `json:",omitempty"` // what failed; the rest was still measured
}

func (r *Report) fail(err error) { r.Errors = append(r.Errors, err.Error()) }

// Row is one metric on one transport, across setups.
type Row struct {
	Transport string
	Metric    string
	Label     string
	Values    map[string]float64 // setup → median
	Ratios    map[string]float64 // "lb-in/direct" etc.
}

// Target is one goal of issue 6 checked on one transport and setup.
type Target struct {
	Transport string
	Setup     string
	Name      string
	Value     float64
	Limit     float64
	AtLeast   bool
	Met       bool
	Missing   bool `json:",omitempty"`
}

type metricInfo struct {
	key, label string
	scale      float64 // display multiplier
	format     string
}

// tableMetrics are the rows of the main table, in order.
var tableMetrics = []metricInfo{
	{"bulk_MBps", "bulk MB/s", 1, "%.0f"},
	{"bulk_cpu_s_per_GB", "bulk CPU s/GB (all processes)", 1, "%.2f"},
	{"bulk_mid_cpu_s_per_GB", "bulk CPU s/GB (middle process)", 1, "%.2f"},
	{"parallel_MBps", "parallel MB/s", 1, "%.0f"},
	{"parallel_cpu_s_per_GB", "parallel CPU s/GB (all)", 1, "%.2f"},
	{"parallel_mid_cpu_s_per_GB", "parallel CPU s/GB (middle process)", 1, "%.2f"},
	{"rr_streams_per_s", "req/resp streams/s", 1, "%.0f"},
	{"rr_p50_ms", "req/resp p50 ms", 1, "%.3f"},
	{"rr_p99_ms", "req/resp p99 ms", 1, "%.3f"},
	{"rr_cpu_ms_per_stream", "req/resp CPU ms/stream (all)", 1, "%.3f"},
	{"rr_mid_cpu_ms_per_stream", "req/resp CPU ms/stream (middle)", 1, "%.3f"},
	{"rr32_streams_per_s", "req/resp ×32 streams/s", 1, "%.0f"},
	{"rr32_p50_ms", "req/resp ×32 p50 ms", 1, "%.3f"},
	{"rr32_p99_ms", "req/resp ×32 p99 ms", 1, "%.3f"},
	{"rr32_cpu_ms_per_stream", "req/resp ×32 CPU ms/stream (all)", 1, "%.3f"},
	{"rr32_mid_cpu_ms_per_stream", "req/resp ×32 CPU ms/stream (middle)", 1, "%.3f"},
	{"idle_bytes_per_stream", "idle KiB/stream (measured process)", 1.0 / 1024, "%.1f"},
	{"idle_mid_bytes_per_stream", "idle KiB/stream at the middle", 1.0 / 1024, "%.1f"},
	{"idle_heap_per_stream", "idle heap KiB/stream (measured process)", 1.0 / 1024, "%.1f"},
	{"idle_mid_heap_per_stream", "idle heap KiB/stream at the middle", 1.0 / 1024, "%.1f"},
	{"idle_goroutines_per_stream", "idle goroutines/stream (measured process)", 1, "%.2f"},
	{"idle_mid_goroutines_per_stream", "idle goroutines/stream at the middle", 1, "%.2f"},
	{"idle_open_per_s", "idle streams opened/s", 1, "%.0f"},
}

var regMetrics = []metricInfo{
	{"reg_grow_ms", "requests to grow to N routes, total ms", 1, "%.1f"},
	{"reg_last_add_ms", "last growth request ms", 1, "%.2f"},
	{"reg_extend_ms", "requests extending all N routes, total ms", 1, "%.2f"},
	{"reg_response_bytes", "largest RoutingResponse, bytes (wire limit 16384)", 1, "%.0f"},
	{"reg_lookup_p50_0_ms", "req/resp p50 ms, bench routes only", 1, "%.3f"},
	{"reg_lookup_p50_N_ms", "req/resp p50 ms, with N routes", 1, "%.3f"},
	{"reg_lookup_ratio", "lookup p50 ratio N routes ÷ none", 1, "%.2f"},
	{"reg_identify_protocols", "protocols a remote peer sees (identify)", 1, "%.0f"},
}

var ratioPairs = [][2]string{{LBIn, Direct}, {LBOut, Direct}, {LBIn, Relay}, {LBOut, Relay}, {LBIn, NaiveIn}, {LBOut, NaiveOut}, {LBOut, LBIn},
	{ServeIn, Relay}, {ServeOut, Relay}, {ServeIn, LBIn}, {ServeOut, LBOut}}

func newReport(cfg *Config) *Report {
	r := &Report{
		Started: time.Now().UTC(),
		Mode:    "in-process",
		Machine: fmt.Sprintf("%s/%s, %d CPUs, GOMAXPROCS %d, %s", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version()),
		Config:  *cfg,
		Runs:    map[string]map[string]map[string][]float64{},
		Median:  map[string]map[string]map[string]float64{},
	}
	switch {
	case cfg.Netns:
		r.Mode = fmt.Sprintf("netns (peer↔middle %v, middle↔backend %v one way)", cfg.PeerDelay, cfg.BackDelay)
	case cfg.Separate:
		r.Mode = "separate (middle node in its own process)"
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/libp2p/go-libp2p" {
				r.Libp2p = d.Version
			}
		}
	}
	r.Transport = cfg.Transports
	return r
}

func (r *Report) add(tr, setup string, m map[string]float64) {
	if r.Runs[tr] == nil {
		r.Runs[tr] = map[string]map[string][]float64{}
	}
	if r.Runs[tr][setup] == nil {
		r.Runs[tr][setup] = map[string][]float64{}
	}
	for k, v := range m {
		r.Runs[tr][setup][k] = append(r.Runs[tr][setup][k], v)
	}
}

func (r *Report) value(tr, setup, metric string) (float64, bool) {
	v, ok := r.Median[tr][setup][metric]
	return v, ok
}

// finish computes medians, the middle's share of idle memory, ratios and
// targets.
func (r *Report) finish() {
	separate := r.Config.Separate || r.Config.Netns
	for tr, bySetup := range r.Runs {
		r.Median[tr] = map[string]map[string]float64{}
		for s, byMetric := range bySetup {
			r.Median[tr][s] = map[string]float64{}
			for k, vs := range byMetric {
				r.Median[tr][s][k] = median(vs)
			}
		}
		// Idle memory at the middle: measured there when the middle has
		// its own process; otherwise this process's cost minus direct's,
		// which holds the same two end streams.
		for s, m := range r.Median[tr] {
			if s == Direct {
				continue
			}
			for _, k := range []string{"idle_bytes_per_stream", "idle_heap_per_stream", "idle_goroutines_per_stream"} {
				v, ok := m[k]
				if !ok {
					continue
				}
				mid := strings.Replace(k, "idle_", "idle_mid_", 1)
				if separate {
					m[mid] = v
				} else if d, ok := r.value(tr, Direct, k); ok {
					m[mid] = v - d
				}
			}
		}
	}
	for _, tr := range r.Transport {
		for _, mi := range tableMetrics {
			row := Row{Transport: tr, Metric: mi.key, Label: mi.label, Values: map[string]float64{}, Ratios: map[string]float64{}}
			for _, s := range AllSetups {
				if v, ok := r.value(tr, s, mi.key); ok {
					row.Values[s] = v
				}
			}
			if len(row.Values) == 0 {
				continue
			}
			for _, p := range ratioPairs {
				if p[1] == Relay && strings.HasPrefix(mi.key, "idle_") && mi.key != "idle_open_per_s" {
					// A relay holds nothing per stream inside a circuit:
					// the ratio would divide by about zero.
					continue
				}
				a, okA := row.Values[p[0]]
				b, okB := row.Values[p[1]]
				if okA && okB && b != 0 {
					row.Ratios[p[0]+"/"+p[1]] = a / b
				}
			}
			r.Rows = append(r.Rows, row)
		}
		r.checkTargets(tr)
	}
}

func (r *Report) ratio(tr, metric, a, b string) (float64, bool) {
	x, ok1 := r.value(tr, a, metric)
	y, ok2 := r.value(tr, b, metric)
	if !ok1 || !ok2 || y == 0 {
		return 0, false
	}
	return x / y, true
}

func (r *Report) checkTargets(tr string) {
	add := func(setup, name string, v float64, ok bool, limit float64, atLeast bool) {
		if !ok {
			return
		}
		met := v <= limit
		if atLeast {
			met = v >= limit
		}
		r.Targets = append(r.Targets, Target{Transport: tr, Setup: setup, Name: name, Value: v, Limit: limit, AtLeast: atLeast, Met: met})
	}
	for _, s := range []string{LBIn, LBOut} {
		for _, m := range []string{"bulk_MBps", "parallel_MBps"} {
			wl := strings.TrimSuffix(m, "_MBps")
			v, ok := r.ratio(tr, m, s, Direct)
			add(s, wl+" MB/s ÷ direct", v, ok, 0.6, true)
			v, ok = r.ratio(tr, m, s, Relay)
			add(s, wl+" MB/s ÷ relay", v, ok, 2.5, true)
		}
		v, ok := r.ratio(tr, "bulk_cpu_s_per_GB", s, Direct)
		add(s, "bulk CPU/GB ÷ direct", v, ok, 2.2, false)
		v, ok = r.ratio(tr, "rr_streams_per_s", s, Direct)
		add(s, "req/resp streams/s ÷ direct", v, ok, 0.6, true)
		v, ok = r.ratio(tr, "rr_p99_ms", s, Direct)
		add(s, "req/resp p99 ÷ direct", v, ok, 3, false)
		v, ok = r.value(tr, s, "idle_mid_bytes_per_stream")
		add(s, "idle KiB/stream at balancer", v/1024, ok, 16, false)
		v, ok = r.value(tr, s, "idle_mid_goroutines_per_stream")
		add(s, "idle goroutines/stream at balancer", v, ok, 2, false)
	}
	// Issue 13: the balancer's own CPU per byte no more than the naive
	// forwarder's (measured only when the middle has its own process), and
	// outbound bulk as fast as inbound.
	for _, p := range [][2]string{{LBIn, NaiveIn}, {LBOut, NaiveOut}} {
		for _, m := range []string{"bulk", "parallel"} {
			v, ok := r.ratio(tr, m+"_mid_cpu_s_per_GB", p[0], p[1])
			add(p[0], m+" balancer CPU/GB ÷ naive", v, ok, 1.0, false)
		}
	}
	// Issue 13, target 1: new streams against circuit relay v2, one at a
	// time and 32 at once. (The outbound p50 target, relay's plus one
	// round trip, needs the round trip: see docs/performance.md.)
	for _, s := range []string{LBIn, LBOut, ServeIn, ServeOut} {
		for _, wl := range []string{RR, RRConc} {
			v, ok := r.ratio(tr, wl+"_streams_per_s", s, Relay)
			add(s, wl+" streams/s ÷ relay", v, ok, 1.0, true)
			v, ok = r.ratio(tr, wl+"_mid_cpu_ms_per_stream", s, Relay)
			add(s, wl+" balancer CPU/stream ÷ relay's", v, ok, 1.5, false)
			v, ok = r.ratio(tr, wl+"_cpu_ms_per_stream", s, Relay)
			add(s, wl+" CPU/stream, all processes ÷ relay", v, ok, 1.0, false)
		}
	}
	v, ok := r.ratio(tr, "rr_p50_ms", LBIn, Relay)
	add(LBIn, "rr p50 ÷ relay", v, ok, 1.0, false)
	if v, ok := r.ratio(tr, "bulk_MBps", LBOut, LBIn); ok {
		add(LBOut, "bulk MB/s ÷ lb-in", v, ok, 0.9, true)
	}
	v, ok = r.value(tr, LBIn, "reg_lookup_ratio")
	add(LBIn, "lookup p50 with N routes ÷ none", v, ok, 1.5, false)
}

// Markdown writes the tables.
func (r *Report) Markdown(w io.Writer, command string) {
	fmt.Fprintf(w, "Mode: %s. Machine: %s. go-libp2p %s. Median of %d run(s). Started %s.\n\n", r.Mode, r.Machine, r.Libp2p, r.Config.Runs, r.Started.Format(time.RFC3339))
	if command != "" {
		fmt.Fprintf(w, "Command: `%s`\n\n", command)
	}
	if r.Config.Smoke {
		fmt.Fprint(w, "**Smoke sizes: these figures only show that every path works; they measure nothing.**\n\n")
	}
	c := r.Config
	fmt.Fprintf(w, "Sizes: bulk %s on one stream; parallel %d × %s; req/resp %d streams × %d B each way; idle %d streams; registration %d routes in steps of %d.\n\n",
		size(c.BulkSize), c.ParStreams, size(c.ParSize), c.RRCount, c.RRSize, c.IdleStreams, c.RegRoutes, c.RegStep)
	for _, tr := range r.Transport {
		fmt.Fprintf(w, "### %s\n\n", strings.ToUpper(tr))
		// Only the setups and ratios this run has, so that a run of two
		// setups is not a table of dashes.
		setups, pairs := r.columns(tr)
		fmt.Fprint(w, "| metric |")
		for _, s := range setups {
			fmt.Fprintf(w, " %s |", s)
		}
		for _, p := range pairs {
			fmt.Fprintf(w, " %s ÷ %s |", p[0], p[1])
		}
		fmt.Fprint(w, "\n|---|")
		fmt.Fprint(w, strings.Repeat("--:|", len(setups)+len(pairs)))
		fmt.Fprintln(w)
		for _, row := range r.Rows {
			if row.Transport != tr {
				continue
			}
			mi := lookupMetric(row.Metric)
			fmt.Fprintf(w, "| %s |", mi.label)
			for _, s := range setups {
				if v, ok := row.Values[s]; ok {
					fmt.Fprintf(w, " "+mi.format+" |", v*mi.scale)
				} else {
					fmt.Fprint(w, " – |")
				}
			}
			for _, p := range pairs {
				if v, ok := row.Ratios[p[0]+"/"+p[1]]; ok && !math.IsInf(v, 0) && !math.IsNaN(v) {
					fmt.Fprintf(w, " %.2f |", v)
				} else {
					fmt.Fprint(w, " – |")
				}
			}
			fmt.Fprintln(w)
		}
		fmt.Fprintln(w)
		if reg := r.Median[tr][LBIn]; reg != nil {
			if _, ok := reg["reg_grow_ms"]; ok {
				fmt.Fprintf(w, "Registration (lb-in, N = %d):\n\n| metric | value |\n|---|--:|\n", c.RegRoutes)
				for _, mi := range regMetrics {
					if v, ok := reg[mi.key]; ok {
						fmt.Fprintf(w, "| %s | "+mi.format+" |\n", mi.label, v*mi.scale)
					}
				}
				fmt.Fprintln(w)
			}
		}
	}
	if len(r.Errors) > 0 {
		fmt.Fprint(w, "### Failures\n\n")
		for _, e := range r.Errors {
			fmt.Fprintf(w, "- %s\n", e)
		}
		fmt.Fprintln(w)
	}
	if len(r.Targets) > 0 {
		fmt.Fprintln(w, "### Targets")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| transport | setup | target | value | goal | met |")
		fmt.Fprintln(w, "|---|---|---|--:|--:|:-:|")
		for _, t := range r.Targets {
			op := "≤"
			if t.AtLeast {
				op = "≥"
			}
			met := "yes"
			if !t.Met {
				met = "**no**"
			}
			fmt.Fprintf(w, "| %s | %s | %s | %.2f | %s %g | %s |\n", t.Transport, t.Setup, t.Name, t.Value, op, t.Limit, met)
		}
		fmt.Fprintln(w)
	}
}

// columns returns the setups measured on transport tr, in table order, and
// the ratios whose both setups were measured.
func (r *Report) columns(tr string) (setups []string, pairs [][2]string) {
	have := r.Median[tr]
	for _, s := range AllSetups {
		if _, ok := have[s]; ok {
			setups = append(setups, s)
		}
	}
	for _, p := range ratioPairs {
		_, a := have[p[0]]
		_, b := have[p[1]]
		if a && b {
			pairs = append(pairs, p)
		}
	}
	return setups, pairs
}

func lookupMetric(key string) metricInfo {
	for _, mi := range tableMetrics {
		if mi.key == key {
			return mi
		}
	}
	return metricInfo{key, key, 1, "%.3g"}
}

func size(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

// JSON writes the report as indented JSON.
func (r *Report) JSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	type alias Report
	return enc.Encode(struct {
		*alias
		Sizes map[string]any
	}{(*alias)(r), map[string]any{
		"runs": r.Config.Runs, "bulk_bytes": r.Config.BulkSize, "parallel_streams": r.Config.ParStreams,
		"parallel_bytes": r.Config.ParSize, "rr_streams": r.Config.RRCount, "rr_bytes": r.Config.RRSize,
		"idle_streams": r.Config.IdleStreams, "reg_routes": r.Config.RegRoutes,
	}})
}

// Failed lists the targets missed, for the exit status of callers that
// want it.
func (r *Report) Failed() []Target {
	var out []Target
	for _, t := range r.Targets {
		if !t.Met {
			out = append(out, t)
		}
	}
	return slices.Clip(out)
}

// LoadReport reads a report written with JSON, enough to draw its SVG
// again (go run ./bench -replot FILE.json -svg out.svg).
func LoadReport(rd io.Reader) (*Report, error) {
	var in struct {
		Report
		Sizes map[string]float64
	}
	if err := json.NewDecoder(rd).Decode(&in); err != nil {
		return nil, err
	}
	r := in.Report
	r.Config.Runs = int(in.Sizes["runs"])
	return &r, nil
}
