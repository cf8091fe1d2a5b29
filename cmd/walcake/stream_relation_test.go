package main

import (
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// A Relation message the server sent inside a streamed transaction that
// committed is not sent again in that session: the next, non-streamed
// transaction on the table comes without one. When that transaction lands in
// a later segment, compacted by a later run, the segment must still describe
// the table (found by TestCrashRandomized, seed 71174554: compaction failed
// with "change ... for relation ... without its Relation message" on every
// run after).
func TestStreamedRelationInLaterSegment(t *testing.T) {
	e := newEnv(t)
	// Transactions over 64 kB reach capture streamed (protocol 2).
	e.db.Exec(t, "ALTER DATABASE "+pgx.Identifier{e.db.Name}.Sanitize()+" SET logical_decoding_work_mem = '64kB'")
	e.db.Exec(t, protoSchema)
	e.mustWalcake("setup")
	capture := e.spawn("capture", "--follow", "--status-interval", "200ms", "--segment-max-age", "300ms")

	// A streamed transaction, the table's first in the session.
	before := e.insertLSN()
	e.db.Exec(t, "INSERT INTO items SELECT g, 'streamed ' || g FROM generate_series(1, 5000) g")
	e.compactUntilLakeHas(capture, before)
	// The next transaction on the table, without a Relation message, in a
	// later segment that a new compaction reads on its own.
	before = e.insertLSN()
	e.db.Exec(t, "INSERT INTO items VALUES (5001, 'after the stream')")
	e.compactUntilLakeHas(capture, before)

	r := capture.interrupt()
	if r.code != 0 {
		t.Errorf("capture --follow: exit %d: %s", r.code, finalLine(r.stderr))
	}
	e.mustWalcake("run")
	checkExactlyOnce(e, map[string]map[string]int64{"public.items": {"I": 5001}})
}

// compactUntilLakeHas runs compact beside a following capture until the
// lake holds a transaction that committed after before. A failed compaction
// fails the test.
func (e *env) compactUntilLakeHas(capture *bgWalcake, before pglogrepl.LSN) {
	e.t.Helper()
	waitUntil(e.t, "the lake holds the last transaction", func() bool {
		if !capture.running() {
			e.t.Fatalf("capture --follow exited: %s", finalLine(capture.res.stderr))
		}
		r := e.walcake("compact")
		if r.code != 0 {
			e.t.Fatalf("compact beside capture: exit %d: %s", r.code, strings.TrimSpace(r.stderr))
		}
		return e.lakeLastCommit() > before
	})
}
