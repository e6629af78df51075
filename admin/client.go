package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// ErrUnauthorized is returned by Client when the admin listener wants a
// token, or a different one.
var ErrUnauthorized = errors.New("the admin listener refused the token (or needs one)")

// Client reads a balancer's admin API, as `balancer status` does. The zero
// value reads DefaultAddr without a token.
type Client struct {
	// Addr is the admin listener: HOST:PORT, or a base URL such as
	// http://127.0.0.1:8242. Empty means DefaultAddr.
	Addr string
	// Token is sent as a bearer token when not empty.
	Token string
	// HTTP makes the requests; nil means a client with a 10 s timeout.
	HTTP *http.Client
}

var defaultHTTP = &http.Client{Timeout: 10 * time.Second}

func (c *Client) base() string {
	a := c.Addr
	if a == "" {
		a = DefaultAddr
	}
	if !strings.Contains(a, "://") {
		a = "http://" + a
	}
	return strings.TrimSuffix(a, "/")
}

// Status returns /api/status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var st Status
	if err := c.get(ctx, "/api/status", &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// Routes returns the routes of /api/routes, sorted by protocol, then
// backend.
func (c *Client) Routes(ctx context.Context) ([]Route, error) {
	var l RouteList
	if err := c.get(ctx, "/api/routes", &l); err != nil {
		return nil, err
	}
	return l.Routes, nil
}

// Backends returns the backends of /api/backends, sorted by peer ID.
func (c *Client) Backends(ctx context.Context) ([]Backend, error) {
	var l BackendList
	if err := c.get(ctx, "/api/backends", &l); err != nil {
		return nil, err
	}
	return l.Backends, nil
}

// Events returns the recent refusals and ejections of /api/events, newest
// first.
func (c *Client) Events(ctx context.Context) ([]Event, error) {
	var l EventList
	if err := c.get(ctx, "/api/events", &l); err != nil {
		return nil, err
	}
	return l.Events, nil
}

func (c *Client) get(ctx context.Context, path string, v any) error {
	return c.do(ctx, http.MethodGet, path, v)
}

// do sends a request without a body and decodes the JSON answer into v,
// when the status is 200 or one of also.
func (c *Client) do(ctx context.Context, method, path string, v any, also ...int) error {
	url := c.base() + path
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return fmt.Errorf("admin API: %w", err)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = defaultHTTP
	}
	resp, err := hc.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("admin API at %s: nothing listens there; is `balancer serve` running with its admin listener on that address? (%w)", c.base(), err)
		}
		return fmt.Errorf("admin API: %w", err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusUnauthorized:
		return fmt.Errorf("%s: %w", url, ErrUnauthorized)
	case resp.StatusCode != http.StatusOK && !slices.Contains(also, resp.StatusCode):
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("%s: %s: %s", url, resp.Status, strings.TrimSpace(string(msg)))
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("%s: decoding: %w", url, err)
	}
	return nil
}

// PrintStatus prints what the status page shows as plain-text tables: the
// balancer's identity and summary, each pool with its backends, every
// backend, and the recent refusals.
func PrintStatus(ctx context.Context, w io.Writer, c *Client) error {
	st, err := c.Status(ctx)
	if err != nil {
		return err
	}
	routes, err := c.Routes(ctx)
	if err != nil {
		return err
	}
	backends, err := c.Backends(ctx)
	if err != nil {
		return err
	}
	events, err := c.Events(ctx)
	if err != nil {
		return err
	}
	return printStatus(w, st, routes, backends, events)
}

// printStatus prints the four parts of the status, each after a blank line
// but the first.
func printStatus(w io.Writer, st *Status, routes []Route, backends []Backend, events []Event) error {
	if err := printSummary(w, st); err != nil {
		return err
	}
	fmt.Fprintln(w)
	if len(st.Scopes) > 0 {
		if err := printScopes(w, st.Scopes); err != nil {
			return err
		}
		fmt.Fprintln(w)
	}
	if err := printRoutes(w, routes); err != nil {
		return err
	}
	fmt.Fprintln(w)
	if err := printBackends(w, backends); err != nil {
		return err
	}
	fmt.Fprintln(w)
	return printEvents(w, events)
}

// printSummary prints the balancer's identity, readiness, addresses and
// totals as label-value lines.
func printSummary(w io.Writer, st *Status) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	ready := "yes"
	if !st.Ready {
		ready = "no: " + st.NotReady
	}
	fmt.Fprintf(tw, "Balancer\t%s\n", st.PeerID)
	fmt.Fprintf(tw, "Ready\t%s\n", ready)
	if len(st.Addrs) == 0 {
		fmt.Fprintf(tw, "Addresses\tnone\n")
	}
	for i, a := range st.Addrs {
		label := ""
		if i == 0 {
			label = "Addresses"
		}
		fmt.Fprintf(tw, "%s\t%s\n", label, a)
	}
	fmt.Fprintf(tw, "Routes\t%s on %s\n", plural(st.Routes, "route"), plural(st.Protocols, "protocol"))
	fmt.Fprintf(tw, "Backends\t%d of %d connected, %d ejected\n", st.BackendsConnected, st.Backends, st.BackendsEjected)
	fmt.Fprintf(tw, "Streams\t%d active\n", st.ActiveStreams)
	fmt.Fprintf(tw, "Bytes\t%s to backends, %s from backends\n", bytesString(st.BytesTo), bytesString(st.BytesFrom))
	if c := st.Config; c != nil {
		fmt.Fprintf(tw, "Config\t%s\n", configLine(c, st.Time))
		if len(c.NeedsRestart) > 0 {
			fmt.Fprintf(tw, "\tchanged, needs a restart: %s\n", strings.Join(c.NeedsRestart, ", "))
		}
	}
	return tw.Flush()
}

// printRoutes prints one row per route, naming each pool's protocol and
// policy on its first row only.
func printRoutes(w io.Writer, routes []Route) error {
	if len(routes) == 0 {
		_, err := fmt.Fprintln(w, "No routes.")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PROTOCOL\tPOLICY\tBACKEND\tSTATE\tTTL\tWEIGHT\tSTREAMS")
	last := ""
	for _, r := range routes {
		proto, policy := r.Protocol, r.Strategy
		if r.Sticky {
			policy += ", sticky"
		}
		if proto == last {
			proto, policy = "", "" // one pool: name it once
		}
		last = r.Protocol
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\n", proto, policy, r.Backend, routeState(r),
			ttlString(time.Duration(r.TTLSeconds*float64(time.Second))), r.Weight, r.ActiveStreams)
	}
	return tw.Flush()
}

// printBackends prints one row per allowed backend.
func printBackends(w io.Writer, backends []Backend) error {
	if len(backends) == 0 {
		_, err := fmt.Fprintln(w, "No backends allowed.")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "BACKEND\tCONNECTED\tHEALTH\tROUTES\tSTREAMS\tOUTBOUND\tTO\tFROM\tADDRESSES")
	for _, b := range backends {
		health := "healthy"
		if !b.Healthy && b.EjectedUntil != nil {
			health = "ejected until " + b.EjectedUntil.Local().Format(time.TimeOnly)
		}
		addrs := strings.Join(b.Addrs, " ")
		if addrs == "" {
			addrs = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\t%s\n", b.ID, yesNo(b.Connected), health, len(b.Protocols),
			b.Streams, b.Outbound, bytesString(b.BytesTo), bytesString(b.BytesFrom), addrs)
	}
	return tw.Flush()
}

// printEvents prints the recent refusals.
func printEvents(w io.Writer, events []Event) error {
	if len(events) == 0 {
		_, err := fmt.Fprintln(w, "No recent refusals.")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tWHAT\tDIRECTION\tPROTOCOL\tPEER\tREASON")
	for _, e := range events {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.Time.Local().Format(time.TimeOnly), e.Kind,
			dash(e.Direction), dash(e.Protocol), dash(e.Peer), e.reasonText())
	}
	return tw.Flush()
}

// reasonText is the reason with its detail, as the log shows them.
func (e Event) reasonText() string {
	if e.Detail == "" {
		return e.Reason
	}
	return e.Reason + ": " + e.Detail
}

func routeState(r Route) string {
	switch {
	case !r.Connected:
		return "suspended"
	case r.Ejected:
		return "ejected"
	}
	return "serving"
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// bytesString formats a byte count with binary units.
func bytesString(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

// configLine says which configuration is in force: the file and the start
// of its hash, and when it was loaded.
func configLine(c *ConfigInfo, now time.Time) string {
	from := "flags only"
	if c.File != "" {
		from = c.File
		if len(c.SHA256) >= 12 {
			from += " (sha256 " + c.SHA256[:12] + ")"
		}
	}
	return fmt.Sprintf("%s, loaded %s (%s ago)", from, c.LoadedAt.Local().Format(time.DateTime), now.Sub(c.LoadedAt).Round(time.Second))
}
