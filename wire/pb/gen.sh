#!/usr/bin/env bash
# Regenerates balancer.pb.go from balancer.proto. Needs protoc (Debian:
# protobuf-compiler) and protoc-gen-go at the version in go.mod:
#   go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
set -euo pipefail
cd "$(dirname "$0")"
PATH="$(go env GOPATH)/bin:$PATH" protoc --go_out=. --go_opt=paths=source_relative balancer.proto
