package admin_test

import (
	"fmt"
	"testing"

	"github.com/libp2p-balancer/libp2p-balancer/admin"
	"github.com/libp2p-balancer/libp2p-balancer/balancer"
	"github.com/libp2p-balancer/libp2p-balancer/wire/pb"
)

func TestEventsRing(t *testing.T) {
	ev := admin.NewEvents(3)
	if got := ev.Recent(); len(got) != 0 {
		t.Fatalf("new Events holds %d events", len(got))
	}
	ev.RegistrationHandled("", pb.Status_OK) // not a refusal
	for i := range 5 {
		ev.StreamRefused(balancer.Refusal{Direction: balancer.Inbound, Reason: balancer.ReasonLimit, Requested: "/p", Detail: fmt.Sprint(i)})
	}
	got := ev.Recent()
	if len(got) != 3 || got[0].Detail != "4" || got[1].Detail != "3" || got[2].Detail != "2" {
		t.Fatalf("Recent() = %+v, want details 4, 3, 2", got)
	}
	var nilEvents *admin.Events
	if got := nilEvents.Recent(); got == nil || len(got) != 0 {
		t.Fatalf("nil Events: %v, want an empty list", got)
	}
}
