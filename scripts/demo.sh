#!/usr/bin/env bash
# Runs wal-cake end to end on a throwaway PostgreSQL 15 into ./demo-lake.
# Needs Go and the PostgreSQL 15 server binaries (installed with apt when
# missing and run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
exec go run ./scripts/demo "$@"
