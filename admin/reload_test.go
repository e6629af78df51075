package admin_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p-balancer/libp2p-balancer/admin"
)

// TestReloadEndpoint: POST /api/reload calls the Handler's Reload behind
// the token, refuses a cross-site browser request, answers a refused file
// with 422 and its one-line reason, and /api/status shows the Config.
func TestReloadEndpoint(t *testing.T) {
	var calls atomic.Int32
	loaded := time.Now().Add(-time.Minute).Round(time.Second)
	info := &admin.ConfigInfo{File: "/etc/lb.yaml", SHA256: strings.Repeat("ab", 32), LoadedAt: loaded}
	fail := false
	h := &admin.Handler{
		Token:  token,
		Log:    slog.New(slog.DiscardHandler),
		Config: func() *admin.ConfigInfo { return info },
		Reload: func(context.Context) (*admin.ReloadResult, error) {
			calls.Add(1)
			if fail {
				return &admin.ReloadResult{Config: *info}, errors.New("ttl-default 10ms: must be at least 1s")
			}
			return &admin.ReloadResult{Changed: []string{"allow"}, Config: *info}, nil
		},
	}
	srv := &admin.Server{Addr: "127.0.0.1:0", Handler: h, Log: slog.New(slog.DiscardHandler)}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ctx := context.Background()

	if _, err := (&admin.Client{Addr: srv.URL()}).Reload(ctx); !errors.Is(err, admin.ErrUnauthorized) {
		t.Fatalf("reload without the token: %v", err)
	}
	c := &admin.Client{Addr: srv.URL(), Token: token}
	res, err := c.Reload(ctx)
	if err != nil || !res.OK || res.Changed[0] != "allow" || res.Config.File != info.File {
		t.Fatalf("reload: %+v, %v", res, err)
	}
	fail = true
	res, err = c.Reload(ctx)
	if !errors.Is(err, admin.ErrReloadRefused) || !strings.Contains(err.Error(), "ttl-default 10ms") || res.OK {
		t.Fatalf("refused reload: %+v, %v", res, err)
	}

	req, _ := http.NewRequest(http.MethodPost, srv.URL()+"/api/reload", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Origin", "https://evil.example")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-site reload: %s", resp.Status)
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("Reload called %d times, want 2", n)
	}

	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Config == nil || st.Config.SHA256 != info.SHA256 || !st.Config.LoadedAt.Equal(loaded) {
		t.Fatalf("status config %+v", st.Config)
	}
	var out strings.Builder
	if err := admin.PrintStatus(ctx, &out, c); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "/etc/lb.yaml (sha256 abababababab), loaded ") {
		t.Fatalf("balancer status does not show the config:\n%s", out.String())
	}
}
