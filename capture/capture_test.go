package capture_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/wal-cake/wal-cake/capture"
	"github.com/wal-cake/wal-cake/scripts/testenv"
	"github.com/wal-cake/wal-cake/spool"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

type fixture struct {
	db  *testenv.Database
	sp  *spool.Spool
	cfg capture.Config
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	db := testenv.NewDatabase(t)
	db.Exec(t, `CREATE TABLE t (id int PRIMARY KEY, v text)`)
	_, err := capture.Setup(context.Background(), capture.SetupConfig{ConnString: db.URL, Slot: "cap", Publication: "cap"})
	if err != nil {
		t.Fatal(err)
	}
	sp, err := spool.Open(filepath.Join(t.TempDir(), "spool"), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{db: db, sp: sp, cfg: capture.Config{ConnString: db.URL, Slot: "cap", Publication: "cap", IdleWait: 100 * time.Millisecond}}
}

// spooled returns the spool's transactions and the message types of each.
func spooled(t *testing.T, sp *spool.Spool) ([]spool.Txn, []string) {
	t.Helper()
	segs, err := sp.Sealed()
	if err != nil {
		t.Fatal(err)
	}
	var txns []spool.Txn
	var kinds []string
	for _, si := range segs {
		seg, err := spool.OpenSegment(si)
		if err != nil {
			t.Fatal(err)
		}
		err = seg.Txns(func(tx spool.Txn) error {
			txns = append(txns, tx)
			var k []byte
			err := seg.Messages(tx, func(_ pglogrepl.LSN, m []byte) error { k = append(k, m[0]); return nil })
			kinds = append(kinds, string(k))
			return err
		})
		seg.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	return txns, kinds
}

func TestCaptureCommittedTransactionsOnly(t *testing.T) {
	f := newFixture(t)
	f.db.Exec(t, `INSERT INTO t VALUES (1, 'a'), (2, 'b')`)
	f.db.Exec(t, `BEGIN; INSERT INTO t VALUES (3, 'rolled back'); ROLLBACK`)
	f.db.Exec(t, `UPDATE t SET v = 'A' WHERE id = 1`)
	f.db.Exec(t, `DELETE FROM t WHERE id = 2`)
	f.db.Exec(t, `TRUNCATE t`)

	st, err := capture.Run(context.Background(), f.cfg, f.sp)
	if err != nil {
		t.Fatal(err)
	}
	txns, kinds := spooled(t, f.sp)
	want := []string{"RII", "U", "D", "RT"} // pgoutput sends the relation again after a truncate
	if len(kinds) != len(want) {
		t.Fatalf("spooled %q, want %q", kinds, want)
	}
	for i := range want {
		if kinds[i] != want[i] {
			t.Errorf("txn %d: messages %q, want %q", i, kinds[i], want[i])
		}
	}
	if st.Txns != 4 || st.Changes != 5 {
		t.Errorf("stats = %+v, want 4 txns and 5 changes", st)
	}
	for i := 1; i < len(txns); i++ {
		if txns[i].CommitLSN <= txns[i-1].CommitLSN || txns[i].EndLSN <= txns[i].CommitLSN {
			t.Errorf("transaction positions out of order: %+v then %+v", txns[i-1], txns[i])
		}
	}
	if scanned, _ := f.sp.Scanned(); scanned < txns[len(txns)-1].EndLSN {
		t.Errorf("scanned mark %s before the last transaction's end %s", scanned, txns[len(txns)-1].EndLSN)
	}
}

func TestCaptureSkipsWhatTheSpoolHolds(t *testing.T) {
	f := newFixture(t)
	f.db.Exec(t, `INSERT INTO t SELECT g, 'x' FROM generate_series(1, 10) g`)
	if _, err := capture.Run(context.Background(), f.cfg, f.sp); err != nil {
		t.Fatal(err)
	}
	f.db.Exec(t, `INSERT INTO t VALUES (100, 'second')`)
	// The slot was never confirmed (nothing is in a lake): capture must not
	// spool the first transaction again (it asks the server to start after
	// what the spool holds, and skips anything older it is sent).
	st, err := capture.Run(context.Background(), f.cfg, f.sp)
	if err != nil {
		t.Fatal(err)
	}
	txns, _ := spooled(t, f.sp)
	if len(txns) != 2 {
		t.Fatalf("spool holds %d transactions, want 2", len(txns))
	}
	if st.Txns != 1 {
		t.Errorf("second run: %+v, want 1 transaction written", st)
	}
}

func TestCaptureRecoversFromLostSpool(t *testing.T) {
	f := newFixture(t)
	f.db.Exec(t, `INSERT INTO t VALUES (1, 'a')`)
	if _, err := capture.Run(context.Background(), f.cfg, f.sp); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(f.sp.Dir())
	sp, _ := spool.Open(f.sp.Dir(), spool.Options{})
	if _, err := capture.Run(context.Background(), f.cfg, sp); err != nil {
		t.Fatal(err)
	}
	if txns, _ := spooled(t, sp); len(txns) != 1 {
		t.Fatalf("after losing the spool, capture re-read %d transactions, want 1", len(txns))
	}
}

func TestFlushPositionNeverPassesTheLake(t *testing.T) {
	f := newFixture(t)
	var start string
	f.db.QueryRow(t, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'cap'`).Scan(&start)
	f.db.Exec(t, `INSERT INTO t VALUES (1, 'a')`)
	cfg := f.cfg
	cfg.StatusInterval = 50 * time.Millisecond
	if _, err := capture.Run(context.Background(), cfg, f.sp); err != nil {
		t.Fatal(err)
	}
	var after string
	f.db.QueryRow(t, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'cap'`).Scan(&after)
	if after != start {
		t.Fatalf("slot moved from %s to %s while the change is only in the spool", start, after)
	}

	// Once compaction says the lake holds it, a following capture confirms it.
	txns, _ := spooled(t, f.sp)
	segs, _ := f.sp.Sealed()
	for _, s := range segs {
		f.sp.Drop(s)
	}
	f.sp.SetCommitted(spool.Position{CommitLSN: txns[0].CommitLSN, EndLSN: txns[0].EndLSN})
	ctx, cancel := context.WithCancel(context.Background())
	cfg.Follow = true
	done := make(chan error, 1)
	go func() { _, err := capture.Run(ctx, cfg, f.sp); done <- err }()
	waitFor(t, func() bool {
		var s string
		f.db.QueryRow(t, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'cap'`).Scan(&s)
		lsn, _ := pglogrepl.ParseLSN(s)
		return lsn >= txns[0].EndLSN
	})
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("follow stopped with %v, want context.Canceled", err)
	}
}

func TestFollowReconnectsAfterTerminate(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := f.cfg
	cfg.Follow = true
	var wg sync.WaitGroup
	wg.Add(1)
	var runErr error
	var st capture.Stats
	go func() { defer wg.Done(); st, runErr = capture.Run(ctx, cfg, f.sp) }()

	f.db.Exec(t, `INSERT INTO t VALUES (1, 'before')`)
	waitFor(t, func() bool {
		var n int
		f.db.QueryRow(t, `SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walcake'`).Scan(&n)
		return n == 1
	})
	f.db.Exec(t, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'cap'`)
	f.db.Exec(t, `INSERT INTO t VALUES (2, 'after')`)
	waitFor(t, func() bool {
		var active bool
		f.db.QueryRow(t, `SELECT active FROM pg_replication_slots WHERE slot_name = 'cap'`).Scan(&active)
		return active
	})
	time.Sleep(1500 * time.Millisecond) // let it spool the second insert
	cancel()
	wg.Wait()
	if !errors.Is(runErr, context.Canceled) {
		t.Fatalf("follow ended with %v", runErr)
	}
	if st.Reconnects == 0 {
		t.Errorf("no reconnect counted")
	}
	txns, kinds := spooled(t, f.sp)
	if len(txns) != 2 {
		t.Fatalf("spooled %d transactions (%q), want 2 (one before, one after the terminate)", len(txns), kinds)
	}
}

func TestMissingSlotIsAClearError(t *testing.T) {
	f := newFixture(t)
	cfg := f.cfg
	cfg.Slot = "no_such_slot"
	_, err := capture.Run(context.Background(), cfg, f.sp)
	if !errors.Is(err, capture.ErrSlotMissing) {
		t.Fatalf("err = %v, want ErrSlotMissing", err)
	}
}

func TestSetupIsIdempotentAndChecks(t *testing.T) {
	db := testenv.NewDatabase(t)
	db.Exec(t, `CREATE SCHEMA "Odd Schema"; CREATE TABLE "Odd Schema"."My Table" (id int PRIMARY KEY); CREATE TABLE nokey (v int)`)
	cfg := capture.SetupConfig{ConnString: db.DSN, Slot: "s1", Publication: `pub "quoted"`, Tables: []string{`"Odd Schema"."My Table"`}}
	res, err := capture.Setup(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !res.CreatedPublication || !res.CreatedSlot {
		t.Errorf("first setup: %+v", res)
	}
	cfg.Tables = append(cfg.Tables, "public.nokey")
	res, err = capture.Setup(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.CreatedPublication || res.CreatedSlot || len(res.AddedTables) != 1 {
		t.Errorf("second setup: %+v", res)
	}
	if len(res.Warnings) != 1 {
		t.Errorf("warnings = %q, want one about public.nokey", res.Warnings)
	}
	if _, err := capture.Setup(context.Background(), capture.SetupConfig{ConnString: db.DSN, Slot: "Bad-Name", Publication: "p"}); err == nil {
		t.Error("invalid slot name accepted")
	}
}

func TestSetupRefusesWithoutLogicalWAL(t *testing.T) {
	ctx := context.Background()
	srv, err := testenv.StartPostgres(ctx, testenv.PostgresOptions{ExtraConfig: map[string]string{"wal_level": "replica"}})
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	defer srv.Stop()
	_, err = capture.Setup(ctx, capture.SetupConfig{ConnString: srv.URL("postgres"), Slot: "s", Publication: "p"})
	if !errors.Is(err, capture.ErrWalLevel) {
		t.Fatalf("err = %v, want ErrWalLevel", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out waiting")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
