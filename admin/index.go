package admin

import (
	"fmt"
	"html"
	"net/http"
)

// apiIndex lists what the admin listener serves, for /api: the status
// page's footer names /api, and a person who typed it got a 404 (issue 14).
var apiIndex = []struct{ path, what string }{
	{"/api/status", "the whole picture in one JSON document: identity, readiness, routes, backends, recent refusals"},
	{"/api/routes", "each routed protocol's pool and its backends, JSON"},
	{"/api/backends", "each backend with its routes, streams and health, JSON"},
	{"/api/events", "recent refusals and ejections, JSON"},
	{"/metrics", "Prometheus metrics, the balancer's and go-libp2p's"},
	{"/healthz", "liveness: 200 while the process runs"},
	{"/readyz", "readiness: 503 once the balancer drains or stops serving"},
	{"/", "the status page"},
}

// serveIndex answers /api with a short HTML list of the endpoints.
func (h *Handler) serveIndex(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	fmt.Fprint(w, "<!doctype html>\n<title>libp2p-balancer admin API</title>\n<h1>libp2p-balancer admin API</h1>\n<ul>\n")
	for _, e := range apiIndex {
		fmt.Fprintf(w, "<li><a href=\"%s\">%s</a>: %s</li>\n", e.path, e.path, html.EscapeString(e.what))
	}
	fmt.Fprint(w, "</ul>\n")
}
