package harness

import (
	"fmt"
	"html"
	"io"
	"math"
	"strings"
)

// svgRow is one bar group: a ratio metric on one transport.
type svgRow struct {
	label   string
	values  [2]float64 // lb-in, lb-out; NaN when absent
	target  float64
	atLeast bool
}

// svgPanel is one bar chart of the plot.
type svgPanel struct {
	title string
	unit  string
	rows  []svgRow
}

// The plot's layout, in pixels.
const (
	svgWidth   = 20 + 150 + 2*(125) + 3*(240+30)
	svgBarH    = 9
	svgRowGap  = 8
	svgPanelW  = 240
	svgMargin  = 20
	svgHeaderH = 60
	svgRowH    = 2*svgBarH + svgRowGap
)

// SVG draws the ratios as horizontal bar charts, one panel per
// denominator (direct, relay) and one for idle memory at the balancer, with
// each target marked. Plain SVG, no dependency.
func (r *Report) SVG(w io.Writer) error {
	panels := r.svgPanels()
	maxRows := 0
	for _, p := range panels {
		maxRows = max(maxRows, len(p.rows))
	}
	height := svgHeaderH + maxRows*svgRowH + 24
	var b strings.Builder
	r.svgHeader(&b, height)
	px := svgMargin
	for pi, p := range panels {
		lw := 150
		if pi > 0 {
			lw = 125
		}
		px = p.draw(&b, px, lw, pi > 0)
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// svgPanels gathers the figures to plot from the report: the ratios to
// direct and to relay, and idle memory, each row with its target.
func (r *Report) svgPanels() []svgPanel {
	ratio := func(tr, metric, den string, target float64, atLeast bool, label string) svgRow {
		row := svgRow{label: strings.ToUpper(tr) + " " + label, target: target, atLeast: atLeast}
		for i, s := range []string{LBIn, LBOut} {
			row.values[i] = math.NaN()
			if v, ok := r.ratio(tr, metric, s, den); ok {
				row.values[i] = v
			}
		}
		return row
	}
	var direct, relay, idle svgPanel
	direct = svgPanel{title: "balancer ÷ direct", unit: "×"}
	relay = svgPanel{title: "balancer ÷ circuit relay v2", unit: "×"}
	idle = svgPanel{title: "idle memory at the balancer", unit: " KiB/stream"}
	for _, tr := range r.Transport {
		direct.rows = append(direct.rows,
			ratio(tr, "bulk_MBps", Direct, 0.6, true, "bulk MB/s"),
			ratio(tr, "parallel_MBps", Direct, 0.6, true, "parallel MB/s"),
			ratio(tr, "bulk_cpu_s_per_GB", Direct, 2.2, false, "bulk CPU/GB"),
			ratio(tr, "rr_streams_per_s", Direct, 0.6, true, "req/resp streams/s"),
			ratio(tr, "rr_p99_ms", Direct, 3, false, "req/resp p99"),
		)
		relay.rows = append(relay.rows,
			ratio(tr, "bulk_MBps", Relay, 2.5, true, "bulk MB/s"),
			ratio(tr, "parallel_MBps", Relay, 2.5, true, "parallel MB/s"),
			ratio(tr, "rr_streams_per_s", Relay, 0, true, "req/resp streams/s"),
		)
		row := svgRow{label: strings.ToUpper(tr) + " heap+stack", target: 16}
		for i, s := range []string{LBIn, LBOut} {
			row.values[i] = math.NaN()
			if v, ok := r.value(tr, s, "idle_mid_bytes_per_stream"); ok {
				row.values[i] = v / 1024
			}
		}
		idle.rows = append(idle.rows, row)
	}
	panels := []svgPanel{direct, relay, idle}
	if naive := r.naivePanel(); naive.rows != nil {
		panels = append(panels, naive)
	}
	return panels
}

// naivePanel is the balancer's own CPU per byte against the naive
// forwarder's (issue 13), lb-in over naive-in and lb-out over naive-out;
// no rows when the run measured neither (the middle's CPU needs -separate).
func (r *Report) naivePanel() svgPanel {
	p := svgPanel{title: "balancer ÷ naive forwarder (its process)", unit: "×"}
	for _, tr := range r.Transport {
		for _, m := range []struct{ key, label string }{{"bulk_mid_cpu_s_per_GB", "bulk CPU/GB"}, {"parallel_mid_cpu_s_per_GB", "parallel CPU/GB"}} {
			row := svgRow{label: strings.ToUpper(tr) + " " + m.label, target: 1}
			found := false
			for i, pair := range [][2]string{{LBIn, NaiveIn}, {LBOut, NaiveOut}} {
				row.values[i] = math.NaN()
				if v, ok := r.ratio(tr, m.key, pair[0], pair[1]); ok {
					row.values[i], found = v, true
				}
			}
			if found {
				p.rows = append(p.rows, row)
			}
		}
	}
	return p
}

// svgHeader opens the document: its size, the title and the legend.
func (r *Report) svgHeader(b *strings.Builder, height int) {
	fmt.Fprintf(b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="10">`+"\n", svgWidth, height)
	fmt.Fprintf(b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(b, `<text x="%d" y="16" font-size="13" font-weight="bold">libp2p-balancer vs direct and circuit relay v2 (%s, median of %d)</text>`+"\n", svgMargin, html.EscapeString(r.Mode), r.Config.Runs)
	fmt.Fprintf(b, `<rect x="%d" y="24" width="10" height="8" fill="#3b6fb6"/><text x="%d" y="32">inbound (D→LB→A)</text>`, svgMargin, svgMargin+14)
	fmt.Fprintf(b, `<rect x="%d" y="24" width="10" height="8" fill="#e08a2c"/><text x="%d" y="32">outbound (B→LB→E)</text>`, svgMargin+120, svgMargin+134)
	fmt.Fprintf(b, `<line x1="%d" y1="28" x2="%d" y2="28" stroke="#c00" stroke-width="2" stroke-dasharray="3,2"/><text x="%d" y="32">target</text>`+"\n", svgMargin+250, svgMargin+270, svgMargin+274)
}

// draw writes the panel, its labels lw wide from x = px and abbreviated
// when short, and returns the x where the next panel starts.
func (p svgPanel) draw(b *strings.Builder, px, lw int, short bool) int {
	scaleMax := 0.0
	for _, row := range p.rows {
		for _, v := range row.values {
			if !math.IsNaN(v) {
				scaleMax = max(scaleMax, v)
			}
		}
		scaleMax = max(scaleMax, row.target)
	}
	scaleMax = niceCeil(scaleMax * 1.1)
	if scaleMax == 0 {
		scaleMax = 1
	}
	bx := px + lw
	px = bx + svgPanelW + 30
	xs := func(v float64) float64 { return float64(bx) + v/scaleMax*float64(svgPanelW) }
	fmt.Fprintf(b, `<text x="%d" y="%d" font-weight="bold">%s</text>`+"\n", bx, svgHeaderH-12, html.EscapeString(p.title))
	for i := 0; i <= 4; i++ {
		v := scaleMax * float64(i) / 4
		x := xs(v)
		fmt.Fprintf(b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>`, x, svgHeaderH-4, x, svgHeaderH+len(p.rows)*svgRowH)
		fmt.Fprintf(b, `<text x="%.1f" y="%d" text-anchor="middle" fill="#555">%s</text>`+"\n", x, svgHeaderH+len(p.rows)*svgRowH+12, trimFloat(v))
	}
	if p.unit == "×" {
		x := xs(1)
		fmt.Fprintf(b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#888"/>`+"\n", x, svgHeaderH-4, x, svgHeaderH+len(p.rows)*svgRowH)
	}
	for ri, row := range p.rows {
		y := svgHeaderH + ri*svgRowH
		label := row.label
		if short {
			label = abbrev(label)
		}
		fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", bx-4, y+svgBarH+3, html.EscapeString(label))
		for i, v := range row.values {
			yy := y + i*svgBarH
			color := "#3b6fb6"
			if i == 1 {
				color = "#e08a2c"
			}
			if !math.IsNaN(v) {
				fmt.Fprintf(b, `<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>`, bx, yy, math.Max(xs(v)-float64(bx), 0.5), svgBarH-1, color)
			}
		}
		if row.target > 0 {
			x := xs(row.target)
			fmt.Fprintf(b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#c00" stroke-width="2" stroke-dasharray="3,2"/>`+"\n", x, y-2, x, y+2*svgBarH+1)
		}
		// Labels last, so that no bar or target line covers them.
		for i, v := range row.values {
			yy := y + i*svgBarH
			if math.IsNaN(v) {
				fmt.Fprintf(b, `<text x="%d" y="%d" fill="#999">n/a</text>`+"\n", bx+2, yy+svgBarH-1)
				continue
			}
			fmt.Fprintf(b, `<text x="%.1f" y="%d" fill="#222" stroke="white" stroke-width="3" paint-order="stroke">%s</text>`+"\n", xs(v)+3, yy+svgBarH-1, trimFloat(v))
		}
	}
	return px
}

func abbrev(s string) string {
	s = strings.ReplaceAll(s, "req/resp ", "rr ")
	s = strings.ReplaceAll(s, "streams/s", "str/s")
	s = strings.ReplaceAll(s, "parallel", "par")
	return s
}

func niceCeil(v float64) float64 {
	if v <= 0 {
		return 0
	}
	exp := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10} {
		if m*exp >= v {
			return m * exp
		}
	}
	return 10 * exp
}

func trimFloat(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}
