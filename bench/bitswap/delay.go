package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

// delayed starts a proxy on 127.0.0.1 that holds every chunk (TCP) or
// datagram (QUIC) for rtt/2 in each direction before passing it on to
// target's first address, and returns target with the proxy's address
// instead. It stands in for netem where the kernel has none (see
// docs/performance.md): a fixed delay, no loss, no bandwidth limit.
func delayed(ctx context.Context, target peer.AddrInfo, rtt time.Duration, closers *[]io.Closer) (peer.AddrInfo, error) {
	addr, err := firstAddr(target)
	if err != nil {
		return target, err
	}
	// manet knows UDP but not QUIC on top of it.
	na, err := manet.ToNetAddr(addr.Decapsulate(ma.StringCast("/quic-v1")))
	if err != nil {
		return target, err
	}
	oneWay := rtt / 2
	switch a := na.(type) {
	case *net.TCPAddr:
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return target, err
		}
		*closers = append(*closers, ln)
		go acceptTCP(ctx, ln, a.String(), oneWay)
		m, err := manet.FromNetAddr(ln.Addr())
		if err != nil {
			return target, err
		}
		return peer.AddrInfo{ID: target.ID, Addrs: []ma.Multiaddr{m}}, nil
	case *net.UDPAddr:
		pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return target, err
		}
		*closers = append(*closers, pc)
		go proxyUDP(ctx, pc, a, oneWay)
		m, err := ma.NewMultiaddr(fmt.Sprintf("/ip4/127.0.0.1/udp/%d/quic-v1", pc.LocalAddr().(*net.UDPAddr).Port))
		if err != nil {
			return target, err
		}
		return peer.AddrInfo{ID: target.ID, Addrs: []ma.Multiaddr{m}}, nil
	}
	return target, fmt.Errorf("cannot delay %s", addr)
}

// packet is one chunk held until due.
type packet struct {
	data []byte
	due  time.Time
}

// delayLine passes what is put in on to out after d, in order. Its queue
// holds up to 4,096 chunks; a sender faster than that waits, as it would on
// a full link.
type delayLine struct {
	q chan packet
}

func newDelayLine(ctx context.Context, d time.Duration, out func([]byte) error) *delayLine {
	l := &delayLine{q: make(chan packet, 4096)}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case p, ok := <-l.q:
				if !ok {
					return
				}
				if w := time.Until(p.due); w > 0 {
					t := time.NewTimer(w)
					select {
					case <-ctx.Done():
						t.Stop()
						return
					case <-t.C:
					}
				}
				if p.data == nil {
					_ = out(nil) // end of stream
					return
				}
				if out(p.data) != nil {
					return
				}
			}
		}
	}()
	return l
}

func (l *delayLine) put(ctx context.Context, b []byte, d time.Duration) bool {
	select {
	case l.q <- packet{data: b, due: time.Now().Add(d)}:
		return true
	case <-ctx.Done():
		return false
	}
}

func acceptTCP(ctx context.Context, ln net.Listener, target string, d time.Duration) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			t, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				return
			}
			ctx, cancel := context.WithCancel(ctx)
			var wg sync.WaitGroup
			wg.Add(2)
			go func() { defer wg.Done(); pumpTCP(ctx, c, t.(*net.TCPConn), d) }()
			go func() { defer wg.Done(); pumpTCP(ctx, t, c.(*net.TCPConn), d) }()
			wg.Wait()
			cancel()
			c.Close()
			t.Close()
		}()
	}
}

// pumpTCP reads src and writes what it read to dst d later; EOF is passed
// on as a half-close, d later too.
func pumpTCP(ctx context.Context, src net.Conn, dst *net.TCPConn, d time.Duration) {
	done := make(chan struct{})
	line := newDelayLine(ctx, d, func(b []byte) error {
		if b == nil {
			close(done)
			return dst.CloseWrite()
		}
		_, err := dst.Write(b)
		return err
	})
	for {
		buf := make([]byte, 32<<10)
		n, err := src.Read(buf)
		if n > 0 && !line.put(ctx, buf[:n], d) {
			return
		}
		if err != nil {
			if errors.Is(err, io.EOF) && line.put(ctx, nil, d) {
				select {
				case <-done:
				case <-ctx.Done():
				}
			}
			return
		}
	}
}

// proxyUDP relays datagrams between clients of pc and target, d late each
// way, with one socket towards target per client address.
func proxyUDP(ctx context.Context, pc *net.UDPConn, target *net.UDPAddr, d time.Duration) {
	type flow struct {
		up *delayLine
	}
	flows := map[string]*flow{}
	buf := make([]byte, 65536)
	for {
		n, from, err := pc.ReadFromUDP(buf)
		if err != nil {
			return
		}
		f := flows[from.String()]
		if f == nil {
			out, err := net.DialUDP("udp", nil, target)
			if err != nil {
				continue
			}
			context.AfterFunc(ctx, func() { out.Close() })
			client := from
			down := newDelayLine(ctx, d, func(b []byte) error {
				_, err := pc.WriteToUDP(b, client)
				return err
			})
			go func() {
				for {
					b := make([]byte, 65536)
					n, err := out.Read(b)
					if err != nil {
						return
					}
					if !down.put(ctx, b[:n], d) {
						return
					}
				}
			}()
			f = &flow{up: newDelayLine(ctx, d, func(b []byte) error {
				_, err := out.Write(b)
				return err
			})}
			flows[from.String()] = f
		}
		if !f.up.put(ctx, append([]byte(nil), buf[:n]...), d) {
			return
		}
	}
}
