#!/usr/bin/env bash
# Runs wal-cake's benchmark (scripts/bench): a throwaway PostgreSQL 15 and
# versitygw, the walcake binary, and each figure next to its reference
# (pg_recvlogical, DuckDB) measured in the same run. Takes a few minutes and
# a few GB of temporary disk. Extra arguments go to the benchmark, e.g.
# scripts/bench.sh -sections 1,2 -pairs 5
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

gobin="$(go env GOBIN)"
if [[ -z "$gobin" ]]; then
	gopath="$(go env GOPATH)"
	gobin="${gopath%%:*}/bin"
fi
export PATH="$gobin:$PATH"
if ! command -v versitygw >/dev/null 2>&1; then
	echo "bench.sh: installing versitygw v1.8.0 into $gobin (takes a minute or two the first time)" >&2
	go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
fi

exec go run ./scripts/bench "$@"
