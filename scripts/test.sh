#!/usr/bin/env bash
# Runs wal-cake's checks and tests: go vet, then every package's tests against
# real servers that the tests start themselves (PostgreSQL 15 from its
# binaries, versitygw as the S3-protocol server). Extra arguments go to
# `go test`, e.g. scripts/test.sh -run TestCapture -v
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Where `go install` puts binaries: GOBIN, else the first GOPATH entry's bin.
gobin="$(go env GOBIN)"
if [[ -z "$gobin" ]]; then
	gopath="$(go env GOPATH)"
	gobin="${gopath%%:*}/bin"
fi
export PATH="$gobin:$PATH"

if ! command -v versitygw >/dev/null 2>&1; then
	echo "test.sh: installing versitygw v1.8.0 into $gobin (takes a minute or two the first time)" >&2
	go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
fi

go vet ./...
go test -count=1 -timeout 30m ./... "$@"
