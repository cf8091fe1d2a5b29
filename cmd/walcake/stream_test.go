package main

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5"
)

// Large transactions stream into the spool (protocol 2) and reach the lake
// exactly once: one committed with a rolled-back savepoint, one aborted
// after streaming, and one whose stream was cut by a SIGKILL of capture
// and sent again by the server.
func TestStreamedTransactionsEndToEnd(t *testing.T) {
	e := newEnv(t)
	// Transactions over 64 kB reach capture streamed.
	e.db.Exec(t, "ALTER DATABASE "+pgx.Identifier{e.db.Name}.Sanitize()+" SET logical_decoding_work_mem = '64kB'")
	e.db.Exec(t, protoSchema)
	e.mustWalcake("setup")
	ctx := context.Background()

	// A transaction in progress, large enough to stream, while capture
	// follows; capture is killed once part of it is in the spool.
	open, err := pgx.Connect(ctx, e.db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close(ctx)
	for _, sql := range []string{
		`BEGIN`,
		`INSERT INTO items SELECT g, 'killed stream ' || g FROM generate_series(1, 8000) g`,
	} {
		if _, err := open.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	capture := e.spawn("capture", "--follow", "--status-interval", "200ms")
	waitUntil(t, "part of the open transaction is in the spool", func() bool {
		m, _ := filepath.Glob(filepath.Join(e.spool, "*.stream"))
		return len(m) > 0
	})
	capture.kill()
	for _, sql := range []string{
		`SAVEPOINT s`,
		`INSERT INTO items SELECT g, 'rolled back savepoint ' || g FROM generate_series(8001, 12000) g`,
		`ROLLBACK TO s`,
		`INSERT INTO items SELECT g, 'after the savepoint ' || g FROM generate_series(12001, 14000) g`,
		`COMMIT`,
	} {
		if _, err := open.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	// Streamed, then aborted.
	e.db.Exec(t, `BEGIN; INSERT INTO notes SELECT g, 'ROLLBACK' FROM generate_series(1, 8000) g; ROLLBACK`)
	// Streamed and committed, after the others.
	e.db.Exec(t, `INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 6000) g`)

	e.mustWalcake("run")
	if m, _ := filepath.Glob(filepath.Join(e.spool, "*.stream")); len(m) != 0 {
		t.Errorf("stream files left in the spool: %v", m)
	}
	var streamed int64
	e.db.QueryRow(t, `SELECT coalesce(sum(stream_txns), 0)::bigint FROM pg_stat_replication_slots WHERE slot_name = 'walcake_test'`).Scan(&streamed)
	if streamed < 2 {
		t.Errorf("the server streamed %d transactions: the test does not exercise streaming", streamed)
	}
	checkExactlyOnce(e, map[string]map[string]int64{
		"public.items": {"I": 10000},
		"public.notes": {"I": 6000},
	})
}
