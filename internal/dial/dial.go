// Package dial opens one libp2p stream and joins it to a reader and a
// writer, the way nc joins a TCP connection to a terminal: what
// `balancer dial` runs to try a route by hand.
package dial

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/libp2p-balancer/libp2p-balancer/internal/node"
)

// DefaultTimeout is Config.Timeout's default.
const DefaultTimeout = 30 * time.Second

// Config says what to dial.
type Config struct {
	// Key is the identity to dial with; nil makes a new one.
	Key crypto.PrivKey
	// Target is a multiaddr ending in /p2p/<peer ID>.
	Target string
	// Protocols are acceptable protocols, most preferred first.
	Protocols []protocol.ID
	// Timeout bounds connecting and negotiating a protocol. Default 30 s.
	Timeout time.Duration
	// Opened, when set, is called with the protocol the peer accepted,
	// once the stream is open.
	Opened func(protocol.ID)
}

// Run connects to cfg.Target, opens a stream on the first of cfg.Protocols
// the peer accepts, and copies in to the stream and the stream to out. When
// in ends, the stream is half-closed (the peer reads EOF). Run returns nil
// once the peer has closed its side of the stream and everything it sent
// is written to out; an error when anything fails, the peer resets the
// stream, or ctx is done. It does not wait for in once the peer is done.
func Run(ctx context.Context, cfg Config, in io.Reader, out io.Writer) error {
	if len(cfg.Protocols) == 0 {
		return errors.New("no protocol given")
	}
	ai, err := node.ParseAddrInfo(cfg.Target)
	if err != nil {
		return err
	}
	key := cfg.Key
	if key == nil {
		if key, _, err = crypto.GenerateEd25519Key(nil); err != nil {
			return err
		}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	h, err := node.New(node.Config{Key: key, LinkPeers: []peer.ID{ai.ID}})
	if err != nil {
		return err
	}
	defer h.Close()

	octx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	if err := h.Connect(octx, *ai); err != nil {
		return fmt.Errorf("connecting to %s: %w", ai.ID, err)
	}
	s, err := h.NewStream(octx, ai.ID, cfg.Protocols...)
	if err != nil {
		return fmt.Errorf("opening a stream on %v: %w", cfg.Protocols, err)
	}
	if cfg.Opened != nil {
		cfg.Opened(s.Protocol())
	}
	stop := context.AfterFunc(ctx, func() { s.Reset() })
	defer stop()

	sent := make(chan error, 1)
	go func() { sent <- send(s, in) }()
	received := receive(out, s)
	if received == nil {
		s.Close()
		return nil
	}
	s.Reset()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	// A failed write usually says more (the peer refused the protocol
	// before we read anything); take it if it is already there.
	select {
	case err := <-sent:
		if err != nil {
			return err
		}
	default:
	}
	return received
}

// send copies in to the stream and half-closes it at in's EOF.
func send(s network.Stream, in io.Reader) error {
	if _, err := io.Copy(s, in); err != nil {
		return fmt.Errorf("sending: %w", err)
	}
	if err := s.CloseWrite(); err != nil {
		return fmt.Errorf("closing the sending side: %w", err)
	}
	return nil
}

// receive copies the stream to out until the peer closes its side.
func receive(out io.Writer, s network.Stream) error {
	if _, err := io.Copy(out, s); err != nil {
		return fmt.Errorf("receiving: %w", err)
	}
	return nil
}
