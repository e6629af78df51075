package admin_test

import (
	"io"
	"net/http"
	"regexp"
	"testing"
)

// TestLinksResolve: every link on the status page and on the /api index
// answers, /api included (issue 14: the footer read "/api" and /api was a
// 404).
func TestLinksResolve(t *testing.T) {
	f := newFixture(t, nil, "")
	base := "http://" + f.srv.ListenAddr().String()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	href := regexp.MustCompile(`href="(/[^"]*)"`)
	seen := map[string]bool{}
	for _, page := range []string{"/", "/api", "/api/"} {
		code, body := get(page)
		if code != http.StatusOK {
			t.Fatalf("%s: %d", page, code)
		}
		for _, m := range href.FindAllStringSubmatch(body, -1) {
			seen[m[1]] = true
		}
	}
	for _, want := range []string{"/api", "/api/status", "/api/events", "/metrics", "/readyz"} {
		if !seen[want] {
			t.Errorf("no page links to %s", want)
		}
	}
	for path := range seen {
		if code, _ := get(path); code != http.StatusOK {
			t.Errorf("link %s answers %d", path, code)
		}
	}
}
