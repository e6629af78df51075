package balancer_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
)

// TestManyConcurrentStreams holds 500 forwarded streams open at once to one
// backend, over TCP and over QUIC. The backend answers none until all 500
// have arrived, so they are truly concurrent. Over QUIC this needs lanes:
// go-libp2p caps a QUIC connection at 256 concurrent streams per direction.
// The remote side is ten peers: the same QUIC cap applies to each of their
// connections to the balancer, and the default resource manager lets one
// remote peer open only about 64 inbound streams of one protocol.
func TestManyConcurrentStreams(t *testing.T) {
	eachTransport(t, func(t *testing.T, tr testnet.Transport) {
		const peers, perPeer = 10, 50
		const total = peers * perPeer
		a := newIdentity(t)
		f := newFixture(t, tr, []identity{a})
		var mu sync.Mutex
		arrived := 0
		all := make(chan struct{})
		const proto protocol.ID = "/test/many"
		be, _ := f.newBackend(a, map[protocol.ID]network.StreamHandler{proto: func(s network.Stream) {
			mu.Lock()
			arrived++
			if arrived == total {
				close(all)
			}
			mu.Unlock()
			select {
			case <-all:
				echo(s)
			case <-time.After(60 * time.Second):
				s.Reset()
			}
		}})
		waitRegistered(t, be, proto)
		ds := make([]host.Host, peers)
		for i := range ds {
			ds[i] = f.newPeer()
			waitServed(t, ds[i], f.host.ID(), true, proto)
		}
		var wg sync.WaitGroup
		errs := make(chan error, total)
		for i := 0; i < total; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs <- echoOnce(ds[i%peers], f, proto, []byte(fmt.Sprintf("stream %d", i)))
			}()
		}
		wg.Wait()
		close(errs)
		failed := 0
		var first error
		for err := range errs {
			if err != nil {
				failed++
				first = err
			}
		}
		if failed > 0 {
			mu.Lock()
			t.Fatalf("%d of %d streams failed (%d reached the backend); one error: %v", failed, total, arrived, first)
		}
	})
}

// echoOnce is roundTrip without testing.T, for use from many goroutines.
func echoOnce(d host.Host, f *fixture, proto protocol.ID, payload []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := d.NewStream(ctx, f.host.ID(), proto)
	if err != nil {
		return err
	}
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := s.Write(payload); err != nil {
		return err
	}
	if err := s.CloseWrite(); err != nil {
		return err
	}
	got := make([]byte, 0, len(payload))
	buf := make([]byte, 256)
	for {
		n, err := s.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return err
		}
	}
	if string(got) != string(payload) {
		return fmt.Errorf("echo %q, want %q", got, payload)
	}
	return nil
}
