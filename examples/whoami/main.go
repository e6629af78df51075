// Command whoami is a tiny TCP service to put behind `balancer backend
// --proxy-protocol`: it reads the PROXY protocol v2 header at the start of
// each connection, greets the caller by libp2p peer ID, then echoes
// everything it receives until the caller half-closes.
//
//	go run ./examples/whoami --listen 127.0.0.1:7000
//
// Any language can do the same: read 16 bytes, check the signature, read the
// length they announce, and look for TLV 0xE0 (the peer ID, as text) after
// the address block; see package proxyproto.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"

	"github.com/libp2p-balancer/libp2p-balancer/proxyproto"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:7000", "TCP `HOST:PORT` to listen on")
	flag.Parse()
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("whoami listening on %s", l.Addr())
	for {
		c, err := l.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go serve(c.(*net.TCPConn))
	}
}

func serve(c *net.TCPConn) {
	defer c.Close()
	h, err := proxyproto.Read(c)
	if err != nil {
		fmt.Fprintf(c, "no PROXY v2 header: %v\n", err)
		return
	}
	from := "an unknown address"
	if h.Source.IsValid() {
		from = h.Source.String()
	}
	log.Printf("connection from peer %s at %s on %s", h.PeerID, from, h.Protocol)
	fmt.Fprintf(c, "hello %s, you came from %s on %s\n", h.PeerID, from, h.Protocol)
	if _, err := io.Copy(c, c); err != nil {
		return
	}
	c.CloseWrite()
}
