package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/wal-cake/wal-cake/compact"
	"github.com/wal-cake/wal-cake/scripts/testenv/duck"
)

// The backfill tests run the binary against a real PostgreSQL and S3 server
// while a randomized workload writes to the table, then rebuild the table's
// state from the lake with DuckDB by DESIGN.md's rule, over R rows and
// change rows together, and compare it with the table.

const bfItemsSchema = `
CREATE TABLE items (id bigint PRIMARY KEY, grp int NOT NULL, name text, qty int, note text);
INSERT INTO items SELECT g, g % 97, 'item ' || g, g % 13, CASE WHEN g % 50 = 0 THEN repeat('long ', 2000) END
FROM generate_series(1, 20000) g;
ANALYZE items;
`

const bfItemsDuckCols = "CAST(id AS VARCHAR), CAST(grp AS VARCHAR), name, CAST(qty AS VARCHAR), md5(coalesce(note, '-'))"
const bfItemsPGCols = "id::text, grp::text, name, qty::text, md5(coalesce(note, '-'))"

// newBFEnv is an env whose slot and publication are the test's own, so that
// the backfill tests run in parallel.
func newBFEnv(t *testing.T) *env {
	t.Helper()
	e := newEnv(t)
	e.setVar("PG_SLOT=" + e.db.Name)
	e.setVar("PG_PUBLICATION=" + e.db.Name)
	return e
}

// bfSeed is the workload's seed: WALCAKE_TEST_SEED, or a fresh one. The
// test logs it, so that a failure can be replayed.
func bfSeed(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("WALCAKE_TEST_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("WALCAKE_TEST_SEED=%q: %v", v, err)
		}
		seed = n
	}
	t.Logf("workload seed %d (set WALCAKE_TEST_SEED to replay)", seed)
	return seed
}

// bfWorkload writes random inserts, updates, deletes and key changes (up and
// down the key space, across chunk boundaries), alone and in transactions
// (some rolled back), until stopped.
type bfWorkload struct {
	stop  chan struct{}
	done  chan struct{}
	stmts atomic.Int64
	err   error
}

func bfStartItemsWorkload(t *testing.T, e *env, seed uint64) *bfWorkload {
	t.Helper()
	conn := e.db.Conn(t)
	w := &bfWorkload{stop: make(chan struct{}), done: make(chan struct{})}
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	next := int64(1_000_000)
	go func() {
		defer close(w.done)
		ctx := context.Background()
		one := func(tx pgx.Tx) error {
			id := rng.Int64N(22000) + 1
			if rng.IntN(4) == 0 {
				id = -id // keys moved below the first chunk
			}
			var err error
			switch op := rng.IntN(10); {
			case op < 3:
				next++
				_, err = tx.Exec(ctx, "INSERT INTO items VALUES ($1, $2, 'new ' || $1::text, 1, NULL)", next, rng.IntN(97))
			case op < 5:
				_, err = tx.Exec(ctx, "UPDATE items SET qty = qty + 1, name = name || '+' WHERE id = $1", id)
			case op < 6:
				_, err = tx.Exec(ctx, "UPDATE items SET grp = grp + 1 WHERE id BETWEEN $1 AND $1 + 40", id)
			case op < 7:
				_, err = tx.Exec(ctx, "DELETE FROM items WHERE id = $1", id)
			case op < 8:
				next++
				_, err = tx.Exec(ctx, "UPDATE items SET id = $2 WHERE id = $1", id, next) // up the key space
			case op < 9:
				_, err = tx.Exec(ctx, "UPDATE items SET id = -id WHERE id = $1 AND id > 0", id) // down
			default:
				_, err = tx.Exec(ctx, "UPDATE items SET note = CASE WHEN note IS NULL THEN repeat('toast ', 3000) END WHERE id = $1", id)
			}
			return err
		}
		for {
			select {
			case <-w.stop:
				return
			default:
			}
			tx, err := conn.Begin(ctx)
			if err != nil {
				w.err = err
				return
			}
			n := 1 + rng.IntN(3)
			for range n {
				if err = one(tx); err != nil {
					break
				}
			}
			if err != nil || rng.IntN(10) == 0 {
				tx.Rollback(ctx) // a unique violation, or on purpose
			} else if err = tx.Commit(ctx); err != nil {
				w.err = err
				return
			}
			w.stmts.Add(int64(n))
		}
	}()
	t.Cleanup(func() { w.finish(t) })
	return w
}

// finish stops the workload and waits for it.
func (w *bfWorkload) finish(t *testing.T) {
	t.Helper()
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
	if w.err != nil {
		t.Errorf("workload: %v", w.err)
	}
}

// bfCheckItems compares the lake's state of public.items with the table and
// checks that no key has two R rows of one run.
func bfCheckItems(t *testing.T, e *env) {
	t.Helper()
	lake := e.download()
	ddb := duck.Open(t)
	got := asStrings(lakeState(t, ddb, lake, "public.items", []string{"id"}, bfItemsDuckCols, "id"))
	want := asStrings(e.pgRows("SELECT " + bfItemsPGCols + " FROM items AS t ORDER BY t.id"))
	sameRows(t, "public.items", got, want)
	glob := filepath.Join(lake, "public.items", "**", "*.parquet")
	rows := duck.Rows(t, ddb, "SELECT count(*) FROM (SELECT id FROM read_parquet('"+glob+"', union_by_name=true, hive_partitioning=false) WHERE _op = 'R' GROUP BY id HAVING count(*) > 1)")
	if n := rows[0][0].(int64); n != 0 {
		t.Errorf("%d keys have more than one R row", n)
	}
	rows = duck.Rows(t, ddb, "SELECT count(*) - count(DISTINCT (_commit_lsn, _seq)), count(*) FILTER (WHERE _op = 'R'), count(*) FILTER (WHERE _op <> 'R') FROM read_parquet('"+glob+"', union_by_name=true, hive_partitioning=false)")
	t.Logf("lake rows of public.items: %d R, %d change rows", rows[0][1], rows[0][2])
	if n := rows[0][0].(int64); n != 0 {
		t.Errorf("%d duplicated (_commit_lsn, _seq)", n)
	}
	if rows[0][1].(int64) == 0 || rows[0][2].(int64) == 0 {
		t.Errorf("the lake should hold both R rows and change rows")
	}
}

// TestBackfillUnderWrites backfills a table while a workload writes to it
// and "walcake run" streams, then checks the exact state.
func TestBackfillUnderWrites(t *testing.T) {
	t.Parallel()
	e := newBFEnv(t)
	e.db.Exec(t, bfItemsSchema)
	e.mustWalcake("setup", "--tables", "public.items")
	w := bfStartItemsWorkload(t, e, bfSeed(t))
	time.Sleep(300 * time.Millisecond)
	e.mustWalcake("run")
	e.setVar("WALCAKE_PROGRESS_INTERVAL=200ms")
	r := e.mustWalcake("backfill", "--table", "public.items", "--chunk-rows", "1500", "--parallel", "3")
	t.Logf("%s", strings.TrimSpace(r.stdout))
	if !regexp.MustCompile(`^backfill: 1 tables, \d+ rows, \d+ chunks, \d+ files`).MatchString(r.stdout) {
		t.Errorf("summary: %s", r.stdout)
	}
	if !strings.Contains(r.stderr, "backfill progress") {
		t.Errorf("no progress lines on stderr:\n%s", r.stderr)
	}
	e.mustWalcake("run")
	w.finish(t)
	t.Logf("workload: %d statements", w.stmts.Load())
	e.mustWalcake("run")
	bfCheckItems(t, e)

	// One schema version: the backfill's columns are the stream's.
	var n int
	err := e.store().List(context.Background(), "_walcake/schemas/public.items/", func(compact.Object) error { n++; return nil })
	if err != nil || n != 1 {
		t.Errorf("schema versions of public.items: %d, %v", n, err)
	}
	// A second backfill skips the table; --json tells so.
	r = e.mustWalcake("backfill", "--all", "--json")
	var s backfillSummary
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil || len(s.Tables) != 1 || !s.Tables[0].Skipped || s.Rows != 0 {
		t.Errorf("second backfill: %+v, %v\n%s", s, err, r.stdout)
	}
}

// TestBackfillKilledAndResumed kills the binary (SIGKILL) at each step of a
// chunk's commit, then resumes with a fresh spool directory: the state is
// exact and no key has two R rows.
func TestBackfillKilledAndResumed(t *testing.T) {
	t.Parallel()
	for _, fp := range []string{compact.FailBackfillAfterPlan, compact.FailBackfillAfterIntent,
		compact.FailBackfillAfterUpload, compact.FailBackfillAfterManifest, compact.FailBackfillAfterChunk} {
		t.Run(fp, func(t *testing.T) {
			t.Parallel()
			e := newBFEnv(t)
			e.db.Exec(t, bfItemsSchema)
			e.mustWalcake("setup", "--tables", "public.items")
			w := bfStartItemsWorkload(t, e, bfSeed(t))
			e.setVar("WALCAKE_FAILPOINT=" + fp + ":4")
			r := e.walcake("backfill", "--table", "public.items", "--chunk-rows", "1000", "--parallel", "2")
			if r.code != -1 { // killed by a signal
				t.Fatalf("backfill with failpoint %s: exit %d, want killed\n%s", fp, r.code, r.stderr)
			}
			e.setVar("WALCAKE_FAILPOINT=")
			e.setVar("SPOOL_DIR=" + filepath.Join(t.TempDir(), "fresh-spool"))
			e.mustWalcake("run")
			r = e.mustWalcake("backfill", "--table", "public.items", "--chunk-rows", "1000", "--json")
			var s backfillSummary
			if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
				t.Fatalf("%v: %s", err, r.stdout)
			}
			if s.Tables[0].Run != "000001" || (fp != compact.FailBackfillAfterPlan && s.ChunksResumed == 0) {
				t.Errorf("the second backfill did not resume the first: %+v", s)
			}
			w.finish(t)
			e.mustWalcake("run")
			bfCheckItems(t, e)
		})
	}
}

// TestBackfillKeyless backfills a table without a key (REPLICA IDENTITY
// FULL) under writes: its state is the multiset of the newest backfill's R
// rows plus the changes after it.
func TestBackfillKeyless(t *testing.T) {
	t.Parallel()
	e := newBFEnv(t)
	e.db.Exec(t, `CREATE TABLE logs (n int, msg text);
		ALTER TABLE logs REPLICA IDENTITY FULL;
		INSERT INTO logs SELECT g % 500, 'line ' || (g % 7) FROM generate_series(1, 20000) g;
		ANALYZE logs;`)
	e.mustWalcake("setup", "--tables", "public.logs")
	conn := e.db.Conn(t)
	var stop atomic.Bool
	var wg sync.WaitGroup
	rng := rand.New(rand.NewPCG(bfSeed(t), 1))
	wg.Go(func() {
		ctx := context.Background()
		for !stop.Load() {
			n := rng.IntN(600)
			var err error
			switch rng.IntN(4) {
			case 0:
				_, err = conn.Exec(ctx, "INSERT INTO logs VALUES ($1, $2), ($1, $2)", n, fmt.Sprintf("line %d", rng.IntN(7)))
			case 1:
				_, err = conn.Exec(ctx, "UPDATE logs SET msg = msg || '!' WHERE n = $1", n)
			case 2:
				_, err = conn.Exec(ctx, "DELETE FROM logs WHERE ctid = (SELECT ctid FROM logs WHERE n = $1 LIMIT 1)", n)
			case 3:
				_, err = conn.Exec(ctx, "UPDATE logs SET n = n WHERE n = $1", n) // changes nothing, still a D and a U
			}
			if err != nil {
				t.Errorf("workload: %v", err)
				return
			}
		}
	})
	t.Cleanup(func() { stop.Store(true); wg.Wait() })
	e.mustWalcake("run")
	r := e.mustWalcake("backfill", "--table", "public.logs", "--chunk-rows", "2500", "--parallel", "3")
	t.Logf("%s", strings.TrimSpace(r.stdout))
	e.mustWalcake("run")
	stop.Store(true)
	wg.Wait()
	e.mustWalcake("run")

	lake := e.download()
	ddb := duck.Open(t)
	glob := filepath.Join(lake, "public.logs", "**", "*.parquet")
	got := asStrings(duck.Rows(t, ddb, fmt.Sprintf(`
		WITH rows AS (SELECT * FROM read_parquet('%s', union_by_name=true, hive_partitioning=false)),
		base AS (SELECT max(_commit_lsn) AS lsn FROM rows WHERE _op = 'R'),
		trunc AS (SELECT max(_commit_lsn) AS lsn, max_by(_seq, _commit_lsn) AS seq FROM rows WHERE _op = 'T'),
		live AS (
			SELECT rows.* FROM rows, base, trunc
			WHERE _op <> 'T'
			  AND ((_op = 'R' AND _commit_lsn = base.lsn) OR (_op <> 'R' AND (base.lsn IS NULL OR _commit_lsn > base.lsn)))
			  AND (trunc.lsn IS NULL OR (_commit_lsn, _seq) > (trunc.lsn, trunc.seq)))
		SELECT CAST(n AS VARCHAR), msg, CAST(sum(CASE WHEN _op = 'D' THEN -1 ELSE 1 END) AS VARCHAR) AS c
		FROM live GROUP BY n, msg HAVING sum(CASE WHEN _op = 'D' THEN -1 ELSE 1 END) <> 0`, glob)))
	want := asStrings(e.pgRows("SELECT n::text, msg, count(*)::text FROM logs GROUP BY n, msg"))
	slices.Sort(got) // the same order, whatever the collations
	slices.Sort(want)
	sameRows(t, "public.logs", got, want)
	rows := duck.Rows(t, ddb, "SELECT count(DISTINCT _commit_lsn) FROM read_parquet('"+glob+"', union_by_name=true, hive_partitioning=false) WHERE _op = 'R'")
	if n := rows[0][0].(int64); n != 1 {
		t.Errorf("a keyless table's R rows come from %d snapshots, want 1", n)
	}
}

// TestBackfillTableAddedLater adds a table to the publication while capture
// --follow streams, backfills it under writes, and checks both tables.
func TestBackfillTableAddedLater(t *testing.T) {
	t.Parallel()
	e := newBFEnv(t)
	e.db.Exec(t, `CREATE TABLE early (id int PRIMARY KEY, v text);
		INSERT INTO early SELECT g, 'e' || g FROM generate_series(1, 100) g;`+bfItemsSchema)
	e.mustWalcake("setup", "--tables", "public.early")
	follow := e.start("capture", "--follow")
	e.db.Exec(t, "UPDATE early SET v = v || '!' WHERE id <= 10")
	e.db.Exec(t, "UPDATE items SET qty = -1 WHERE id <= 100") // not published yet

	e.mustWalcake("setup", "--tables", "public.early,public.items")
	w := bfStartItemsWorkload(t, e, bfSeed(t))
	e.db.Exec(t, "INSERT INTO early VALUES (1000, 'late')")
	r := e.mustWalcake("backfill", "--table", "public.items", "--chunk-rows", "3000", "--parallel", "2")
	t.Logf("%s", strings.TrimSpace(r.stdout))
	e.mustWalcake("compact") // beside the running capture
	w.finish(t)
	time.Sleep(time.Second) // let capture read the last changes before it stops
	follow.cmd.Process.Signal(os.Interrupt)
	<-follow.done
	e.mustWalcake("run")
	bfCheckItems(t, e)

	lake := e.download()
	ddb := duck.Open(t)
	got := asStrings(lakeState(t, ddb, lake, "public.early", []string{"id"}, "CAST(id AS VARCHAR), v", "id"))
	// early's rows from before the slot were never backfilled: only the
	// changed ones are in the lake.
	want := asStrings(e.pgRows("SELECT id::text, v FROM early AS t WHERE t.id <= 10 OR t.id = 1000 ORDER BY t.id"))
	sameRows(t, "public.early", got, want)
}

// TestSetupBackfill: setup --backfill creates the slot and then backfills
// every published table; the lake then holds the tables as they are.
func TestSetupBackfill(t *testing.T) {
	t.Parallel()
	e := newBFEnv(t)
	e.db.Exec(t, `CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (k text, v int); ALTER TABLE b REPLICA IDENTITY FULL;
		INSERT INTO a SELECT g, 'a' || g FROM generate_series(1, 3000) g;
		INSERT INTO b SELECT 'k' || g, g FROM generate_series(1, 500) g;`)
	e.setVar("WALCAKE_BACKFILL_CHUNK_ROWS=1000")
	r := e.mustWalcake("setup", "--tables", "public.a,public.b", "--backfill")
	if !strings.Contains(r.stdout, "backfill: 2 tables, 3500 rows") {
		t.Errorf("setup --backfill: %s", r.stdout)
	}
	e.db.Exec(t, "UPDATE a SET v = 'changed' WHERE id % 100 = 0; DELETE FROM b WHERE v > 400; INSERT INTO b VALUES ('new', 0)")
	e.mustWalcake("run")
	lake := e.download()
	ddb := duck.Open(t)
	sameRows(t, "public.a", asStrings(lakeState(t, ddb, lake, "public.a", []string{"id"}, "CAST(id AS VARCHAR), v", "id")),
		asStrings(e.pgRows("SELECT id::text, v FROM a AS t ORDER BY t.id")))
	glob := filepath.Join(lake, "public.b", "**", "*.parquet")
	sameRows(t, "public.b", asStrings(duck.Rows(t, ddb, `
		WITH rows AS (SELECT * FROM read_parquet('`+glob+`', union_by_name=true, hive_partitioning=false)),
		base AS (SELECT max(_commit_lsn) AS lsn FROM rows WHERE _op = 'R')
		SELECT k, CAST(v AS VARCHAR) FROM rows, base
		WHERE (_op = 'R' AND _commit_lsn = base.lsn) OR (_op = 'I' AND _commit_lsn > base.lsn)
		EXCEPT ALL
		SELECT k, CAST(v AS VARCHAR) FROM rows, base WHERE _op = 'D' AND _commit_lsn > base.lsn
		ORDER BY 1`)),
		asStrings(e.pgRows("SELECT k, v::text FROM b ORDER BY k")))
}

// TestBackfillBadInput: clear one-line errors, non-zero exits.
func TestBackfillBadInput(t *testing.T) {
	t.Parallel()
	e := newBFEnv(t)
	e.db.Exec(t, "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE hidden (id int PRIMARY KEY)")
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"backfill"}, 2, "--table schema.table, or give --all"},
		{[]string{"backfill", "--table", "public.a"}, 1, "does not exist; run walcake setup first"},
		{[]string{"backfill", "--table", "a", "--all"}, 2, "either --table or --all"},
	}
	for _, tt := range tests {
		r := e.walcake(tt.args...)
		if r.code != tt.code || !strings.Contains(r.stderr, tt.want) {
			t.Errorf("walcake %v: exit %d, stderr %q; want exit %d and %q", tt.args, r.code, r.stderr, tt.code, tt.want)
		}
	}
	e.mustWalcake("setup", "--tables", "public.a")
	r := e.walcake("backfill", "--table", "public.hidden")
	if r.code != 1 || !strings.Contains(r.stderr, "not in the publication") {
		t.Errorf("unpublished table: exit %d, %s", r.code, r.stderr)
	}
}

func TestProgressLine(t *testing.T) {
	t.Parallel()
	tests := []struct {
		st   compact.BackfillTableStats
		want string
	}{
		{compact.BackfillTableStats{Table: "public.a", Rows: 400_000, EstimatedRows: 1_000_000, ChunkRows: 100_000, ChunksDone: 4, ChunksPlanned: 6, ChunksResumed: 1, Elapsed: 2 * time.Second},
			"public.a                         400,000 / ~1,000,000 rows  50%  200,000 rows/s  ETA 3s  chunks 4/6+"},
		{compact.BackfillTableStats{Table: "public.b", Rows: 5000, EstimatedRows: -1, ChunksDone: 1, ChunksPlanned: 2, PlanDone: true, Elapsed: time.Second},
			"public.b                         5,000 rows  5,000 rows/s  chunks 1/2"},
		{compact.BackfillTableStats{Table: "public.c", Rows: 1234567, ChunksDone: 5, Bytes: 3 << 20, Done: true, Elapsed: 2 * time.Second},
			"public.c                         done: 1,234,567 rows, 5 chunks, 3.0 MiB, 2s, 617,283 rows/s"},
		{compact.BackfillTableStats{Table: "public.d", Run: "000002", Skipped: true}, "public.d                         backfilled before (run 000002)"},
		{compact.BackfillTableStats{Table: "public.e"}, "public.e                         waiting"},
	}
	for _, tt := range tests {
		if got := progressLine(tt.st); got != tt.want {
			t.Errorf("progressLine(%s):\n got %q\nwant %q", tt.st.Table, got, tt.want)
		}
	}
}

// TestTermBlock: log lines go above the block, which is redrawn below them.
func TestTermBlock(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	tb := &termBlock{out: &out}
	tb.draw([]string{"a 1", "b 1"})
	tb.Write([]byte("log line\n"))
	tb.draw([]string{"a 2", "b 2"})
	tb.finish()
	want := "a 1\x1b[K\nb 1\x1b[K\n" +
		"\x1b[2A\r\x1b[Jlog line\na 1\x1b[K\nb 1\x1b[K\n" +
		"\x1b[2A\r\x1b[Ja 2\x1b[K\nb 2\x1b[K\n"
	if out.String() != want {
		t.Errorf("got  %q\nwant %q", out.String(), want)
	}
}

// TestBackfillInterrupted stops a backfill with SIGINT: it exits 130, leaves
// no temporary files, and the next run finishes the job exactly.
func TestBackfillInterrupted(t *testing.T) {
	t.Parallel()
	e := newBFEnv(t)
	e.db.Exec(t, `CREATE TABLE items (id bigint PRIMARY KEY, grp int NOT NULL, name text, qty int, note text);
		INSERT INTO items SELECT g, g % 97, 'item ' || g, g % 13, NULL FROM generate_series(1, 200000) g;`)
	e.mustWalcake("setup", "--tables", "public.items")
	e.setVar("WALCAKE_PROGRESS_INTERVAL=50ms")
	p := e.start("backfill", "--table", "public.items", "--chunk-rows", "2000", "--parallel", "1")
	p.waitLine(regexp.MustCompile(`msg="backfill progress".*chunks_done=[1-9]`), time.Minute)
	p.cmd.Process.Signal(os.Interrupt)
	<-p.done
	if p.code != 130 {
		t.Fatalf("interrupted backfill: exit %d, want 130", p.code)
	}
	if left, _ := filepath.Glob(filepath.Join(e.spool, "backfill-*", "*")); len(left) != 0 {
		t.Errorf("temporary files left behind: %v", left)
	}
	r := e.mustWalcake("backfill", "--table", "public.items", "--chunk-rows", "2000", "--json")
	var s backfillSummary
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil || s.ChunksResumed == 0 || s.Tables[0].Run != "000001" {
		t.Errorf("resumed backfill: %+v, %v", s, err)
	}
	e.mustWalcake("run")
	lake := e.download()
	ddb := duck.Open(t)
	got := asStrings(lakeState(t, ddb, lake, "public.items", []string{"id"}, bfItemsDuckCols, "id"))
	want := asStrings(e.pgRows("SELECT " + bfItemsPGCols + " FROM items AS t ORDER BY t.id"))
	sameRows(t, "public.items", got, want)
	rows := duck.Rows(t, ddb, "SELECT count(*) - count(DISTINCT id) FROM read_parquet('"+filepath.Join(lake, "public.items", "**", "*.parquet")+"', union_by_name=true, hive_partitioning=false) WHERE _op = 'R'")
	if n := rows[0][0].(int64); n != 0 {
		t.Errorf("%d duplicate R rows", n)
	}
}
