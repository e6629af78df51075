package backend

import (
	"context"
	"errors"

	ic "github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/libp2p-balancer/libp2p-balancer/pipe"
)

// ErrNotThroughBalancer is returned by operations that a forwarded stream's
// connection cannot carry: the connection is the balancer's, so opening
// another stream "on" it would reach the balancer, not the remote peer. Use
// Backend.NewStream to reach the remote peer instead.
var ErrNotThroughBalancer = errors.New("backend: not possible on a forwarded connection; use Backend.NewStream")

// stream is a forward stream dressed as the stream the remote peer sees: its
// protocol is the routed one and its connection names the remote peer, with
// the balancer's shared peer ID as the local peer.
type stream struct {
	network.Stream
	proto protocol.ID
	conn  *conn
	// inflight is the Backend's group of streams in flight, where this
	// one counts, under its embedded Stream, until it is closed or reset.
	inflight *pipe.Group
}

func newStream(s network.Stream, proto protocol.ID, local, remote peer.ID, raddr ma.Multiaddr, inflight *pipe.Group) *stream {
	st := &stream{Stream: s, proto: proto, inflight: inflight}
	st.conn = &conn{Conn: s.Conn(), local: local, remote: remote, raddr: raddr, own: st}
	return st
}

// Close, Reset and ResetWithError end the stream for Drain as they end it
// for the host, which drops a stream from its connection on each of them.
func (s *stream) Close() error {
	err := s.Stream.Close()
	s.inflight.Remove(s.Stream)
	return err
}

func (s *stream) Reset() error {
	err := s.Stream.Reset()
	s.inflight.Remove(s.Stream)
	return err
}

func (s *stream) ResetWithError(code network.StreamErrorCode) error {
	err := s.Stream.ResetWithError(code)
	s.inflight.Remove(s.Stream)
	return err
}

// Read and Write end the stream for Drain when it was reset: by the far
// end, or by the host when its connection closed (the host then resets
// the streams underneath, past this wrapper). Nothing more can move on
// it, and a handler that never closes it must not hold Drain up.
func (s *stream) Read(p []byte) (int, error) {
	n, err := s.Stream.Read(p)
	if err != nil && errors.Is(err, network.ErrReset) {
		s.inflight.Remove(s.Stream)
	}
	return n, err
}

func (s *stream) Write(p []byte) (int, error) {
	n, err := s.Stream.Write(p)
	if err != nil && errors.Is(err, network.ErrReset) {
		s.inflight.Remove(s.Stream)
	}
	return n, err
}

func (s *stream) Protocol() protocol.ID         { return s.proto }
func (s *stream) SetProtocol(protocol.ID) error { return ErrNotThroughBalancer }
func (s *stream) Conn() network.Conn            { return s.conn }

// Scope returns the stream's resource scope, in which SetService always
// succeeds. The stream is already accounted under the balancer's service
// (wire.ServiceName), and go-libp2p refuses a second SetService, which would
// make services such as ping reset every stream they are given.
func (s *stream) Scope() network.StreamScope { return scope{s.Stream.Scope()} }

type scope struct{ network.StreamScope }

func (scope) SetService(string) error { return nil }

// conn is the connection a forwarded stream appears to travel on: the one
// between the balancer's shared identity and the remote peer. Everything not
// overridden here describes the real link to the balancer.
type conn struct {
	network.Conn
	local  peer.ID
	remote peer.ID
	raddr  ma.Multiaddr
	// own is the forwarded stream: closing this "connection" must end
	// only the remote peer's stream, never the link to the balancer that
	// every other forwarded stream shares.
	own *stream
}

// Close resets the forwarded stream, which is all of the remote peer's
// connection that this backend holds.
func (c *conn) Close() error { return c.own.Reset() }

func (c *conn) LocalPeer() peer.ID  { return c.local }
func (c *conn) RemotePeer() peer.ID { return c.remote }

// RemotePublicKey returns the remote peer's key when its peer ID embeds it
// (Ed25519 and other small keys); nil otherwise.
func (c *conn) RemotePublicKey() ic.PubKey {
	k, err := c.remote.ExtractPublicKey()
	if err != nil {
		return nil
	}
	return k
}

func (c *conn) RemoteMultiaddr() ma.Multiaddr {
	if c.raddr == nil {
		return c.Conn.RemoteMultiaddr()
	}
	return c.raddr
}

func (c *conn) NewStream(context.Context) (network.Stream, error) {
	return nil, ErrNotThroughBalancer
}

// GetStreams returns nothing: the real connection carries streams of many
// remote peers, none of which belong to this one.
func (c *conn) GetStreams() []network.Stream { return nil }
