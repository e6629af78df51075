package harness

import (
	"context"
	"fmt"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// The setups compared.
const (
	Direct = "direct" // D → A
	Relay  = "relay"  // D → R → A over circuit relay v2
	LBIn   = "lb-in"  // D → LB → A, A a backend of balancer LB
	LBOut  = "lb-out" // B → LB → E, B a backend opening outbound streams
)

// AllSetups lists every setup in table order (NaiveIn and NaiveOut:
// naive.go; ServeIn and ServeOut: servesetup.go).
var AllSetups = []string{Direct, Relay, NaiveIn, NaiveOut, LBIn, LBOut, ServeIn, ServeOut}

// place says which agent runs each role and on which address it listens.
type place struct {
	peer, mid, back       Agent
	peerIP, midIP, backIP string
	// public filters the addresses one agent hands another: in network
	// namespaces, loopback addresses lead nowhere.
	public bool
}

// pair is one opener and the peer its streams go to.
type pair struct {
	agent  Agent
	host   string
	via    string // "host" or "backend"
	target peer.AddrInfo
}

// setup is one of the compared paths, built on one transport.
type setup struct {
	name, transport string
	pl              *place
	pairs           []pair
	// mid is the agent of the node in the middle (balancer or relay); nil
	// for direct. measure is the agent whose process memory the idle
	// workload reports: mid, or for direct the responder's.
	mid, measure Agent
	agents       []Agent
	addPair      func(ctx context.Context, i int) (pair, error)

	// lb-in only, for the registration workload.
	lb      peer.AddrInfo
	backend string

	// closers free what the setup owns outside the agents (a `balancer
	// serve` process).
	closers []func()
}

// close runs the setup's closers.
func (s *setup) close() {
	for _, c := range s.closers {
		c()
	}
	s.closers = nil
}

// procs returns one agent per distinct process of the setup.
func (s *setup) procs() []Agent {
	seen := map[string]bool{}
	var out []Agent
	for _, a := range s.agents {
		if !seen[a.Proc()] {
			seen[a.Proc()] = true
			out = append(out, a)
		}
	}
	return out
}

func newKey() ([]byte, peer.ID, error) {
	k, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		return nil, "", err
	}
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		return nil, "", err
	}
	raw, err := crypto.MarshalPrivateKey(k)
	return raw, id, err
}

// mkHost starts a host on agent a and returns its peer ID and addresses.
func (pl *place) mkHost(ctx context.Context, a Agent, spec HostSpec, ip string) (peer.AddrInfo, error) {
	if spec.Key == nil {
		k, _, err := newKey()
		if err != nil {
			return peer.AddrInfo{}, err
		}
		spec.Key = k
	}
	spec.ListenIP = ip
	res, err := a.Do(ctx, Request{Op: "host", Host: &spec})
	if err != nil {
		return peer.AddrInfo{}, fmt.Errorf("host %s: %w", spec.Name, err)
	}
	if res.Info == nil {
		return peer.AddrInfo{}, fmt.Errorf("host %s: no address info", spec.Name)
	}
	info := *res.Info
	if pl.public {
		var keep []ma.Multiaddr
		for _, addr := range info.Addrs {
			if !manet.IsIPLoopback(addr) {
				keep = append(keep, addr)
			}
		}
		info.Addrs = keep
	}
	return info, nil
}

func (pl *place) do(ctx context.Context, a Agent, r Request) error {
	_, err := a.Do(ctx, r)
	if err != nil {
		return fmt.Errorf("%s %s: %w", r.Op, r.Name, err)
	}
	return nil
}

func protoStrings() []string {
	out := make([]string, len(benchProtos))
	for i, p := range benchProtos {
		out[i] = string(p)
	}
	return out
}

// build starts one setup on transport tr.
func (pl *place) build(ctx context.Context, name, tr string) (*setup, error) {
	s := &setup{name: name, transport: tr, pl: pl}
	prefix := tr + "/" + name + "/"
	var err error
	switch name {
	case Direct:
		err = pl.buildDirect(ctx, s, prefix)
	case Relay:
		err = pl.buildRelay(ctx, s, prefix)
	case LBIn, LBOut, NaiveIn, NaiveOut:
		err = pl.buildBalancer(ctx, s, prefix)
	case ServeIn, ServeOut:
		err = pl.buildServe(ctx, s, prefix)
	default:
		return nil, fmt.Errorf("unknown setup %q", name)
	}
	if err != nil {
		s.close()
		return nil, err
	}
	if err := s.grow(ctx, 1); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

// buildDirect starts the Direct setup in s: backend A, which each peer D
// dials straight.
func (pl *place) buildDirect(ctx context.Context, s *setup, prefix string) error {
	tr := s.transport
	a, err := pl.mkHost(ctx, pl.back, HostSpec{Name: prefix + "A", Transport: tr, Limits: LimitsInfinite}, pl.backIP)
	if err != nil {
		return err
	}
	if err := pl.do(ctx, pl.back, Request{Op: "serve", Name: prefix + "A"}); err != nil {
		return err
	}
	s.measure = pl.back
	s.agents = []Agent{pl.peer, pl.back}
	s.addPair = func(ctx context.Context, i int) (pair, error) {
		d := fmt.Sprintf("%sD%d", prefix, i)
		if _, err := pl.mkHost(ctx, pl.peer, HostSpec{Name: d, Transport: tr, Limits: LimitsInfinite}, pl.peerIP); err != nil {
			return pair{}, err
		}
		if err := pl.do(ctx, pl.peer, Request{Op: "connect", Name: d, Target: &a, Protos: protoStrings()}); err != nil {
			return pair{}, err
		}
		return pair{agent: pl.peer, host: d, via: "host", target: peer.AddrInfo{ID: a.ID}}, nil
	}
	return nil
}

// buildRelay starts the Relay setup in s: relay R on the middle node and
// backend A reserved on it, which each peer D reaches by a circuit address.
func (pl *place) buildRelay(ctx context.Context, s *setup, prefix string) error {
	tr := s.transport
	r, err := pl.mkHost(ctx, pl.mid, HostSpec{Name: prefix + "R", Transport: tr, Limits: LimitsInfinite}, pl.midIP)
	if err != nil {
		return err
	}
	if err := pl.do(ctx, pl.mid, Request{Op: "relay", Name: prefix + "R"}); err != nil {
		return err
	}
	a, err := pl.mkHost(ctx, pl.back, HostSpec{Name: prefix + "A", Transport: tr, Limits: LimitsInfinite, Relay: true, NoListen: true}, pl.backIP)
	if err != nil {
		return err
	}
	if err := pl.do(ctx, pl.back, Request{Op: "serve", Name: prefix + "A"}); err != nil {
		return err
	}
	if err := pl.do(ctx, pl.back, Request{Op: "reserve", Name: prefix + "A", Target: &r}); err != nil {
		return err
	}
	var circuit []ma.Multiaddr
	for _, addr := range r.Addrs {
		c, err := ma.NewMultiaddr(addr.String() + "/p2p/" + r.ID.String() + "/p2p-circuit")
		if err != nil {
			return err
		}
		circuit = append(circuit, c)
	}
	target := peer.AddrInfo{ID: a.ID, Addrs: circuit}
	s.mid, s.measure = pl.mid, pl.mid
	s.agents = []Agent{pl.peer, pl.mid, pl.back}
	s.addPair = func(ctx context.Context, i int) (pair, error) {
		d := fmt.Sprintf("%sD%d", prefix, i)
		if _, err := pl.mkHost(ctx, pl.peer, HostSpec{Name: d, Transport: tr, Limits: LimitsInfinite, Relay: true, NoListen: true}, pl.peerIP); err != nil {
			return pair{}, err
		}
		if err := pl.do(ctx, pl.peer, Request{Op: "connect", Name: d, Target: &target, Protos: protoStrings()}); err != nil {
			return pair{}, err
		}
		return pair{agent: pl.peer, host: d, via: "host", target: peer.AddrInfo{ID: a.ID}}, nil
	}
	return nil
}

// buildBalancer starts the LBIn or LBOut setup in s: a balancer on the
// middle node and its backend, which peers D reach inbound (LBIn), or which
// opens outbound streams to peers E (LBOut).
func (pl *place) buildBalancer(ctx context.Context, s *setup, prefix string) error {
	tr, name := s.transport, s.name
	lbKey, lbID, err := newKey()
	if err != nil {
		return err
	}
	beKey, beID, err := newKey()
	if err != nil {
		return err
	}
	lb, err := pl.mkHost(ctx, pl.mid, HostSpec{Name: prefix + "LB", Transport: tr, Key: lbKey, Limits: LimitsLink, LinkPeers: []peer.ID{beID}}, pl.midIP)
	if err != nil {
		return err
	}
	if err := pl.do(ctx, pl.mid, Request{Op: "balancer", Name: prefix + "LB", Allow: []peer.ID{beID}, Naive: isNaive(name)}); err != nil {
		return err
	}
	be := prefix + "A"
	if outbound(name) {
		be = prefix + "B"
	}
	if _, err := pl.mkHost(ctx, pl.back, HostSpec{Name: be, Transport: tr, Key: beKey, Limits: LimitsLink, LinkPeers: []peer.ID{lbID}}, pl.backIP); err != nil {
		return err
	}
	if err := pl.do(ctx, pl.back, Request{Op: "backend", Name: be, Target: &lb}); err != nil {
		return err
	}
	s.mid, s.measure = pl.mid, pl.mid
	s.agents = []Agent{pl.peer, pl.mid, pl.back}
	s.lb, s.backend = lb, be
	s.addPair = pl.balancerPairs(prefix, tr, lb, be, outbound(name))
	return nil
}

// balancerPairs returns the addPair of a balancer setup: peers D opening
// streams to balancer lb (inbound), or targets E that backend be reaches
// through it (outbound).
func (pl *place) balancerPairs(prefix, tr string, lb peer.AddrInfo, be string, out bool) func(context.Context, int) (pair, error) {
	if !out {
		return func(ctx context.Context, i int) (pair, error) {
			d := fmt.Sprintf("%sD%d", prefix, i)
			if _, err := pl.mkHost(ctx, pl.peer, HostSpec{Name: d, Transport: tr, Limits: LimitsInfinite}, pl.peerIP); err != nil {
				return pair{}, err
			}
			if err := pl.do(ctx, pl.peer, Request{Op: "connect", Name: d, Target: &lb, Protos: protoStrings()}); err != nil {
				return pair{}, err
			}
			return pair{agent: pl.peer, host: d, via: "host", target: peer.AddrInfo{ID: lb.ID}}, nil
		}
	}
	return func(ctx context.Context, i int) (pair, error) {
		e := fmt.Sprintf("%sE%d", prefix, i)
		info, err := pl.mkHost(ctx, pl.peer, HostSpec{Name: e, Transport: tr, Limits: LimitsInfinite}, pl.peerIP)
		if err != nil {
			return pair{}, err
		}
		if err := pl.do(ctx, pl.peer, Request{Op: "serve", Name: e}); err != nil {
			return pair{}, err
		}
		return pair{agent: pl.back, host: be, via: "backend", target: info}, nil
	}
}

// grow adds pairs until there are n, each warmed up by a few
// request/response streams (connections dialled, protocols learnt).
func (s *setup) grow(ctx context.Context, n int) error {
	for len(s.pairs) < n {
		p, err := s.addPair(ctx, len(s.pairs))
		if err != nil {
			return fmt.Errorf("%s/%s: %w", s.transport, s.name, err)
		}
		if _, err := p.agent.Do(ctx, Request{Op: "run", Name: p.host, Via: p.via, Target: &p.target, Work: &Work{Kind: "rr", Count: 3, Size: 64}}); err != nil {
			return fmt.Errorf("%s/%s: warm-up: %w", s.transport, s.name, err)
		}
		s.pairs = append(s.pairs, p)
	}
	return nil
}
