package main_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p-balancer/libp2p-balancer/internal/proctest"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/proxyproto"
)

// bin and whoamiBin are the binaries under test, built once by TestMain.
var bin, whoamiBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "balancer-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "balancer")
	whoamiBin = filepath.Join(dir, "whoami")
	if err := proctest.Build(bin, "."); err == nil {
		err = proctest.Build(whoamiBin, "../../examples/whoami")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a process of a binary under test. It is killed when the test
// ends, and its standard error is logged if the test failed.
type proc struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout proctest.SyncBuffer
	stderr proctest.SyncBuffer
	done   chan struct{}
	err    error // valid after done
}

type procOpts struct {
	stdin string // fed to standard input, which is then closed
	pipe  bool   // keep standard input open as p.stdin
	dir   string
}

// start runs the balancer binary with args.
func start(t *testing.T, name string, o procOpts, args ...string) *proc {
	t.Helper()
	if len(args) > 0 && args[0] == "serve" && !slices.Contains(args, "--admin") {
		// Several balancers run at once: each takes a free admin port
		// rather than the default 8242.
		args = append(args, "--admin", "127.0.0.1:0")
	}
	return startBin(t, bin, name, o, args...)
}

func startBin(t *testing.T, path, name string, o procOpts, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: exec.Command(path, args...), done: make(chan struct{})}
	p.cmd.Dir = o.dir
	p.cmd.Stdout = &p.stdout
	p.cmd.Stderr = &p.stderr
	if o.pipe {
		w, err := p.cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		p.stdin = w
	} else {
		p.cmd.Stdin = strings.NewReader(o.stdin)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.exited() {
			p.cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("--- %s %s\n--- stdout:\n%s--- stderr:\n%s", name, strings.Join(args, " "), p.stdout.String(), p.stderr.String())
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("%s still running after %v", p.name, timeout)
	}
	var ee *exec.ExitError
	switch {
	case p.err == nil:
		return 0
	case errors.As(p.err, &ee):
		return ee.ExitCode()
	default:
		t.Fatalf("%s: %v", p.name, p.err)
		return -1
	}
}

func (p *proc) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signalling %s: %v", p.name, err)
	}
}

// lines waits until the process has printed n lines to standard output and
// returns them.
func (p *proc) lines(t *testing.T, n int, timeout time.Duration) []string {
	t.Helper()
	var out []string
	testnet.Eventually(t, timeout, func() bool {
		s := p.stdout.String()
		if strings.Count(s, "\n") < n {
			return false
		}
		out = strings.Split(s, "\n")[:n]
		return true
	}, "%d lines on %s's standard output", n, p.name)
	return out
}

// waitOutput waits until standard output contains want.
func (p *proc) waitOutput(t *testing.T, want string, timeout time.Duration) {
	t.Helper()
	testnet.Eventually(t, timeout, func() bool { return strings.Contains(p.stdout.String(), want) },
		"%q on %s's standard output", want, p.name)
}

// serve starts `balancer serve` on a free loopback TCP port with args, and
// returns it with its printed address.
func serve(t *testing.T, name string, args ...string) (*proc, string) {
	t.Helper()
	p := start(t, name, procOpts{}, append([]string{"serve", "--listen", "/ip4/127.0.0.1/tcp/0"}, args...)...)
	addr := p.lines(t, 1, 20*time.Second)[0]
	if !strings.Contains(addr, "/p2p/") {
		t.Fatalf("%s printed %q, want a multiaddr ending in /p2p/<peer ID>", name, addr)
	}
	return p, addr
}

// dialResult is what one `balancer dial` run produced.
type dialResult struct {
	code           int
	stdout, stderr string
}

// dialOnce runs `balancer dial addr protos...` with input on standard input
// to completion.
func dialOnce(t *testing.T, input string, args ...string) dialResult {
	t.Helper()
	p := start(t, "dial", procOpts{stdin: input}, append([]string{"dial"}, args...)...)
	code := p.wait(t, 60*time.Second)
	return dialResult{code, p.stdout.String(), p.stderr.String()}
}

// waitRoute dials until a stream on proto through addr round-trips input,
// which is how a test knows that a sidecar has registered.
func waitRoute(t *testing.T, addr, proto, input, want string) {
	t.Helper()
	var last dialResult
	deadline := time.Now().Add(30 * time.Second)
	for {
		last = dialOnce(t, input, "--timeout", "5s", addr, proto)
		if last.code == 0 && strings.Contains(last.stdout, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no route to %s through %s: last dial exited %d, stdout %q, stderr %q", proto, addr, last.code, last.stdout, last.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// echoService is a local TCP service that echoes what it reads as it reads
// it and half-closes when the caller does. With proxy set it first reads a
// PROXY v2 header and reports it on headers.
type echoService struct {
	addr    string
	headers chan *proxyproto.Header
}

func startEcho(t *testing.T, proxy bool) *echoService {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &echoService{addr: l.Addr().String(), headers: make(chan *proxyproto.Header, 64)}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		l.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			tc := c.(*net.TCPConn)
			context.AfterFunc(ctx, func() { tc.Close() })
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer tc.Close()
				if proxy {
					h, err := proxyproto.Read(tc)
					if err != nil {
						fmt.Fprintf(tc, "bad PROXY header: %v", err)
						return
					}
					select {
					case s.headers <- h:
					default:
					}
				}
				if _, err := io.Copy(tc, tc); err == nil {
					tc.CloseWrite()
				}
			}()
		}
	}()
	return s
}

// oneLine checks that a failed command printed exactly one line on standard
// error, containing every string of want.
func oneLine(t *testing.T, stderr string, want ...string) {
	t.Helper()
	lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
	if len(lines) != 1 || lines[0] == "" {
		t.Fatalf("standard error has %d lines, want one:\n%s", len(lines), stderr)
	}
	for _, w := range want {
		if !strings.Contains(lines[0], w) {
			t.Fatalf("error line %q does not contain %q", lines[0], w)
		}
	}
}
