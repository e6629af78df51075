// Package demo runs the scenario libp2p-balancer was founded on, in one
// process on loopback, and narrates it: what `balancer demo` shows.
//
// A balancer LB routes protocols A1 and A2 to backend A and B1 and B2 to
// backend B, which are not reachable themselves. Peer D opens A1 on LB and
// reaches A, which sees D as the remote peer. B opens a stream through LB
// to peer E offering B1 then B2; E serves only B2, so the stream settles on
// B2, and E sees LB as the remote peer. A keeps its routes by extending
// them at half their TTL; a route that a backend (C) registers once and
// never extends expires, and D sees its protocol go.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/libp2p-balancer/libp2p-balancer/backend"
	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/node"
	"github.com/libp2p-balancer/libp2p-balancer/wire"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

// The demo's protocols.
const (
	A1 protocol.ID = "/demo/a1/1.0.0"
	A2 protocol.ID = "/demo/a2/1.0.0"
	B1 protocol.ID = "/demo/b1/1.0.0"
	B2 protocol.ID = "/demo/b2/1.0.0"
	C1 protocol.ID = "/demo/c1/1.0.0"
)

// The steps, in order; a StepError names one of them.
const (
	StepStart    = "start"
	StepRegister = "register"
	StepInbound  = "inbound"
	StepOutbound = "outbound"
	StepExtend   = "extend"
	StepExpire   = "expire"
)

// Steps lists the step names in the order they run.
var Steps = []string{StepStart, StepRegister, StepInbound, StepOutbound, StepExtend, StepExpire}

// StepError is what Run returns when a step fails.
type StepError struct {
	Step string
	Err  error
}

// Error names the step and says what went wrong.
func (e *StepError) Error() string { return "step " + e.Step + ": " + e.Err.Error() }

// Unwrap returns the step's error.
func (e *StepError) Unwrap() error { return e.Err }

// Options tunes Run; the zero value is ready to use.
type Options struct {
	// Out receives the narration; nil discards it.
	Out io.Writer
	// TTL is the route lifetime the balancer grants; default 2 s. The
	// demo takes about twice this long.
	TTL time.Duration
	// Logger receives the libraries' logs; nil discards them.
	Logger *slog.Logger
}

// Run runs every step, narrating to o.Out, and returns a *StepError naming
// the first step that failed, or nil. ctx bounds the whole run.
func Run(ctx context.Context, o Options) error {
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.TTL <= 0 {
		o.TTL = 2 * time.Second
	}
	o.TTL = o.TTL.Round(time.Second)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	r := &run{ctx: ctx, o: o, names: map[peer.ID]string{}}
	defer r.close()
	for i, step := range []func() error{r.start, r.register, r.inbound, r.outbound, r.extend, r.expire} {
		r.printf("\n[%d/%d %s]\n", i+1, len(Steps), Steps[i])
		if err := step(); err != nil {
			if ctx.Err() != nil {
				err = fmt.Errorf("%w (%w)", err, context.Cause(ctx))
			}
			r.printf("  FAILED: %v\n", err)
			return &StepError{Step: Steps[i], Err: err}
		}
	}
	r.printf("\nevery step succeeded\n")
	return nil
}

// run is the state of one demo.
type run struct {
	ctx   context.Context
	o     Options
	names map[peer.ID]string
	hosts []host.Host

	lbHost     host.Host
	lb         *balancer.Balancer
	a, b       *backend.Backend
	bHost      host.Host
	d, e       host.Host
	cKey       crypto.PrivKey
	cID        peer.ID
	seenA      chan seen
	seenE      chan seen
	aFirstSeen backend.Status
}

// seen is what a handler observed of a stream.
type seen struct {
	proto         protocol.ID
	remote, local peer.ID
	remoteAddr    ma.Multiaddr
}

func (r *run) printf(format string, args ...any) { fmt.Fprintf(r.o.Out, format, args...) }

// name is a peer's role and the tail of its ID.
func (r *run) name(p peer.ID) string {
	s := p.String()
	if n := r.names[p]; n != "" {
		return fmt.Sprintf("%s (…%s)", n, s[len(s)-6:])
	}
	return s
}

func (r *run) close() {
	if r.a != nil {
		r.a.Close()
	}
	if r.b != nil {
		r.b.Close()
	}
	if r.lb != nil {
		r.lb.Close()
	}
	for _, h := range slices.Backward(r.hosts) {
		h.Close()
	}
}

var loopback = ma.StringCast("/ip4/127.0.0.1/tcp/0")

// newHost starts a host with a new identity named role.
func (r *run) newHost(role string, listen bool, link []peer.ID, opts ...libp2p.Option) (host.Host, crypto.PrivKey, error) {
	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		return nil, nil, err
	}
	cfg := node.Config{Key: key, LinkPeers: link, Options: opts}
	if listen {
		cfg.Listen = []ma.Multiaddr{loopback}
	}
	h, err := node.New(cfg)
	if err != nil {
		return nil, nil, err
	}
	r.hosts = append(r.hosts, h)
	r.names[h.ID()] = role
	return h, key, nil
}

func newKey() (crypto.PrivKey, peer.ID, error) {
	k, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		return nil, "", err
	}
	id, err := peer.IDFromPrivateKey(k)
	return k, id, err
}

func (r *run) start() error {
	aKey, aID, err := newKey()
	if err != nil {
		return err
	}
	bKey, bID, err := newKey()
	if err != nil {
		return err
	}
	r.cKey, r.cID, err = newKey()
	if err != nil {
		return err
	}
	r.names[aID], r.names[bID], r.names[r.cID] = "A", "B", "C"
	// Ping off: every protocol the balancer host serves is reserved, and
	// the demo wants nothing in its view but the balancer's own.
	// Every peer of the demo is on loopback, which the default dial policy
	// refuses for outbound streams: the demo opts in, as a single-machine
	// setup does with --dial-loopback.
	dial := balancer.DefaultDialPolicy()
	dial.Loopback = true
	r.lbHost, _, err = r.newHost("LB", true, []peer.ID{aID, bID, r.cID}, libp2p.Ping(false),
		libp2p.ConnectionGater(&balancer.DialGater{Policy: dial}))
	if err != nil {
		return err
	}
	r.lb, err = balancer.New(r.lbHost,
		balancer.WithAllow(aID, "/demo/a*"),
		balancer.WithAllow(bID, "/demo/b*"),
		balancer.WithAllow(r.cID, string(C1)),
		balancer.WithTTL(r.o.TTL, 2*r.o.TTL),
		balancer.WithDialPolicy(dial),
		balancer.WithLogger(r.o.Logger))
	if err != nil {
		return err
	}
	addrs, err := node.Addrs(r.lbHost, []ma.Multiaddr{loopback})
	if err != nil {
		return err
	}
	r.printf("  LB is the balancer, peer %s, listening on\n", r.lbHost.ID())
	for _, a := range addrs {
		r.printf("    %s\n", a)
	}
	// C is only named here, and introduced where it appears (issue 14).
	r.printf("  it allows backend A to register /demo/a*, backend B /demo/b*, and C, a third backend that joins in step %d, only %s; it grants a TTL of %v\n",
		slices.Index(Steps, StepExpire)+1, C1, r.o.TTL)

	lbInfo := peer.AddrInfo{ID: r.lbHost.ID(), Addrs: r.lbHost.Addrs()}
	_, r.a, err = r.newBackend("A", aKey, lbInfo)
	if err != nil {
		return err
	}
	r.bHost, r.b, err = r.newBackend("B", bKey, lbInfo)
	if err != nil {
		return err
	}
	r.printf("  A and B are backends: they do not listen at all, they only dial LB\n")
	return nil
}

func (r *run) newBackend(role string, key crypto.PrivKey, lb peer.AddrInfo) (host.Host, *backend.Backend, error) {
	h, err := node.New(node.Config{Key: key, LinkPeers: []peer.ID{lb.ID}})
	if err != nil {
		return nil, nil, err
	}
	r.hosts = append(r.hosts, h)
	be, err := backend.New(h, []peer.AddrInfo{lb}, backend.WithLogger(r.o.Logger.With("backend", role)))
	if err != nil {
		return nil, nil, err
	}
	return h, be, nil
}

// waitFor polls cond every 10 ms until it holds, ctx is done or timeout
// passes.
func (r *run) waitFor(timeout time.Duration, what string, cond func() bool) error {
	ctx, cancel := context.WithTimeout(r.ctx, timeout)
	defer cancel()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("timed out after %v waiting for %s", timeout, what)
		case <-t.C:
		}
	}
	return nil
}

func (r *run) register() error {
	r.seenA = make(chan seen, 4)
	record := func(ch chan seen, prefix string) network.StreamHandler {
		return func(s network.Stream) {
			ch <- seen{s.Protocol(), s.Conn().RemotePeer(), s.Conn().LocalPeer(), s.Conn().RemoteMultiaddr()}
			reply(s, prefix)
		}
	}
	r.a.SetStreamHandler(A1, record(r.seenA, "A"))
	r.a.SetStreamHandler(A2, record(r.seenA, "A"))
	r.b.SetStreamHandler(B1, func(s network.Stream) { reply(s, "B") })
	r.b.SetStreamHandler(B2, func(s network.Stream) { reply(s, "B") })
	for _, x := range []struct {
		name   string
		be     *backend.Backend
		protos []protocol.ID
	}{{"A", r.a, []protocol.ID{A1, A2}}, {"B", r.b, []protocol.ID{B1, B2}}} {
		var st backend.Status
		err := r.waitFor(10*time.Second, x.name+"'s registration", func() bool {
			st = x.be.Status()[0]
			for _, p := range x.protos {
				if !slices.Contains(st.Protocols, p) {
					return false
				}
			}
			return true
		})
		if err != nil {
			return fmt.Errorf("%w (last error: %v)", err, st.LastError)
		}
		ttl := st.Expires.Sub(st.Registered).Round(time.Second)
		if ttl != r.o.TTL {
			return fmt.Errorf("%s was granted a TTL of %v, want %v", x.name, ttl, r.o.TTL)
		}
		r.printf("  %s sent a routing request for %s on %s\n", x.name, joinIDs(x.protos), wire.RoutingRequestID)
		r.printf("  LB answered OK: routed to %s with a TTL of %v (until %s)\n", x.name, ttl, st.Expires.Format("15:04:05.000"))
		if x.name == "A" {
			r.aFirstSeen = st
		}
	}
	return nil
}

// reply answers a stream with "<who> got <request> on <protocol>" after the
// caller's half-close, then closes.
func reply(s network.Stream, who string) {
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	req, err := io.ReadAll(s)
	if err != nil {
		s.Reset()
		return
	}
	if _, err := fmt.Fprintf(s, "%s got '%s' on %s", who, req, s.Protocol()); err != nil {
		s.Reset()
		return
	}
	s.Close()
}

// exchange opens a stream from h to p, sends msg, half-closes and returns
// the answer with the accepted protocol.
func (r *run) exchange(open func(context.Context) (network.Stream, error), msg string) (string, protocol.ID, error) {
	ctx, cancel := context.WithTimeout(r.ctx, 10*time.Second)
	defer cancel()
	s, err := open(ctx)
	if err != nil {
		return "", "", err
	}
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(s, msg); err != nil {
		s.Reset()
		return "", "", err
	}
	if err := s.CloseWrite(); err != nil {
		s.Reset()
		return "", "", err
	}
	resp, err := io.ReadAll(s)
	if err != nil {
		s.Reset()
		return "", "", err
	}
	s.Close()
	return string(resp), s.Protocol(), nil
}

// served reports whether D's identify view of LB lists p.
func (r *run) served(p protocol.ID) bool {
	have, _ := r.d.Peerstore().GetProtocols(r.lbHost.ID())
	return slices.Contains(have, p)
}

func (r *run) inbound() error {
	var err error
	r.d, _, err = r.newHost("D", false, nil)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.ctx, 10*time.Second)
	defer cancel()
	if err := r.d.Connect(ctx, peer.AddrInfo{ID: r.lbHost.ID(), Addrs: r.lbHost.Addrs()}); err != nil {
		return fmt.Errorf("D connecting to LB: %w", err)
	}
	if err := r.waitFor(10*time.Second, "D to see A1 in LB's identify", func() bool { return r.served(A1) }); err != nil {
		return err
	}
	have, _ := r.d.Peerstore().GetProtocols(r.lbHost.ID())
	r.printf("  D, an ordinary peer, connects to LB; LB's identify lists %s\n", joinIDs(demoProtocols(have)))
	resp, _, err := r.exchange(func(ctx context.Context) (network.Stream, error) {
		return r.d.NewStream(ctx, r.lbHost.ID(), A1)
	}, "hello from D")
	if err != nil {
		return fmt.Errorf("D's stream on A1: %w", err)
	}
	var got seen
	select {
	case got = <-r.seenA:
	case <-time.After(5 * time.Second):
		return errors.New("A's handler never ran")
	}
	r.printf("  D opens a stream to LB on %s; LB forwards it to A on %s\n", A1, wire.ForwardID)
	r.printf("  A's handler sees protocol %s, remote peer %s, remote address %s, local peer %s\n",
		got.proto, r.name(got.remote), got.remoteAddr, r.name(got.local))
	if got.proto != A1 || got.remote != r.d.ID() || got.local != r.lbHost.ID() {
		return fmt.Errorf("A saw protocol %s from %s as %s; want %s from D as LB", got.proto, got.remote, got.local, A1)
	}
	r.printf("  D sent %q and read back %q\n", "hello from D", resp)
	return nil
}

func (r *run) outbound() error {
	var err error
	r.e, _, err = r.newHost("E", true, nil)
	if err != nil {
		return err
	}
	r.seenE = make(chan seen, 1)
	r.e.SetStreamHandler(B2, func(s network.Stream) {
		r.seenE <- seen{s.Protocol(), s.Conn().RemotePeer(), s.Conn().LocalPeer(), s.Conn().RemoteMultiaddr()}
		reply(s, "E")
	})
	r.printf("  E is another ordinary peer; it serves %s only, not %s\n", B2, B1)
	// B knows where E is; it passes the address to LB as a dial hint.
	r.bHost.Peerstore().AddAddrs(r.e.ID(), r.e.Addrs(), peerstore.TempAddrTTL)
	var proto protocol.ID
	resp, proto, err := r.exchange(func(ctx context.Context) (network.Stream, error) {
		s, err := r.b.NewStream(ctx, r.e.ID(), B1, B2)
		if err == nil {
			proto = s.Protocol()
		}
		return s, err
	}, "hello from B")
	if err != nil {
		return fmt.Errorf("B's stream to E: %w", err)
	}
	r.printf("  B asks LB, on %s, for a stream to E on %s or else %s\n", wire.ForwardID, B1, B2)
	r.printf("  LB dials E, which accepts %s; LB answers B OK with protocol %s\n", proto, proto)
	if proto != B2 {
		return fmt.Errorf("the stream settled on %s, want %s", proto, B2)
	}
	var got seen
	select {
	case got = <-r.seenE:
	case <-time.After(5 * time.Second):
		return errors.New("E's handler never ran")
	}
	r.printf("  E's handler sees remote peer %s: B stays hidden behind LB's peer ID\n", r.name(got.remote))
	if got.remote != r.lbHost.ID() {
		return fmt.Errorf("E saw remote peer %s, want LB %s", got.remote, r.lbHost.ID())
	}
	r.printf("  B sent %q and read back %q\n", "hello from B", resp)
	return nil
}

func (r *run) extend() error {
	first := r.aFirstSeen
	r.printf("  A's routes were granted until %s; A extends them at half the TTL\n", first.Expires.Format("15:04:05.000"))
	var st backend.Status
	err := r.waitFor(3*r.o.TTL+5*time.Second, "A to extend its routes", func() bool {
		st = r.a.Status()[0]
		return st.Registered.After(first.Registered)
	})
	if err != nil {
		return err
	}
	r.printf("  at %s A sent the same routing request again; LB extended the routes until %s\n",
		st.Registered.Format("15:04:05.000"), st.Expires.Format("15:04:05.000"))
	// Wait past the first expiry and show the route still works.
	wait := time.Until(first.Expires) + 200*time.Millisecond
	select {
	case <-r.ctx.Done():
		return r.ctx.Err()
	case <-time.After(wait):
	}
	resp, _, err := r.exchange(func(ctx context.Context) (network.Stream, error) {
		return r.d.NewStream(ctx, r.lbHost.ID(), A2)
	}, "still there?")
	if err != nil {
		return fmt.Errorf("D's stream on A2 after the first TTL: %w", err)
	}
	select {
	case <-r.seenA:
	case <-time.After(5 * time.Second):
		return errors.New("A's handler never ran")
	}
	r.printf("  %s after the first expiry, D's stream on %s still reaches A: %q\n",
		time.Since(first.Expires).Round(10*time.Millisecond), A2, resp)
	return nil
}

func (r *run) expire() error {
	c, _, err := r.newHostWithKey("C", r.cKey)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.ctx, 10*time.Second)
	defer cancel()
	if err := c.Connect(ctx, peer.AddrInfo{ID: r.lbHost.ID(), Addrs: r.lbHost.Addrs()}); err != nil {
		return fmt.Errorf("C connecting to LB: %w", err)
	}
	// C speaks the routing protocol by hand: one request and never an
	// extension, as a backend that froze would.
	s, err := c.NewStream(ctx, r.lbHost.ID(), wire.RoutingRequestID)
	if err != nil {
		return fmt.Errorf("C's routing-request stream: %w", err)
	}
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	req := &pb.RoutingRequest{Protocols: []string{string(C1)}, TtlSeconds: uint32(r.o.TTL / time.Second)}
	var resp pb.RoutingResponse
	if err = wire.WriteMsg(s, req); err == nil {
		err = wire.NewReader(s).ReadMsg(&resp)
	}
	s.Close()
	if err != nil {
		return fmt.Errorf("C's routing request: %w", err)
	}
	if resp.GetStatus() != pb.Status_OK {
		return fmt.Errorf("C's routing request refused: %s %s", resp.GetStatus(), resp.GetText())
	}
	registered := time.Now()
	ttl := time.Duration(resp.GetTtlSeconds()) * time.Second
	r.printf("  C, a third allowed backend, registers %s once, with a TTL of %v, and then never extends it\n", C1, ttl)
	if err := r.waitFor(ttl, "D to see "+string(C1)+" in LB's identify", func() bool { return r.served(C1) }); err != nil {
		return err
	}
	r.printf("  D sees %s among LB's protocols\n", C1)
	if err := r.waitFor(ttl+5*time.Second, "C's route to expire", func() bool { return !r.served(C1) }); err != nil {
		return err
	}
	r.printf("  %v later the route has expired: LB's identify no longer lists %s\n",
		time.Since(registered).Round(100*time.Millisecond), C1)
	_, _, err = r.exchange(func(ctx context.Context) (network.Stream, error) {
		return r.d.NewStream(ctx, r.lbHost.ID(), C1)
	}, "anyone?")
	if err == nil {
		return fmt.Errorf("a stream on %s worked after its route expired", C1)
	}
	r.printf("  and a new stream on it is refused at negotiation: %v\n", err)
	if !r.served(A1) || !r.served(B2) {
		return errors.New("A's or B's routes went away with C's")
	}
	r.printf("  A's and B's routes, extended all along, are still there\n")
	return nil
}

func (r *run) newHostWithKey(role string, key crypto.PrivKey) (host.Host, crypto.PrivKey, error) {
	h, err := node.New(node.Config{Key: key, LinkPeers: []peer.ID{r.lbHost.ID()}})
	if err != nil {
		return nil, nil, err
	}
	r.hosts = append(r.hosts, h)
	r.names[h.ID()] = role
	return h, key, nil
}

func joinIDs(ps []protocol.ID) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = string(p)
	}
	return strings.Join(s, ", ")
}

// demoProtocols keeps the demo's own protocols of an identify list, sorted.
func demoProtocols(ps []protocol.ID) []protocol.ID {
	var out []protocol.ID
	for _, p := range ps {
		if strings.HasPrefix(string(p), "/demo/") {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}
