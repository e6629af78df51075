package metrics_test

import (
	"encoding/json"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/metrics"
)

// TestDashboard checks that grafana-dashboard.json is valid JSON that
// Grafana can import, that every metric its queries use is one a daemon
// exports (the Tracer's, go-libp2p's through Libp2pOptions, or the Go and
// process collectors of NewRegistry), and that it shows every metric of the
// Tracer.
func TestDashboard(t *testing.T) {
	raw, err := os.ReadFile("grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash map[string]any
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	for _, key := range []string{"title", "uid", "panels", "templating", "__inputs"} {
		if dash[key] == nil {
			t.Errorf("dashboard has no %q", key)
		}
	}

	known := exportedNames(t)
	queries := collectQueries(dash)
	if len(queries) < 10 {
		t.Fatalf("found only %d queries in the dashboard", len(queries))
	}
	used := map[string]bool{}
	for _, q := range queries {
		names := metricNames(q)
		if len(names) == 0 {
			t.Errorf("query uses no metric (or the test cannot read it): %s", q)
		}
		for _, n := range names {
			used[n] = true
			if !exists(known, n) {
				t.Errorf("query uses %s, which no collector of the daemon exports: %s", n, q)
			}
		}
	}
	for n := range known {
		if !strings.HasPrefix(n, metrics.Namespace+"_") {
			continue
		}
		if !used[n] && !used[n+"_bucket"] && !used[n+"_count"] {
			t.Errorf("the dashboard does not show %s", n)
		}
	}
}

// exportedNames returns the name of every metric a daemon's registry can
// hold. Names are taken from the collectors' descriptions, not from a
// scrape, because a vector with no child yet (libp2p_rcmgr_blocked_resources
// before anything is blocked) is missing from a scrape.
func exportedNames(t *testing.T) map[string]bool {
	t.Helper()
	rec := &recorder{Registerer: prometheus.NewRegistry(), names: map[string]bool{}}
	if _, err := metrics.New(rec); err != nil {
		t.Fatal(err)
	}
	testnet.NewHost(t, testnet.TCP, testnet.Options{Extra: metrics.Libp2pOptions(rec)})
	// Go and process collectors describe themselves lazily (the Go one
	// by runtime/metrics), so take those names from a scrape.
	for _, mf := range gatherAll(t, metrics.NewRegistry()) {
		rec.names[mf.GetName()] = true
	}
	return rec.names
}

// recorder is a Registerer that notes the names of the metrics it
// registers.
type recorder struct {
	prometheus.Registerer
	names map[string]bool
}

// fqName reads the name out of a Desc's String form, the only way client
// golang exposes it: Desc{fqName: "name", help: ...}.
var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

func (r *recorder) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc)
	go func() {
		c.Describe(ch)
		close(ch)
	}()
	for d := range ch {
		if m := fqName.FindStringSubmatch(d.String()); m != nil {
			r.names[m[1]] = true
		}
	}
	return r.Registerer.Register(c)
}

func (r *recorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

// exists reports whether name is a metric in known, or a series of a
// histogram or summary in known.
func exists(known map[string]bool, name string) bool {
	if known[name] {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if stem, ok := strings.CutSuffix(name, suffix); ok && known[stem] {
			return true
		}
	}
	return false
}

// collectQueries returns every PromQL query in the dashboard: the expr of
// every target, at any depth (rows nest panels), and the variables'
// queries.
func collectQueries(v any) []string {
	var out []string
	var walk func(any, string)
	walk = func(v any, key string) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				walk(x, k)
			}
		case []any:
			for _, x := range v {
				walk(x, key)
			}
		case string:
			if key == "expr" || (key == "query" && strings.Contains(v, "(")) || key == "definition" {
				out = append(out, v)
			}
		}
	}
	walk(v, "")
	sort.Strings(out)
	return out
}

var (
	promString   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`)
	promMatchers = regexp.MustCompile(`\{[^}]*\}`)
	promRange    = regexp.MustCompile(`\[[^\]]*\]`)
	promGrouping = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promVariable = regexp.MustCompile(`\$\{?\w+\}?`)
	promToken    = regexp.MustCompile(`\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|[a-zA-Z_:][a-zA-Z0-9_:]*(?:\s*\()?`)
	labelValues  = regexp.MustCompile(`label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,`)
	promKeywords = map[string]bool{
		"and": true, "or": true, "unless": true, "bool": true, "offset": true,
		"by": true, "without": true, "on": true, "ignoring": true,
		"group_left": true, "group_right": true, "inf": true, "nan": true,
	}
)

// metricNames extracts the metric names from a PromQL query (or a Grafana
// label_values() variable query): identifiers that are not functions,
// keywords, label names in matchers or groupings, strings, durations or
// Grafana variables.
func metricNames(q string) []string {
	if m := labelValues.FindStringSubmatch(q); m != nil {
		return []string{m[1]}
	}
	s := promString.ReplaceAllString(q, " ")
	s = promMatchers.ReplaceAllString(s, " ")
	s = promRange.ReplaceAllString(s, " ")
	s = promGrouping.ReplaceAllString(s, " ")
	s = promVariable.ReplaceAllString(s, " ")
	var names []string
	for _, tok := range promToken.FindAllString(s, -1) {
		switch {
		case tok[0] >= '0' && tok[0] <= '9':
		case strings.HasSuffix(tok, "("): // a function or aggregation
		case promKeywords[strings.ToLower(tok)]:
		default:
			names = append(names, tok)
		}
	}
	return names
}

func TestMetricNames(t *testing.T) {
	for q, want := range map[string]string{
		`sum by (direction, le) (rate(a_bucket{x="y",i=~"$instance"}[$__rate_interval]))`: "a_bucket",
		`histogram_quantile(0.99, sum(rate(b_bucket[5m])) by (le))`:                       "b_bucket",
		`x / ignoring(type) y{type="closed"} > 1e9`:                                       "x y",
		`label_values(c_total, instance)`:                                                 "c_total",
	} {
		if got := strings.Join(metricNames(q), " "); got != want {
			t.Errorf("metricNames(%s) = %q, want %q", q, got, want)
		}
	}
}
