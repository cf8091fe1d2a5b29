package capture_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/wal-cake/wal-cake/capture"
	"github.com/wal-cake/wal-cake/spool"
)

// streamingFixture makes the walsender stream any transaction past 64 kB
// (logical_decoding_work_mem, set for the replication session through the
// connection string).
func streamingFixture(t *testing.T) *fixture {
	t.Helper()
	f := newFixture(t)
	f.cfg.ConnString += "&logical_decoding_work_mem=64kB"
	return f
}

// spooledIDs returns, per spooled transaction, the id column of each row its
// Insert messages carry, decoded as protocol 1 messages.
func spooledIDs(t *testing.T, sp *spool.Spool) [][]int {
	t.Helper()
	segs, err := sp.Sealed()
	if err != nil {
		t.Fatal(err)
	}
	var out [][]int
	for _, si := range segs {
		seg, err := spool.OpenSegment(si)
		if err != nil {
			t.Fatal(err)
		}
		err = seg.Txns(func(tx spool.Txn) error {
			var ids []int
			err := seg.Messages(tx, func(_ pglogrepl.LSN, m []byte) error {
				msg, err := pglogrepl.Parse(m)
				if err != nil {
					return fmt.Errorf("message %q: %w", m[0], err)
				}
				if ins, ok := msg.(*pglogrepl.InsertMessage); ok {
					id, err := strconv.Atoi(string(ins.Tuple.Columns[0].Data))
					if err != nil {
						return err
					}
					ids = append(ids, id)
				}
				return nil
			})
			out = append(out, ids)
			return err
		})
		seg.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// streamedTxns is how many transactions the server streamed through the slot.
func streamedTxns(t *testing.T, f *fixture) int64 {
	t.Helper()
	var n int64
	f.db.QueryRow(t, `SELECT coalesce(sum(stream_txns), 0)::bigint FROM pg_stat_replication_slots WHERE slot_name = 'cap'`).Scan(&n)
	return n
}

func seq(from, to int) []int {
	var s []int
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

func TestStreamedTransactionsAreSpooledWhole(t *testing.T) {
	f := streamingFixture(t)
	f.db.Exec(t, `INSERT INTO t VALUES (0, 'small, before')`)
	f.db.Exec(t, `INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g`)
	f.db.Exec(t, `BEGIN; INSERT INTO t SELECT g, repeat('y', 100) FROM generate_series(10001, 15000) g; ROLLBACK`)
	// A savepoint rolled back after its rows were streamed: only that
	// subtransaction's rows go.
	f.db.Exec(t, `BEGIN;
		INSERT INTO t SELECT g, repeat('a', 100) FROM generate_series(20001, 23000) g;
		SAVEPOINT s1;
		INSERT INTO t SELECT g, repeat('b', 100) FROM generate_series(23001, 26000) g;
		SAVEPOINT s2;
		INSERT INTO t SELECT g, repeat('c', 100) FROM generate_series(26001, 27000) g;
		ROLLBACK TO s1;
		INSERT INTO t SELECT g, repeat('d', 100) FROM generate_series(27001, 30000) g;
		COMMIT`)
	f.db.Exec(t, `INSERT INTO t VALUES (-1, 'small, after')`)

	st, err := capture.Run(context.Background(), f.cfg, f.sp)
	if err != nil {
		t.Fatal(err)
	}
	if n := streamedTxns(t, f); n < 3 {
		t.Fatalf("the server streamed %d transactions, want 3: the test does not exercise streaming", n)
	}
	got := spooledIDs(t, f.sp)
	want := [][]int{{0}, seq(1, 5000), append(seq(20001, 23000), seq(27001, 30000)...), {-1}}
	if len(got) != len(want) {
		t.Fatalf("spooled %d transactions, want %d", len(got), len(want))
	}
	for i := range want {
		if fmt.Sprint(got[i]) != fmt.Sprint(want[i]) {
			t.Errorf("transaction %d: %d rows (%v...), want %d (%v...)", i, len(got[i]), head(got[i]), len(want[i]), head(want[i]))
		}
	}
	if st.Txns != 4 || st.Changes < 1+5000+6000+1 {
		t.Errorf("stats %+v", st)
	}
	if m, _ := filepath.Glob(filepath.Join(f.sp.Dir(), "*.stream")); len(m) != 0 {
		t.Errorf("stream files left: %v", m)
	}
	// Commit order holds across the segments.
	txns, _ := spooled(t, f.sp)
	if txns[2].Messages < 8000 { // 6000 kept rows, most of the 4000 rolled back
		t.Errorf("the streamed transaction holds %d messages: the rolled-back savepoint's rows were not streamed before the rollback, so the test does not exercise subtransaction aborts", txns[2].Messages)
	}
	for i := 1; i < len(txns); i++ {
		if txns[i].CommitLSN <= txns[i-1].CommitLSN {
			t.Errorf("transactions out of commit order: %s then %s", txns[i-1].CommitLSN, txns[i].CommitLSN)
		}
	}
}

func head(s []int) []int { return s[:min(len(s), 3)] }

// A capture that stops while a transaction is streaming keeps nothing of it;
// the next one receives it again from its start, once.
func TestStreamInterruptedAndSentAgain(t *testing.T) {
	f := streamingFixture(t)
	ctx := context.Background()
	open, err := pgx.Connect(ctx, f.db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close(ctx)
	if _, err := open.Exec(ctx, `BEGIN`); err != nil {
		t.Fatal(err)
	}
	if _, err := open.Exec(ctx, `INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 4000) g`); err != nil {
		t.Fatal(err)
	}

	cctx, cancel := context.WithCancel(ctx)
	cfg := f.cfg
	cfg.Follow = true
	done := make(chan error, 1)
	go func() { _, err := capture.Run(cctx, cfg, f.sp); done <- err }()
	waitFor(t, func() bool {
		m, _ := filepath.Glob(filepath.Join(f.sp.Dir(), "*.stream"))
		return len(m) == 1
	})
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("capture stopped with %v", err)
	}
	if m, _ := filepath.Glob(filepath.Join(f.sp.Dir(), "*.stream")); len(m) != 0 {
		t.Fatalf("stream files left after stopping: %v", m)
	}

	if _, err := open.Exec(ctx, `INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(4001, 6000) g`); err != nil {
		t.Fatal(err)
	}
	if _, err := open.Exec(ctx, `COMMIT`); err != nil {
		t.Fatal(err)
	}
	if _, err := capture.Run(ctx, f.cfg, f.sp); err != nil {
		t.Fatal(err)
	}
	got := spooledIDs(t, f.sp)
	if len(got) != 1 || fmt.Sprint(got[0]) != fmt.Sprint(seq(1, 6000)) {
		t.Fatalf("spooled %d transactions (%d rows), want 1 of 6000", len(got), len(got[0]))
	}
}

// Protocol 1 still works (older servers): the same large transaction
// spills on the server and arrives whole at commit.
func TestProtocolOne(t *testing.T) {
	f := streamingFixture(t)
	f.cfg.Protocol = 1
	f.db.Exec(t, `INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 3000) g`)
	f.db.Exec(t, `BEGIN; INSERT INTO t VALUES (9999, 'no'); ROLLBACK`)
	if _, err := capture.Run(context.Background(), f.cfg, f.sp); err != nil {
		t.Fatal(err)
	}
	if n := streamedTxns(t, f); n != 0 {
		t.Errorf("protocol 1 streamed %d transactions", n)
	}
	got := spooledIDs(t, f.sp)
	if len(got) != 1 || fmt.Sprint(got[0]) != fmt.Sprint(seq(1, 3000)) {
		t.Fatalf("spooled %v transactions", len(got))
	}

}

// A following capture seals its segment once it is old enough, so that a
// compaction running beside it finds the changes.
func TestFollowSealsByAge(t *testing.T) {
	f := newFixture(t)
	sp, err := spool.Open(filepath.Join(t.TempDir(), "spool"), spool.Options{SegmentMaxAge: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := f.cfg
	cfg.Follow = true
	cfg.StatusInterval = 200 * time.Millisecond
	cfg.IdleWait = 0 // the default
	done := make(chan error, 1)
	go func() { _, err := capture.Run(ctx, cfg, sp); done <- err }()
	f.db.Exec(t, `INSERT INTO t SELECT g, 'x' FROM generate_series(1, 100) g`)
	waitFor(t, func() bool {
		segs, _ := sp.Sealed()
		return len(segs) > 0
	})
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("follow stopped with %v", err)
	}
}
