package admin_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"

	"github.com/libp2p-balancer/libp2p-balancer/admin"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
)

const token = "0123456789abcdef0123456789abcdef"

func TestCheckBind(t *testing.T) {
	for _, c := range []struct {
		addr   string
		public bool
		token  string
		want   error // nil, ErrNotLoopback, ErrNoToken, or errBad for a malformed address
	}{
		{"127.0.0.1:8242", false, "", nil},
		{"127.0.0.53:0", false, "", nil},
		{"[::1]:8242", false, "", nil},
		{"localhost:8242", false, "", nil},
		{"127.0.0.1:8242", false, token, nil},
		{"0.0.0.0:8242", false, token, admin.ErrNotLoopback},
		{":8242", false, "", admin.ErrNotLoopback},
		{"192.0.2.1:8242", false, "", admin.ErrNotLoopback},
		{"admin.example:8242", false, "", admin.ErrNotLoopback},
		{"0.0.0.0:8242", true, "", admin.ErrNoToken},
		{"0.0.0.0:8242", true, "short", admin.ErrNoToken},
		{"0.0.0.0:8242", true, token, nil},
		{"[::]:8242", true, token, nil},
		{"8242", false, "", errBad},
		{"127.0.0.1:http-alt-nope", false, "", errBad},
	} {
		err := admin.CheckBind(c.addr, c.public, c.token)
		switch {
		case c.want == nil && err != nil:
			t.Errorf("CheckBind(%q, %v, %q) = %v, want nil", c.addr, c.public, c.token, err)
		case c.want == errBad && err == nil:
			t.Errorf("CheckBind(%q) = nil, want an error", c.addr)
		case c.want != nil && c.want != errBad && !errors.Is(err, c.want):
			t.Errorf("CheckBind(%q, %v, %q) = %v, want %v", c.addr, c.public, c.token, err, c.want)
		}
		if err != nil && c.token != "" && strings.Contains(err.Error(), c.token) {
			t.Errorf("CheckBind's error shows the token: %v", err)
		}
	}
}

var errBad = errors.New("malformed")

// TestServerRefusesPublicBind checks that Start applies CheckBind itself.
func TestServerRefusesPublicBind(t *testing.T) {
	srv := &admin.Server{Addr: "0.0.0.0:0", Handler: &admin.Handler{}, Log: slog.New(slog.DiscardHandler)}
	if err := srv.Start(); !errors.Is(err, admin.ErrNotLoopback) {
		t.Fatalf("Start on 0.0.0.0 = %v, want ErrNotLoopback", err)
	}
	srv.Public = true
	if err := srv.Start(); !errors.Is(err, admin.ErrNoToken) {
		t.Fatalf("public Start without token = %v, want ErrNoToken", err)
	}
}

func TestServerClose(t *testing.T) {
	srv := &admin.Server{Addr: "127.0.0.1:0", Handler: &admin.Handler{}, Log: slog.New(slog.DiscardHandler)}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err == nil {
		t.Error("second Start: no error")
	}
	addr := srv.ListenAddr().String()
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Close after Shutdown = %v, want net.ErrClosed", err)
	}
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Error("the listener still accepts connections after Close")
	}
	if err := srv.Start(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Start after Close = %v, want net.ErrClosed", err)
	}
}

// TestToken checks the bearer token, the browser login and the probes that
// stay open, and that the token is never logged.
func TestToken(t *testing.T) {
	a := lbtest.NewIdentity(t)
	f := newFixture(t, []lbtest.Identity{a}, token)
	logs := f.logs
	base := f.srv.URL()

	do := func(req *http.Request, c *http.Client) (int, string) {
		t.Helper()
		if c == nil {
			c = http.DefaultClient
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	get := func(path, bearer string) (int, string) {
		req, _ := http.NewRequest("GET", base+path, nil)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		return do(req, nil)
	}
	for _, p := range []string{"/metrics", "/api/status", "/api/routes", "/api/backends", "/api/events"} {
		if code, _ := get(p, ""); code != http.StatusUnauthorized {
			t.Errorf("%s without token: %d, want 401", p, code)
		}
		if code, _ := get(p, "wrong-token-wrong-token"); code != http.StatusUnauthorized {
			t.Errorf("%s with a wrong token: %d, want 401", p, code)
		}
		if code, _ := get(p, token); code != http.StatusOK {
			t.Errorf("%s with the token: %d, want 200", p, code)
		}
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, _ := get(p, ""); code != http.StatusOK {
			t.Errorf("%s without token: %d, want 200", p, code)
		}
	}

	// A browser gets the login form, posts the token and gets in with a
	// cookie that is not the token.
	code, body := get("/", "")
	if code != http.StatusUnauthorized || !strings.Contains(body, `action="/login"`) || strings.Contains(body, f.Host.ID().String()) {
		t.Fatalf("/ without token: %d, want the login form and no data:\n%s", code, body)
	}
	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar}
	post := func(tok string) (int, string) {
		req, _ := http.NewRequest("POST", base+"/login", strings.NewReader(url.Values{"token": {tok}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		return do(req, browser)
	}
	if code, body := post("nope"); code != http.StatusUnauthorized || !strings.Contains(body, "Wrong token") {
		t.Errorf("login with a wrong token: %d", code)
	}
	code, body = post(token) // follows the redirect to /
	if code != http.StatusOK || !strings.Contains(body, f.Host.ID().String()) {
		t.Fatalf("after login: %d, want the status page", code)
	}
	u, _ := url.Parse(base)
	for _, c := range jar.Cookies(u) {
		if strings.Contains(c.Value, token) {
			t.Errorf("cookie %s holds the token", c.Name)
		}
	}
	req, _ := http.NewRequest("GET", base+"/api/routes", nil)
	if code, _ := do(req, browser); code != http.StatusOK {
		t.Errorf("/api/routes with the login cookie: %d", code)
	}

	// The Client sends the token.
	if _, err := f.client.Status(context.Background()); err != nil {
		t.Errorf("Client with token: %v", err)
	}
	noToken := &admin.Client{Addr: f.client.Addr}
	if _, err := noToken.Status(context.Background()); !errors.Is(err, admin.ErrUnauthorized) {
		t.Errorf("Client without token: %v, want ErrUnauthorized", err)
	}

	if strings.Contains(logs.String(), token) {
		t.Errorf("the token was logged:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "without a valid token") {
		t.Errorf("failed authentications were not logged:\n%s", logs.String())
	}
}

// TestRebinding checks that without a token only loopback Host headers
// are answered.
func TestRebinding(t *testing.T) {
	f := newFixture(t, nil, "")
	for host, want := range map[string]int{
		f.srv.ListenAddr().String(): http.StatusOK,
		"localhost:8242":            http.StatusOK,
		"[::1]:8242":                http.StatusOK,
		"evil.example:8242":         http.StatusForbidden,
		"evil.example":              http.StatusForbidden,
	} {
		req, _ := http.NewRequest("GET", f.srv.URL()+"/api/status", nil)
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("Host %s: %d, want %d", host, resp.StatusCode, want)
		}
	}
}

// TestPageSecurity checks the status page's headers: a Content-Security-
// Policy that allows no external asset and only the page's own inline
// script and style.
func TestPageSecurity(t *testing.T) {
	f := newFixture(t, nil, "")
	resp, err := http.Get(f.srv.URL() + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	csp := resp.Header.Get("Content-Security-Policy")
	if !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "script-src 'nonce-") || !strings.Contains(csp, "connect-src 'self'") {
		t.Errorf("CSP: %q", csp)
	}
	for _, bad := range []string{"http://", "https://", "//cdn", "src=\"/", "href=\"http"} {
		if strings.Contains(string(body), bad) {
			t.Errorf("the page refers to an external asset (%q)", bad)
		}
	}
	if code := getCode(t, f.srv.URL()+"/nope"); code != http.StatusNotFound {
		t.Errorf("/nope: %d, want 404", code)
	}
}

func getCode(t *testing.T, u string) int {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestClientNotRunning(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = (&admin.Client{Addr: addr}).Status(context.Background())
	if err == nil || !strings.Contains(err.Error(), "balancer serve") {
		t.Fatalf("Status from a closed port: %v, want a hint at balancer serve", err)
	}
}
