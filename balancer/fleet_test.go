package balancer_test

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/libp2p-balancer/libp2p-balancer/backend"
	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/internal/node"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet"
	"github.com/libp2p-balancer/libp2p-balancer/internal/testnet/lbtest"
)

// fleetInterval is the resolve interval of the fleet tests; a change of
// the records must show in the registrations within it, plus fleetSlack
// for a registration exchange (under -race, on a shared machine).
const (
	fleetInterval = 500 * time.Millisecond
	fleetSlack    = 3 * time.Second
)

// lbInstance is one balancer instance of a scaled-out deployment.
type lbInstance struct {
	host host.Host
	lb   *balancer.Balancer
}

func (in lbInstance) addr() ma.Multiaddr {
	return in.host.Addrs()[0].Encapsulate(ma.StringCast("/p2p/" + in.host.ID().String()))
}

// registered says whether in routes /t/echo to be.
func (in lbInstance) registered(be peer.ID) bool {
	for _, r := range in.lb.Routes() {
		if r.Backend == be && r.Protocol == "/t/echo" {
			return true
		}
	}
	return false
}

// connected says whether be has a connection to in.
func (in lbInstance) connected(be peer.ID) bool {
	return len(in.host.Network().ConnsToPeer(be)) > 0
}

// TestFleetFollowsDNS: a Fleet registers with every instance a /dnsaddr
// name lists, and follows the records: an instance added is registered with
// within the resolve interval, an instance removed loses its routes within
// it, while a stream in flight through it goes on to its end, after which
// the Fleet closes that instance's host.
func TestFleetFollowsDNS(t *testing.T) {
	dns := testnet.NewDNS(t)
	lbKey, _ := testnet.Key(t)
	who := lbtest.NewIdentity(t)
	var lbs []lbInstance
	for range 3 {
		h := testnet.NewHost(t, testnet.TCP, testnet.Options{Key: lbKey, LinkPeers: []peer.ID{who.ID}, Extra: []libp2p.Option{libp2p.Ping(false)}})
		lb, err := balancer.New(h, balancer.WithAllow(who.ID))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { lb.Close() })
		lbs = append(lbs, lbInstance{h, lb})
	}
	publish := func(ins ...lbInstance) {
		var recs []string
		for _, in := range ins {
			recs = append(recs, "dnsaddr="+in.addr().String())
		}
		dns.SetTXT("_dnsaddr.lb.test", recs...)
	}
	publish(lbs[0], lbs[1])

	f, err := backend.NewFleet(backend.FleetConfig{
		Name: ma.StringCast("/dnsaddr/lb.test"),
		NewHost: func(instance peer.AddrInfo) (host.Host, error) {
			return node.New(node.Config{Key: who.Key, LinkPeers: []peer.ID{instance.ID}})
		},
		Resolver: dns.Resolver(t),
		Interval: fleetInterval,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	// Echo as it reads, so that the stream can be checked before it ends.
	f.SetStreamHandler("/t/echo", func(s network.Stream) {
		defer s.Close()
		_, _ = io.Copy(s, s)
	})

	testnet.Eventually(t, fleetInterval+fleetSlack, func() bool {
		return lbs[0].registered(who.ID) && lbs[1].registered(who.ID)
	}, "registration with the two instances published")
	if lbs[2].connected(who.ID) {
		t.Fatal("the unpublished instance has a connection from the backend")
	}
	if n := len(f.Instances()); n != 2 {
		t.Fatalf("%d instances in use, want 2", n)
	}

	// A client stream through instance 1, which is about to be removed.
	client := testnet.NewHost(t, testnet.TCP, testnet.Options{NoListen: true})
	testnet.Connect(t, client, lbs[1].host)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := client.NewStream(ctx, lbs[1].host.ID(), "/t/echo")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Reset()
	echoBack(t, s, "before")

	// Add instance 2, remove instance 1.
	changed := time.Now()
	publish(lbs[0], lbs[2])
	testnet.Eventually(t, fleetInterval+fleetSlack, func() bool {
		return lbs[2].registered(who.ID) && !lbs[1].registered(who.ID)
	}, "instance 2 registered with and instance 1 released")
	t.Logf("registrations followed the records in %v (interval %v)", time.Since(changed).Round(time.Millisecond), fleetInterval)
	if !lbs[0].registered(who.ID) {
		t.Fatal("instance 0, still published, lost its route")
	}
	for _, in := range f.Instances() {
		if in.Addr.Equal(lbs[1].addr()) {
			t.Fatal("the removed instance is still in use")
		}
	}

	// The stream through the removed instance goes on, and holds its host.
	echoBack(t, s, "after")
	if !lbs[1].connected(who.ID) {
		t.Fatal("the removed instance's host closed with a stream in flight")
	}
	if err := s.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(s); err != nil || len(rest) != 0 {
		t.Fatalf("end of the stream: %q, %v", rest, err)
	}
	testnet.Eventually(t, 10*time.Second, func() bool { return !lbs[1].connected(who.ID) },
		"the removed instance's host closed once its stream ended")
	if !lbs[0].connected(who.ID) || !lbs[2].connected(who.ID) {
		t.Fatal("a published instance lost its connection")
	}

	// A resolver outage keeps the instances known.
	dns.SetTXT("_dnsaddr.lb.test")
	// Resolutions run one after the other: once a query of a second one
	// arrives, the first has been acted on.
	for range 2 {
		q := dns.Queries("_dnsaddr.lb.test")
		testnet.Eventually(t, 10*fleetInterval, func() bool { return dns.Queries("_dnsaddr.lb.test") > q }, "a resolution of the emptied name")
	}
	if n := len(f.Instances()); n != 2 || !lbs[0].registered(who.ID) || !lbs[2].registered(who.ID) {
		t.Fatalf("after a failed resolution: %d instances in use, want the 2 known", n)
	}
}

// echoBack writes msg on s and reads it back.
func echoBack(t *testing.T, s network.Stream, msg string) {
	t.Helper()
	if _, err := s.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	_ = s.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo %q: got %q, %v", msg, buf, err)
	}
}
