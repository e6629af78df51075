//go:build linux && amd64

package netfault_test

// sysSetns is setns(2), which package syscall does not name on amd64.
const sysSetns = 308
