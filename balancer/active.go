package balancer

import (
	"context"
	"sync"

	"github.com/libp2p/go-libp2p/core/network"
)

// activeSet tracks forwarded streams in flight so that Shutdown can wait for
// them and Close can reset them.
type activeSet struct {
	mu    sync.Mutex
	set   map[*pair]struct{}
	empty chan struct{} // closed while set is empty; replaced when it fills
}

// pair is the two ends of one forwarded stream.
type pair struct{ a, b network.Stream }

func (s *activeSet) init() {
	s.set = map[*pair]struct{}{}
	s.empty = make(chan struct{})
	close(s.empty)
}

func (s *activeSet) add(p *pair) {
	s.mu.Lock()
	if len(s.set) == 0 {
		s.empty = make(chan struct{})
	}
	s.set[p] = struct{}{}
	s.mu.Unlock()
}

func (s *activeSet) remove(p *pair) {
	s.mu.Lock()
	delete(s.set, p)
	if len(s.set) == 0 {
		close(s.empty)
	}
	s.mu.Unlock()
}

func (s *activeSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.set)
}

func (s *activeSet) wait(ctx context.Context) error {
	s.mu.Lock()
	empty := s.empty
	s.mu.Unlock()
	select {
	case <-empty:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *activeSet) resetAll() {
	s.mu.Lock()
	pairs := make([]*pair, 0, len(s.set))
	for p := range s.set {
		pairs = append(pairs, p)
	}
	s.mu.Unlock()
	for _, p := range pairs {
		p.a.Reset()
		p.b.Reset()
	}
}
