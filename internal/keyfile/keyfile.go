// Package keyfile stores a libp2p identity in a file: exactly the bytes of
// go-libp2p's crypto.MarshalPrivateKey, the format every command of the
// balancer reads with --identity. Several balancer instances started with
// the same file share one peer ID.
package keyfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"github.com/libp2p/go-libp2p/core/crypto"
)

// maxKeySize bounds what Load reads: a marshalled RSA-4096 key is about
// 2.4 KiB, so anything much larger is not a key file.
const maxKeySize = 64 << 10

// Load reads the private key stored at path. Its errors name the file and
// say what is wrong with it (missing, unreadable, malformed); a missing file
// gives an error for which errors.Is(err, fs.ErrNotExist) holds.
func Load(path string) (crypto.PrivKey, error) {
	data, err := readSmall(path)
	if err != nil {
		return nil, fmt.Errorf("identity file %s: %w", path, bare(err))
	}
	key, err := crypto.UnmarshalPrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("identity file %s: malformed key (want the bytes of crypto.MarshalPrivateKey): %w", path, err)
	}
	return key, nil
}

// LoadOrCreate reads the private key stored at path or, when there is no
// such file, creates a new Ed25519 key there with mode 0600. created says
// which happened. Two processes racing to create the same file end up with
// the same key: the file appears whole or not at all.
func LoadOrCreate(path string) (key crypto.PrivKey, created bool, err error) {
	key, err = Load(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return key, false, err
	}
	key, err = create(path)
	if errors.Is(err, fs.ErrExist) {
		// Another process created it first: use its key.
		key, err = Load(path)
		return key, false, err
	}
	if err != nil {
		return nil, false, fmt.Errorf("identity file %s: creating: %w", path, bare(err))
	}
	return key, true, nil
}

// create writes a new key to a temporary file in path's directory and links
// it to path, which fails with fs.ErrExist if path appeared meanwhile, so
// that no reader ever sees a half-written key.
func create(path string) (crypto.PrivKey, error) {
	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		return nil, err
	}
	data, err := crypto.MarshalPrivateKey(key)
	if err != nil {
		return nil, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".identity-*") // mode 0600
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return nil, err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return nil, err
	}
	if err := tmp.Close(); err != nil {
		return nil, err
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, err
		}
		// A file system without hard links: exclusive create instead.
		f, ferr := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if ferr != nil {
			return nil, ferr
		}
		if _, werr := f.Write(data); werr != nil {
			f.Close()
			os.Remove(path)
			return nil, werr
		}
		if cerr := f.Close(); cerr != nil {
			return nil, cerr
		}
	}
	return key, nil
}

// ErrTooOpen is wrapped by CheckMode's error for a key file that users other
// than its owner may read or write.
var ErrTooOpen = errors.New("readable or writable by group or others")

// CheckMode reports a key file whose mode gives group or others any access,
// as ssh does for a private key (its "UNPROTECTED PRIVATE KEY FILE"): the
// error wraps ErrTooOpen and says how to fix it. Commands log it as a
// warning and go on, rather than refuse as ssh does, since container secret
// mounts are often 0644 or 0444 by default (Kubernetes, Docker) and a
// refusal there would be an outage. nil when the mode is fine, on Windows
// (whose permissions file modes do not describe), and for a file that
// cannot be examined (Load reports that).
func CheckMode(path string) error {
	if runtime.GOOS == "windows" {
		return nil
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil
	}
	if mode := st.Mode().Perm(); mode&0o077 != 0 {
		return fmt.Errorf("identity file %s: mode %04o: %w; anyone who reads it can act as this peer (chmod 600 %s)", path, mode, ErrTooOpen, path)
	}
	return nil
}

func readSmall(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxKeySize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxKeySize {
		return nil, fmt.Errorf("larger than %d bytes, not a key file", maxKeySize)
	}
	return data, nil
}

// bare strips the *fs.PathError wrapper, whose text repeats the path that
// the caller's message already names.
func bare(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
