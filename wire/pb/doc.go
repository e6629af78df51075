// Package pb holds the generated protobuf messages of the balancer protocol
// (docs/spec.md). Regenerate with `go generate ./pb` after editing
// balancer.proto; the generated code is committed so that building needs no
// protoc.
package pb

//go:generate ./gen.sh
