// Package admin is the balancer's admin HTTP listener: Prometheus metrics
// at /metrics, a JSON API (/api/status, /api/routes, /api/backends,
// /api/events, an index of them all at /api, and POST /api/reload when the
// daemon can reload), liveness and readiness probes (/healthz, /readyz),
// and a self-refreshing status page at / that needs no external asset. It
// also has the typed Client of that API and PrintStatus, which `balancer
// status` prints.
//
// A daemon builds a Handler, checks its bind address with CheckBind (or
// lets Server.Start do it), and runs a Server:
//
//	events := admin.NewEvents(0)
//	// balancer.WithTracer(metrics.Tee(metricsTracer, events))
//	srv := &admin.Server{
//		Addr:    "127.0.0.1:8242",
//		Handler: &admin.Handler{Balancer: lb, Host: h, Gatherer: reg, Events: events},
//	}
//	err := srv.Start()
//	defer srv.Close()
//
// # Binding and authentication
//
// The listener binds to loopback unless told otherwise. Serving it on any
// other address needs an explicit opt-in (Server.Public) and a bearer token
// (Handler.Token) of at least MinTokenLength characters; CheckBind states
// the rule. With a token, every path but /healthz and /readyz asks for
// `Authorization: Bearer TOKEN`; a browser gets a form instead, which sets
// a cookie derived from the token. Without a token, only requests whose
// Host header names a loopback address (or localhost) are answered, so that
// a web page the operator visits cannot read the API through DNS
// rebinding. The token is never logged.
package admin

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
)

// RefreshInterval is how often the status page polls the API.
const RefreshInterval = time.Second

// Handler serves the admin API and the status page. Set its fields, then
// use it; do not change them afterwards. It is safe for concurrent use.
type Handler struct {
	// Balancer whose routes and backends are served. Required.
	Balancer *balancer.Balancer
	// Host is the Balancer's host, for readiness. Required for /readyz
	// to report ready.
	Host host.Host
	// Gatherer is what /metrics serves; nil means
	// prometheus.DefaultGatherer. A daemon passes the registry it gave
	// metrics.New and metrics.Libp2pOptions.
	Gatherer prometheus.Gatherer
	// Events supplies recent refusals and ejections; nil shows none.
	Events *Events
	// Token, when not empty, is the bearer token every request but
	// /healthz and /readyz must carry. Never logged.
	Token string
	// Ready, when set, replaces DefaultReady as the readiness check: nil
	// means ready, an error says why not.
	Ready func() error
	// Log receives failed authentications and internal errors; nil means
	// slog.Default().
	Log *slog.Logger
	// Config, when set, says which configuration is in force, for
	// /api/status and the page.
	Config func() *ConfigInfo
	// Reload, when set, serves POST /api/reload: it re-reads the
	// configuration and applies it, or returns the one-line reason it
	// refused the whole of it (the answer may still carry the
	// configuration in force).
	Reload func(context.Context) (*ReloadResult, error)

	once   sync.Once
	mux    *http.ServeMux
	cookie string // session cookie value, derived from Token
	log    *slog.Logger
}

// cookieName holds the session a browser gets from the login form.
const cookieName = "libp2p_balancer_admin"

func (h *Handler) init() {
	h.log = h.Log
	if h.log == nil {
		h.log = slog.Default()
	}
	h.log = h.log.With("component", "admin")
	if h.Token != "" {
		// The cookie holds a MAC of a fixed string under the token, not
		// the token itself, so a browser's cookie jar never holds the
		// credential an API client would use.
		m := hmac.New(sha256.New, []byte(h.Token))
		m.Write([]byte("libp2p-balancer admin session"))
		h.cookie = hex.EncodeToString(m.Sum(nil))
	}
	g := h.Gatherer
	if g == nil {
		g = prometheus.DefaultGatherer
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", h.serveHealthz)
	mux.HandleFunc("GET /readyz", h.serveReadyz)
	mux.Handle("GET /metrics", h.auth(promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(h.log.Handler(), slog.LevelWarn),
	})))
	mux.Handle("GET /api/status", h.auth(http.HandlerFunc(h.serveStatus)))
	mux.Handle("GET /api/routes", h.auth(http.HandlerFunc(h.serveRoutes)))
	mux.Handle("GET /api/backends", h.auth(http.HandlerFunc(h.serveBackends)))
	mux.Handle("GET /api/events", h.auth(http.HandlerFunc(h.serveEvents)))
	mux.Handle("GET /api", h.auth(http.HandlerFunc(h.serveIndex)))
	mux.Handle("GET /api/{$}", h.auth(http.HandlerFunc(h.serveIndex)))
	mux.Handle("POST /api/reload", h.auth(http.HandlerFunc(h.serveReload)))
	mux.Handle("GET /{$}", h.auth(http.HandlerFunc(h.servePage)))
	mux.HandleFunc("POST /login", h.serveLogin)
	h.mux = mux
}

// ServeHTTP serves one request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.once.Do(h.init)
	if h.Token == "" && !loopbackHost(r.Host) {
		// DNS rebinding: a site the operator visits resolves its own name
		// to 127.0.0.1 and reads the API with the browser's help. The
		// browser still sends that site's name as Host.
		http.Error(w, "without a token, the admin API answers only requests for localhost or a loopback address", http.StatusForbidden)
		return
	}
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Referrer-Policy", "no-referrer")
	w.Header().Set("Cache-Control", "no-store")
	h.mux.ServeHTTP(w, r)
}

// loopbackHost reports whether a Host header names localhost or a loopback
// IP address.
func loopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// auth admits a request that carries the token, as a bearer token or as
// the login cookie; without a configured token it admits all.
func (h *Handler) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h.Token == "" || h.authorized(r) {
			next.ServeHTTP(w, r)
			return
		}
		h.log.Info("admin request without a valid token", "remote", r.RemoteAddr, "path", r.URL.Path)
		if r.URL.Path == "/" {
			h.serveLoginPage(w, http.StatusUnauthorized, "")
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="libp2p-balancer admin"`)
		http.Error(w, "unauthorized: send the admin token as `Authorization: Bearer TOKEN`", http.StatusUnauthorized)
	})
}

func (h *Handler) authorized(r *http.Request) bool {
	if v, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return equal(v, h.Token)
	}
	if c, err := r.Cookie(cookieName); err == nil {
		return equal(c.Value, h.cookie)
	}
	return false
}

// equal compares secrets in constant time, also hiding their lengths.
func equal(a, b string) bool {
	ha, hb := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1
}

// serveLogin checks the token typed into the login form and, if right,
// gives the browser the session cookie. The form posts the token so that it
// never appears in a URL, a browser history or an access log.
func (h *Handler) serveLogin(w http.ResponseWriter, r *http.Request) {
	if h.Token == "" {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	if !equal(r.PostFormValue("token"), h.Token) {
		h.log.Info("admin login with a wrong token", "remote", r.RemoteAddr)
		h.serveLoginPage(w, http.StatusUnauthorized, "Wrong token.")
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name:     cookieName,
		Value:    h.cookie,
		Path:     "/",
		HttpOnly: true,
		SameSite: http.SameSiteStrictMode,
		Secure:   r.TLS != nil,
	})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (h *Handler) serveHealthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "ok")
}

// serveReadyz answers 200 when ready and 503 with the reason otherwise.
func (h *Handler) serveReadyz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := h.ready(); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready: %v\n", err)
		return
	}
	fmt.Fprintln(w, "ready")
}

func (h *Handler) ready() error {
	if h.Ready != nil {
		return h.Ready()
	}
	if h.Balancer != nil && h.Balancer.Draining() {
		// The routing-request handler stays while the balancer drains
		// (it answers DRAINING), so DefaultReady alone would still say
		// ready.
		return errors.New("the balancer is not serving (draining before it stops)")
	}
	return DefaultReady(h.Host)
}

// DefaultReady is the readiness check a Handler uses unless told
// otherwise: h listens on at least one address and serves the balancer
// protocol, that is the Balancer on it has not been closed. A Handler with
// a Balancer also reports unready from the moment Shutdown starts (see
// Balancer.Draining), so that a load balancer in front of it stops sending
// new peers its way while the streams in flight finish.
//
// Having routes is deliberately not required: backends must reach a ready
// balancer to register, so gating readiness on routes could keep a fresh
// deployment from ever becoming ready. The route count is on /api/status.
func DefaultReady(h host.Host) error {
	if h == nil {
		return errors.New("no host")
	}
	if len(h.Network().ListenAddresses()) == 0 {
		return errors.New("the host listens on no address")
	}
	if !slices.Contains(h.Mux().Protocols(), wire.RoutingRequestID) {
		return errors.New("the balancer is not serving (closed or shutting down)")
	}
	return nil
}

// snapshot is one consistent reading of the balancer for every endpoint.
type snapshot struct {
	now      time.Time
	routes   []balancer.RouteInfo
	backends []balancer.BackendInfo
	byID     map[string]*balancer.BackendInfo
}

func (h *Handler) snapshot() *snapshot {
	s := &snapshot{now: time.Now(), byID: map[string]*balancer.BackendInfo{}}
	if h.Balancer == nil {
		return s
	}
	s.routes = h.Balancer.Routes()
	s.backends = h.Balancer.Backends()
	for i := range s.backends {
		s.byID[s.backends[i].ID.String()] = &s.backends[i]
	}
	return s
}

func (s *snapshot) routeList() RouteList {
	out := RouteList{Time: s.now, Routes: make([]Route, 0, len(s.routes))}
	for _, r := range s.routes {
		id := r.Backend.String()
		rt := Route{
			Protocol:   string(r.Protocol),
			Backend:    id,
			Expires:    r.Expires,
			TTLSeconds: max(r.Expires.Sub(s.now).Seconds(), 0),
			Strategy:   r.Policy.Strategy.String(),
			Sticky:     r.Policy.Sticky,
			Weight:     r.Weight,
			Connected:  r.Connected,
		}
		if b := s.byID[id]; b != nil {
			rt.Ejected = b.EjectedUntil.After(s.now)
			rt.ActiveStreams = b.Streams
		}
		out.Routes = append(out.Routes, rt)
	}
	return out
}

func (s *snapshot) backendList() BackendList {
	protos := map[string][]string{}
	for _, r := range s.routes {
		id := r.Backend.String()
		protos[id] = append(protos[id], string(r.Protocol))
	}
	out := BackendList{Time: s.now, Backends: make([]Backend, 0, len(s.backends))}
	for _, b := range s.backends {
		id := b.ID.String()
		be := Backend{
			ID:        id,
			Addrs:     make([]string, 0, len(b.Addrs)),
			Connected: b.Connected,
			Healthy:   !b.EjectedUntil.After(s.now),
			Streams:   b.Streams,
			Outbound:  b.Outbound,
			BytesTo:   b.BytesTo,
			BytesFrom: b.BytesFrom,
			LinkFull:  b.LinkFull,
			Protocols: protos[id],
		}
		if be.Protocols == nil {
			be.Protocols = []string{}
		}
		if !be.Healthy {
			until := b.EjectedUntil
			be.EjectedUntil = &until
		}
		for _, a := range b.Addrs {
			be.Addrs = append(be.Addrs, a.String())
		}
		out.Backends = append(out.Backends, be)
	}
	return out
}

func (h *Handler) status(s *snapshot) Status {
	st := Status{Time: s.now, Addrs: []string{}}
	if h.Balancer != nil {
		st.PeerID = h.Balancer.ID().String()
		for _, a := range h.Balancer.Addrs() {
			st.Addrs = append(st.Addrs, a.String())
		}
		st.ActiveStreams = h.Balancer.ActiveStreams()
	}
	sort.Strings(st.Addrs)
	if h.Config != nil {
		st.Config = h.Config()
	}
	if h.Host != nil {
		st.Scopes = scopesOf(h.Host)
	}
	if err := h.ready(); err != nil {
		st.NotReady = err.Error()
	} else {
		st.Ready = true
	}
	st.Routes = len(s.routes)
	protos := map[string]bool{}
	for _, r := range s.routes {
		protos[string(r.Protocol)] = true
	}
	st.Protocols = len(protos)
	st.Backends = len(s.backends)
	for _, b := range s.backends {
		if b.Connected {
			st.BackendsConnected++
		}
		if b.EjectedUntil.After(s.now) {
			st.BackendsEjected++
		}
		st.BytesTo += b.BytesTo
		st.BytesFrom += b.BytesFrom
	}
	return st
}

func (h *Handler) eventList(now time.Time) EventList {
	return EventList{Time: now, Events: h.Events.Recent()}
}

func (h *Handler) serveStatus(w http.ResponseWriter, _ *http.Request) {
	h.writeJSON(w, h.status(h.snapshot()))
}

func (h *Handler) serveRoutes(w http.ResponseWriter, _ *http.Request) {
	h.writeJSON(w, h.snapshot().routeList())
}

func (h *Handler) serveBackends(w http.ResponseWriter, _ *http.Request) {
	h.writeJSON(w, h.snapshot().backendList())
}

func (h *Handler) serveEvents(w http.ResponseWriter, _ *http.Request) {
	h.writeJSON(w, h.eventList(time.Now()))
}

func (h *Handler) writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		h.log.Debug("writing an admin answer failed", "err", err)
	}
}

// nonce returns a fresh value for the page's Content-Security-Policy, which
// allows only the inline script and style that carry it.
func nonce() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}
