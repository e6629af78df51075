package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"time"
)

// Agent runs node ops in some process: this one (local) or a child
// (remote). Each agent is one process for CPU and memory accounting, except
// that every local agent shares this process (see Driver.procs).
type Agent interface {
	Do(ctx context.Context, r Request) (Response, error)
	// Proc names the process: "self" or the child's label.
	Proc() string
	Close() error
}

// localAgent runs ops on a node in this process.
type localAgent struct{ n *node }

func newLocalAgent() *localAgent { return &localAgent{n: newNode()} }

func (a *localAgent) Do(ctx context.Context, r Request) (Response, error) {
	res := a.n.do(ctx, r)
	if res.Err != "" {
		return res, errors.New(res.Err)
	}
	return res, nil
}

func (a *localAgent) Proc() string { return "self" }

func (a *localAgent) Close() error {
	a.n.closeAll()
	return nil
}

// childEnv marks a process started as an agent: it serves requests on
// stdin and answers on stdout instead of running the benchmark.
const childEnv = "LIBP2P_BALANCER_BENCH_AGENT"

// IsChild reports whether this process was started as an agent.
func IsChild() bool { return os.Getenv(childEnv) != "" }

// ChildMain serves node ops on stdin/stdout, one JSON object per line, until
// stdin ends or a "quit" op; it returns the exit code. Logs go to stderr.
func ChildMain() int {
	n := newNode()
	dec := json.NewDecoder(bufio.NewReader(os.Stdin))
	enc := json.NewEncoder(os.Stdout)
	ctx := context.Background()
	for {
		var r Request
		if err := dec.Decode(&r); err != nil {
			if !errors.Is(err, io.EOF) {
				fmt.Fprintln(os.Stderr, "bench agent:", err)
			}
			n.closeAll()
			return 0
		}
		if r.Op == "quit" {
			n.closeAll()
			_ = enc.Encode(Response{})
			return 0
		}
		// Every op is bounded; the driver's own deadline is not carried
		// over the pipe.
		cctx, cancel := context.WithTimeout(ctx, opTimeout)
		res := n.do(cctx, r)
		cancel()
		if err := enc.Encode(res); err != nil {
			n.closeAll()
			return 1
		}
	}
}

// opTimeout bounds one op in a child agent.
const opTimeout = 10 * time.Minute

// remoteAgent is a child process running ChildMain, possibly in another
// network namespace.
type remoteAgent struct {
	label string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	dec   *json.Decoder
	enc   *json.Encoder

	mu     sync.Mutex
	closed bool
	done   chan struct{}
}

// startChild starts this executable as an agent. prefix, when not empty,
// is a command the executable runs under (ip netns exec NAME).
func startChild(label string, prefix []string) (*remoteAgent, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := append(append([]string{}, prefix...), exe)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), childEnv+"="+label)
	cmd.Stderr = &prefixWriter{prefix: "[" + label + "] ", w: os.Stderr}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	a := &remoteAgent{
		label: label, cmd: cmd, stdin: stdin,
		dec:  json.NewDecoder(bufio.NewReader(stdout)),
		enc:  json.NewEncoder(stdin),
		done: make(chan struct{}),
	}
	go func() {
		_ = cmd.Wait()
		close(a.done)
	}()
	return a, nil
}

func (a *remoteAgent) Proc() string { return a.label }

func (a *remoteAgent) Do(ctx context.Context, r Request) (Response, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return Response{}, fmt.Errorf("agent %s: closed", a.label)
	}
	type reply struct {
		res Response
		err error
	}
	ch := make(chan reply, 1)
	go func() {
		if err := a.enc.Encode(r); err != nil {
			ch <- reply{err: err}
			return
		}
		var res Response
		err := a.dec.Decode(&res)
		ch <- reply{res, err}
	}()
	select {
	case rep := <-ch:
		if rep.err != nil {
			return Response{}, fmt.Errorf("agent %s: %w", a.label, rep.err)
		}
		if rep.res.Err != "" {
			return rep.res, fmt.Errorf("agent %s: %s", a.label, rep.res.Err)
		}
		return rep.res, nil
	case <-ctx.Done():
		// The pipe is now out of step; the agent is unusable.
		a.closed = true
		a.kill()
		return Response{}, fmt.Errorf("agent %s: %s: %w", a.label, r.Op, ctx.Err())
	case <-a.done:
		a.closed = true
		return Response{}, fmt.Errorf("agent %s exited during %s", a.label, r.Op)
	}
}

// Close asks the child to close its hosts and exit, and kills it if it has
// not within 10 seconds.
func (a *remoteAgent) Close() error {
	a.mu.Lock()
	wasClosed := a.closed
	a.closed = true
	a.mu.Unlock()
	if !wasClosed {
		_ = a.enc.Encode(Request{Op: "quit"})
		_ = a.stdin.Close()
	}
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		a.kill()
		<-a.done
	}
	return nil
}

func (a *remoteAgent) kill() {
	if a.cmd.Process != nil {
		_ = a.cmd.Process.Kill()
	}
}

// prefixWriter prefixes each line a child writes to stderr.
type prefixWriter struct {
	mu     sync.Mutex
	prefix string
	w      io.Writer
	mid    bool
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]byte, 0, len(b)+len(p.prefix))
	for _, c := range b {
		if !p.mid {
			out = append(out, p.prefix...)
			p.mid = true
		}
		out = append(out, c)
		if c == '\n' {
			p.mid = false
		}
	}
	if _, err := p.w.Write(out); err != nil {
		return 0, err
	}
	return len(b), nil
}
