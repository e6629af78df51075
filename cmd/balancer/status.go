package main

import (
	"context"
	"errors"
	"flag"
	"os"
	"time"

	"github.com/libp2p-balancer/libp2p-balancer/admin"
	"github.com/libp2p-balancer/libp2p-balancer/internal/daemon"
)

var statusCmd = &command{
	name:    "status",
	summary: "show a running balancer's routes, backends and recent refusals",
	about: `Asks a running balancer's admin listener (see serve --admin) for its state
and prints it as tables: peer ID and addresses, each protocol's pool with
its backends and TTLs, backends with their streams and bytes, and the recent
refusals. The token, when the listener needs one, comes from
--admin-token-file or the BALANCER_ADMIN_TOKEN environment variable.`,
	flags: func(fs *flag.FlagSet) func([]string) int {
		addr := fs.String("admin", daemon.DefaultAdmin, "`HOST:PORT` of the balancer's admin listener")
		tokenFile := fs.String("admin-token-file", "", "`FILE` holding the admin bearer token")
		timeout := fs.Duration("timeout", 10*time.Second, "how long the request may take")
		return func(args []string) int {
			if len(args) > 0 {
				return fail("status", errors.New("unexpected argument (flags only)"))
			}
			cfg := daemon.Config{AdminTokenFile: *tokenFile}
			token, err := cfg.AdminToken()
			if err != nil {
				return fail("status", err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), *timeout)
			defer cancel()
			if err := admin.PrintStatus(ctx, os.Stdout, &admin.Client{Addr: *addr, Token: token}); err != nil {
				return fail("status", err)
			}
			return 0
		}
	},
}
