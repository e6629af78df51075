//go:build linux && !amd64

package netfault_test

import "syscall"

const sysSetns = syscall.SYS_SETNS
