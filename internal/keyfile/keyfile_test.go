package keyfile_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/libp2p-balancer/libp2p-balancer/internal/keyfile"
)

func TestLoadOrCreate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "id.key")
	if _, err := keyfile.Load(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load of a missing file: err = %v, want fs.ErrNotExist", err)
	}
	k1, created, err := keyfile.LoadOrCreate(path)
	if err != nil || !created {
		t.Fatalf("LoadOrCreate: created %v, err %v", created, err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", st.Mode().Perm())
	}
	k2, created, err := keyfile.LoadOrCreate(path)
	if err != nil || created {
		t.Fatalf("second LoadOrCreate: created %v, err %v", created, err)
	}
	if !k1.Equals(k2) {
		t.Fatal("the key changed")
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".identity-*")); len(left) > 0 {
		t.Fatalf("temporary files left behind: %v", left)
	}
}

// TestConcurrentCreate: instances started together on a missing shared key
// file all end up with the same peer ID.
func TestConcurrentCreate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "shared.key")
	ids := make([]peer.ID, 8)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k, _, err := keyfile.LoadOrCreate(path)
			if err != nil {
				t.Error(err)
				return
			}
			ids[i], _ = peer.IDFromPrivateKey(k)
		}()
	}
	wg.Wait()
	for _, id := range ids[1:] {
		if id != ids[0] {
			t.Fatalf("peer IDs differ: %v", ids)
		}
	}
}

func TestBadFiles(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage")
	os.WriteFile(garbage, []byte("not a key"), 0o600)
	big := filepath.Join(dir, "big")
	os.WriteFile(big, make([]byte, 1<<20), 0o600)
	for path, want := range map[string]string{
		garbage: "malformed key",
		dir:     "is a directory",
		big:     "not a key file",
	} {
		_, _, err := keyfile.LoadOrCreate(path)
		if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err = %v, want one naming the file and %q", path, err, want)
		}
	}
}

// TestCheckMode: a key file that group or others may read or write is
// reported, as ssh does; one that only its owner may use is not.
func TestCheckMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "id.key")
	if _, _, err := keyfile.LoadOrCreate(path); err != nil {
		t.Fatal(err)
	}
	for mode, open := range map[os.FileMode]bool{0o600: false, 0o400: false, 0o640: true, 0o644: true, 0o604: true, 0o620: true} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		err := keyfile.CheckMode(path)
		if got := errors.Is(err, keyfile.ErrTooOpen); got != open {
			t.Errorf("mode %04o: err = %v, want too open %v", mode, err, open)
		}
		if open && !strings.Contains(err.Error(), "chmod 600 "+path) {
			t.Errorf("mode %04o: %v does not say how to fix it", mode, err)
		}
	}
}
