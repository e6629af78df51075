package proctest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
)

// Proc is a process of a binary under test. It is killed when the test
// ends, and its output is logged if the test failed.
type Proc struct {
	Name   string
	Cmd    *exec.Cmd
	Stdin  io.WriteCloser // with Options.Pipe; nil otherwise
	Stdout SyncBuffer
	Stderr SyncBuffer

	done   chan struct{}
	err    error     // valid after done
	ended  time.Time // valid after done
	cursor int       // lines of Stdout already consumed by Next
}

// Options configures Start.
type Options struct {
	// Stdin is fed to standard input, which is then closed.
	Stdin []byte
	// Pipe keeps standard input open as Proc.Stdin instead.
	Pipe bool
	// Dir is the working directory; "" means the test's.
	Dir string
	// Spawn starts the command; nil means cmd.Start. The fault tests start
	// processes from one long-lived thread (see test/netfault).
	Spawn func(cmd *exec.Cmd) error
}

// Start starts cmd as the process called name.
func Start(t testing.TB, name string, cmd *exec.Cmd, o Options) *Proc {
	t.Helper()
	p := &Proc{Name: name, Cmd: cmd, done: make(chan struct{})}
	cmd.Stdout = &p.Stdout
	cmd.Stderr = &p.Stderr
	if o.Dir != "" {
		cmd.Dir = o.Dir
	}
	if o.Pipe {
		w, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		p.Stdin = w
	} else {
		cmd.Stdin = bytes.NewReader(o.Stdin)
	}
	spawn := o.Spawn
	if spawn == nil {
		spawn = (*exec.Cmd).Start
	}
	if err := spawn(cmd); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		p.ended = time.Now()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("--- %s: %s\n--- stdout:\n%s--- stderr:\n%s", name, strings.Join(cmd.Args, " "), Tail(p.Stdout.String()), Tail(p.Stderr.String()))
		}
	})
	return p
}

// Tail keeps the end of a long output, and only the size and hash of one
// that is not text.
func Tail(s string) string {
	if !utf8.ValidString(s) || strings.ContainsRune(s, 0) {
		sum := sha256.Sum256([]byte(s))
		return fmt.Sprintf("%d bytes of binary data, sha256 %.16s…\n", len(s), hex.EncodeToString(sum[:]))
	}
	const max = 8000
	if len(s) > max {
		return "[...]" + s[len(s)-max:]
	}
	return s
}

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err is the process's exit error (nil for a zero exit status), once it
// has exited.
func (p *Proc) Err() error {
	<-p.done
	return p.err
}

// Ended is when the process was seen to exit; it waits for that.
func (p *Proc) Ended() time.Time {
	<-p.done
	return p.ended
}

// Kill kills the process (SIGKILL) and waits for it.
func (p *Proc) Kill() {
	if !p.Exited() {
		p.Cmd.Process.Kill()
		<-p.done
	}
}

// Signal sends sig to the process.
func (p *Proc) Signal(t testing.TB, sig os.Signal) {
	t.Helper()
	if err := p.Cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signalling %s: %v", p.Name, err)
	}
}

// Wait waits for the process to exit and returns its exit code.
func (p *Proc) Wait(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("%s still running after %v", p.Name, timeout)
	}
	var ee *exec.ExitError
	switch {
	case p.err == nil:
		return 0
	case errors.As(p.err, &ee):
		return ee.ExitCode()
	default:
		t.Fatalf("%s: %v", p.Name, p.err)
		return -1
	}
}

// Result is what a process that ran to completion produced.
type Result struct {
	Code           int
	Stdout, Stderr string
}

// Finish waits for the process to exit and returns its exit code and
// output.
func (p *Proc) Finish(t testing.TB, timeout time.Duration) Result {
	t.Helper()
	code := p.Wait(t, timeout)
	return Result{code, p.Stdout.String(), p.Stderr.String()}
}

// Lines waits until the process has printed n lines to standard output and
// returns them. It fails the test at once if the process exits first.
func (p *Proc) Lines(t testing.TB, n int, timeout time.Duration) []string {
	t.Helper()
	var out []string
	testnet.Eventually(t, timeout, func() bool {
		s := p.Stdout.String()
		if strings.Count(s, "\n") < n {
			return p.Exited()
		}
		out = strings.Split(s, "\n")[:n]
		return true
	}, "%d lines on %s's standard output", n, p.Name)
	if out == nil {
		t.Fatalf("%s exited (%v) after printing %q", p.Name, p.err, p.Stdout.String())
	}
	return out
}

// WaitOutput waits until standard output contains want.
func (p *Proc) WaitOutput(t testing.TB, want string, timeout time.Duration) {
	t.Helper()
	testnet.Eventually(t, timeout, func() bool { return strings.Contains(p.Stdout.String(), want) },
		"%q on %s's standard output", want, p.Name)
}

// Next waits for the next line of standard output, after those Next has
// already returned, that starts with one of the words, and returns its
// fields. It fails the test at once if the process exits first.
func (p *Proc) Next(t testing.TB, timeout time.Duration, words ...string) []string {
	t.Helper()
	var found []string
	testnet.Eventually(t, timeout, func() bool {
		lines := strings.Split(p.Stdout.String(), "\n")
		for ; p.cursor < len(lines)-1; p.cursor++ { // the last is unfinished
			f := strings.Fields(lines[p.cursor])
			for _, w := range words {
				if len(f) > 0 && f[0] == w {
					found = f
					p.cursor++
					return true
				}
			}
		}
		return p.Exited()
	}, "a line starting with %v on %s's standard output", words, p.Name)
	if found == nil {
		t.Fatalf("%s exited (%v) before printing a line starting with %v", p.Name, p.err, words)
	}
	return found
}

// CountErr counts the occurrences of s on standard error.
func (p *Proc) CountErr(s string) int {
	return strings.Count(p.Stderr.String(), s)
}

// WaitRoute runs dial (a `balancer dial` through a balancer) until it exits
// 0 with want on standard output, which is how a test knows that a backend
// has registered, and fails the test after timeout. what names the route in
// the failure.
func WaitRoute(t testing.TB, timeout time.Duration, what, want string, dial func() Result) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		res := dial()
		if res.Code == 0 && strings.Contains(res.Stdout, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no route to %s after %v: last dial exited %d, stdout %q, stderr %q", what, timeout, res.Code, res.Stdout, res.Stderr)
		}
		time.Sleep(100 * time.Millisecond) // a dial is a new process: poll slowly
	}
}
