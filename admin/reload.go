package admin

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"time"
)

// ConfigInfo says which configuration is in force: from which file, with
// what content, since when. It is part of /api/status.
type ConfigInfo struct {
	// File is the configuration file; "" when flags alone configure the
	// balancer.
	File string `json:"file,omitempty"`
	// SHA256 is the hex SHA-256 of the file's bytes as last read.
	SHA256 string `json:"sha256,omitempty"`
	// LoadedAt is when the configuration in force was loaded: at start or
	// at the last reload that succeeded.
	LoadedAt time.Time `json:"loaded_at"`
	// NeedsRestart lists the settings the file changes that take effect
	// only after a restart (identity, listen addresses, admin address,
	// ...); the values in force are still the old ones.
	NeedsRestart []string `json:"needs_restart,omitempty"`
}

// ReloadResult is the answer of POST /api/reload.
type ReloadResult struct {
	// OK is false when the file was refused; then nothing changed and
	// Error names the culprit in one line.
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	// Changed lists the settings the reload changed, by configuration
	// key; NeedsRestart those it could not change live.
	Changed      []string `json:"changed"`
	NeedsRestart []string `json:"needs_restart,omitempty"`
	// Config is the configuration in force after the answer.
	Config ConfigInfo `json:"config"`
}

// serveReload re-reads the configuration through h.Reload. A refused file
// is answered 422 with the one-line reason in Error.
func (h *Handler) serveReload(w http.ResponseWriter, r *http.Request) {
	if h.Reload == nil {
		http.Error(w, "this balancer has no configuration to reload", http.StatusNotFound)
		return
	}
	if crossSite(r) {
		// Without a token a loopback listener trusts its callers; a page
		// in the operator's browser must not post here for them.
		h.log.Info("cross-site reload request refused", "remote", r.RemoteAddr, "origin", r.Header.Get("Origin"))
		http.Error(w, "cross-site request refused", http.StatusForbidden)
		return
	}
	res, err := h.Reload(r.Context())
	if res == nil {
		res = &ReloadResult{}
	}
	if err != nil {
		res.OK, res.Error = false, err.Error()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnprocessableEntity)
		h.writeJSON(w, res)
		return
	}
	res.OK = true
	h.writeJSON(w, res)
}

// crossSite reports whether a browser sent r from another site: its Origin
// names another host, or Sec-Fetch-Site says so. A client that is not a
// browser sends neither.
func crossSite(r *http.Request) bool {
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return true
		}
	}
	switch r.Header.Get("Sec-Fetch-Site") {
	case "", "same-origin", "none":
		return false
	}
	return true
}

// ErrReloadRefused is returned by Client.Reload when the balancer refused
// the configuration; the error's text is the balancer's one-line reason.
var ErrReloadRefused = errors.New("reload refused")

// Reload asks the balancer to re-read its configuration (POST
// /api/reload). A refused file returns the answer and an error wrapping
// ErrReloadRefused.
func (c *Client) Reload(ctx context.Context) (*ReloadResult, error) {
	var res ReloadResult
	err := c.do(ctx, http.MethodPost, "/api/reload", &res, http.StatusUnprocessableEntity)
	if err != nil {
		return nil, err
	}
	if !res.OK {
		return &res, &reloadError{res.Error}
	}
	return &res, nil
}

type reloadError struct{ msg string }

func (e *reloadError) Error() string { return "reload refused: " + e.msg }
func (e *reloadError) Unwrap() error { return ErrReloadRefused }
