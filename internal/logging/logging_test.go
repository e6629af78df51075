package logging_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"

	"github.com/libp2p-balancer/libp2p-balancer/internal/logging"
)

func TestFormats(t *testing.T) {
	var buf bytes.Buffer
	log, err := logging.New("json", "info", &buf)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("routes changed", "backend", "12D3KooW", "routes", 2)
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatalf("JSON format wrote %q: %v", buf.String(), err)
	}
	if m["msg"] != "routes changed" || m["level"] != "INFO" || m["routes"] != 2.0 {
		t.Errorf("JSON record: %v", m)
	}

	buf.Reset()
	log, err = logging.New("", "", &buf)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("hello", "k", "v")
	if got := buf.String(); !strings.Contains(got, `level=INFO msg=hello k=v`) {
		t.Errorf("text format wrote %q", got)
	}
}

func TestLevels(t *testing.T) {
	for _, c := range []struct {
		level      string
		debug, err bool // whether a debug and an error record are written
	}{
		{"debug", true, true},
		{"info", false, true},
		{"WARN", false, true},
		{"error", false, true},
	} {
		var buf bytes.Buffer
		log, err := logging.New("text", c.level, &buf)
		if err != nil {
			t.Fatalf("level %q: %v", c.level, err)
		}
		log.Debug("d")
		if got := strings.Contains(buf.String(), "msg=d"); got != c.debug {
			t.Errorf("level %q: debug written %v", c.level, got)
		}
		log.Error("e")
		if got := strings.Contains(buf.String(), "msg=e"); got != c.err {
			t.Errorf("level %q: error written %v", c.level, got)
		}
	}
}

func TestBadValues(t *testing.T) {
	if _, err := logging.New("xml", "info", nil); err == nil || !strings.Contains(err.Error(), `"xml"`) || !strings.Contains(err.Error(), "json") {
		t.Errorf("bad format: %v", err)
	}
	if _, err := logging.New("text", "loud", nil); err == nil || !strings.Contains(err.Error(), `"loud"`) || !strings.Contains(err.Error(), "debug") {
		t.Errorf("bad level: %v", err)
	}
}

// TestRedaction checks that secrets passed by mistake do not reach the log.
func TestRedaction(t *testing.T) {
	k, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := k.Raw()
	for _, format := range logging.Formats {
		var buf bytes.Buffer
		log, err := logging.New(format, "debug", &buf)
		if err != nil {
			t.Fatal(err)
		}
		log.Info("oops", "token", "s3cret-token", "Authorization", "Bearer s3cret-token", "identity", k)
		log.With("admin_token", "s3cret-token").Info("again")
		out := buf.String()
		if strings.Contains(out, "s3cret") || strings.Contains(out, string(raw)) {
			t.Errorf("%s: a secret was logged: %s", format, out)
		}
		if strings.Count(out, logging.Redacted) != 4 {
			t.Errorf("%s: want 4 redactions: %s", format, out)
		}
	}
}
