package admin

import (
	"bytes"
	_ "embed"
	"html/template"
	"net/http"
	"time"
)

// page.html holds the status page and the login form, with their CSS and
// JavaScript inline: the page must work where the daemon runs, often with
// no route to a CDN, and a Content-Security-Policy that allows nothing else
// keeps a hostile protocol name from running script even if escaping
// failed.
//
//go:embed page.html
var pageHTML string

var pageTmpl = template.Must(template.New("admin").Parse(pageHTML))

// pageData fills the status page template. The page renders everything
// dynamic from Initial with the same script that renders each refresh, so
// there is one rendering path to keep right.
type pageData struct {
	Nonce          string
	PeerID         string
	Short          string
	Addrs          []string
	Initial        initialData
	RefreshMs      int64
	RefreshSeconds float64
	Error          string
}

type initialData struct {
	Status   Status      `json:"status"`
	Routes   RouteList   `json:"routes"`
	Backends BackendList `json:"backends"`
	Events   EventList   `json:"events"`
}

func (h *Handler) servePage(w http.ResponseWriter, _ *http.Request) {
	s := h.snapshot()
	st := h.status(s)
	d := pageData{
		Nonce:          nonce(),
		PeerID:         st.PeerID,
		Short:          shortID(st.PeerID),
		Addrs:          st.Addrs,
		RefreshMs:      RefreshInterval.Milliseconds(),
		RefreshSeconds: RefreshInterval.Seconds(),
		Initial: initialData{
			Status:   st,
			Routes:   s.routeList(),
			Backends: s.backendList(),
			Events:   h.eventList(s.now),
		},
	}
	h.render(w, http.StatusOK, "page", d)
}

func (h *Handler) serveLoginPage(w http.ResponseWriter, code int, msg string) {
	h.render(w, code, "login", pageData{Nonce: nonce(), Error: msg})
}

func (h *Handler) render(w http.ResponseWriter, code int, name string, d pageData) {
	var buf bytes.Buffer
	if err := pageTmpl.ExecuteTemplate(&buf, name, d); err != nil {
		h.log.Error("rendering the status page failed", "err", err)
		http.Error(w, "rendering the page failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; "+
		"script-src 'nonce-"+d.Nonce+"'; style-src 'nonce-"+d.Nonce+"'; "+
		"connect-src 'self'; img-src data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
	w.WriteHeader(code)
	_, _ = w.Write(buf.Bytes())
}

// shortID abbreviates a peer ID for titles and tables: enough of both ends
// to tell peers apart at a glance.
func shortID(id string) string {
	if len(id) <= 18 {
		return id
	}
	return id[:8] + "…" + id[len(id)-6:]
}

// ttlString formats a TTL for the terminal table.
func ttlString(d time.Duration) string {
	if d <= 0 {
		return "expired"
	}
	d = d.Truncate(time.Second)
	return d.String()
}
