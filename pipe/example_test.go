package pipe_test

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/libp2p-balancer/libp2p-balancer/pipe"
)

// A forwarding handler: each stream a client opens on the front protocol
// is carried to a backend, with live byte counters and an idle timeout.
func Example() {
	var h host.Host     // the balancer's host
	var backend peer.ID // chosen by some policy
	var bytesIn, bytesOut atomic.Int64

	cfg := &pipe.Config{
		Progress: func(dir pipe.Direction, n int) {
			if dir == pipe.AToB {
				bytesIn.Add(int64(n))
			} else {
				bytesOut.Add(int64(n))
			}
		},
		IdleTimeout: 5 * time.Minute,
	}
	h.SetStreamHandler("/example/1.0.0", func(client network.Stream) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		toBackend, err := h.NewStream(ctx, backend, "/example/1.0.0")
		if err != nil {
			_ = client.Reset()
			return
		}
		r := pipe.Join(client, toBackend, cfg)
		var pe *pipe.Error
		switch {
		case r.Err == nil:
		case errors.Is(r.Err, pipe.ErrIdleTimeout):
			slog.Debug("forward: idle", "in", r.AToB, "out", r.BToA)
		case errors.As(r.Err, &pe) && pe.Op == "read" && pe.Dir == pipe.BToA:
			slog.Info("forward: backend failed", "error", r.Err)
		default:
			slog.Debug("forward: ended", "error", r.Err)
		}
	})
}
