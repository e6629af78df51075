package admin_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"

	"github.com/libp2p/go-libp2p"

	"github.com/libp2p-balancer/libp2p-balancer/admin"
	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/metrics"
)

// Example wires metrics, recent events and the admin listener to a
// balancer, as `balancer serve --admin 127.0.0.1:8242` does, then reads it
// back as `balancer status` does.
func Example() {
	reg := metrics.NewRegistry()
	tracer, err := metrics.New(reg)
	if err != nil {
		log.Fatal(err)
	}
	events := admin.NewEvents(0)

	// The host registers go-libp2p's own metrics on the same registry.
	opts := append([]libp2p.Option{libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0")}, metrics.Libp2pOptions(reg)...)
	h, err := libp2p.New(opts...)
	if err != nil {
		log.Fatal(err)
	}
	defer h.Close()
	lb, err := balancer.New(h, balancer.WithTracer(metrics.Tee(tracer, events)))
	if err != nil {
		log.Fatal(err)
	}
	defer lb.Close()

	srv := &admin.Server{
		Addr:    admin.DefaultAddr,
		Handler: &admin.Handler{Balancer: lb, Host: h, Gatherer: reg, Events: events},
	}
	if err := srv.Start(); err != nil {
		log.Fatal(err)
	}
	defer srv.Close()

	if err := admin.PrintStatus(context.Background(), os.Stdout, &admin.Client{Addr: admin.DefaultAddr}); err != nil {
		log.Fatal(err)
	}
}

func ExampleCheckBind() {
	fmt.Println(admin.CheckBind("127.0.0.1:8242", false, ""))
	err := admin.CheckBind("0.0.0.0:8242", false, "")
	fmt.Println(errors.Is(err, admin.ErrNotLoopback))
	err = admin.CheckBind("0.0.0.0:8242", true, "")
	fmt.Println(errors.Is(err, admin.ErrNoToken))
	// Output:
	// <nil>
	// true
	// true
}
