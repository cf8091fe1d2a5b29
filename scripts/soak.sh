#!/usr/bin/env bash
# Runs the randomized crash test (cmd/walcake TestCrashRandomized) as a long
# soak: many SIGKILLs of walcake run, capture, capture --follow and compact,
# lost spools and S3 faults, against a seeded workload, with the lake checked
# change by change at checkpoints and at the end. Prints the seed, the kill
# count, the change count, the duration and the verdict.
#
#   scripts/soak.sh                      # 1000 kills, a random seed
#   KILLS=300 SEED=42 scripts/soak.sh    # reproduce a seed
#   VERIFY_EVERY=100 scripts/soak.sh     # checkpoint more often
#
# The full log goes to soak-<seed>.log (or $LOG). It runs under nice: the
# machine stays usable. See docs/crash-test.md.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

kills="${KILLS:-1000}"
seed="${SEED:-$(( $(date +%s%N) % 1000000000 ))}"
verify_every="${VERIFY_EVERY:-200}"
log="${LOG:-soak-${seed}.log}"

gobin="$(go env GOBIN)"
if [[ -z "$gobin" ]]; then
	gopath="$(go env GOPATH)"
	gobin="${gopath%%:*}/bin"
fi
export PATH="$gobin:$PATH"
if ! command -v versitygw >/dev/null 2>&1; then
	echo "soak.sh: installing versitygw v1.8.0 into $gobin" >&2
	go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
fi

echo "soak.sh: seed $seed, $kills kills, verifying every $verify_every; log in $log" >&2
started=$(date +%s)
set +e
WALCAKE_CRASH_SEED="$seed" WALCAKE_CRASH_KILLS="$kills" WALCAKE_CRASH_VERIFY_EVERY="$verify_every" \
	nice -n 10 go test -count=1 -timeout 0 -run '^TestCrashRandomized$' -v ./cmd/walcake/ >"$log" 2>&1
status=$?
set -e
elapsed=$(( $(date +%s) - started ))

grep -E 'crash test:|workload:' "$log" | sed -e 's/^ *//' || true
summary="$(grep -E 'crash test: seed=[0-9]+ kills=' "$log" | tail -n 1 | sed -e 's/^.*crash test: //')"
if [[ $status -eq 0 && -n "$summary" ]]; then
	echo "soak: $summary (wall ${elapsed}s)"
	exit 0
fi
echo "soak: seed=$seed kills=$kills verdict=FAIL after ${elapsed}s; reproduce with SEED=$seed KILLS=$kills scripts/soak.sh; the failure:" >&2
grep -E -- '--- FAIL|crash_test.go|faults_test.go|protocol_test.go|harness_test.go' "$log" | head -n 60 >&2 || true
exit 1
