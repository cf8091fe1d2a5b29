package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/wal-cake/wal-cake/compact"
	"github.com/wal-cake/wal-cake/scripts/testenv"
	"github.com/wal-cake/wal-cake/scripts/testenv/duck"
)

// The randomized crash test. A seeded workload writes to PostgreSQL while
// walcake run, capture, capture --follow and compact are started and killed
// with SIGKILL at random moments or at random steps of the commit protocol
// (failpoints), the spool is sometimes deleted and the S3 endpoint sometimes
// fails requests. At the end (and at checkpoints) one clean run, then the
// lake is compared with the workload's log of committed changes: zero lost,
// zero duplicated, nothing rolled back, the state rebuilt by DESIGN.md's rule
// equal to every table, every Parquet file named by exactly one manifest.
//
// Environment:
//
//	WALCAKE_CRASH_SEED          seed (default: from the clock; always printed)
//	WALCAKE_CRASH_KILLS         kills before the end (default 30)
//	WALCAKE_CRASH_VERIFY_EVERY  also verify after every N kills (default: only at the end)
//	WALCAKE_CRASH_VERBOSE       print the action log even when the test passes
//
// scripts/soak.sh runs it with many kills; docs/crash-test.md describes it.

const crashSchema = `
CREATE TABLE ck_a (id int PRIMARY KEY, v bigint NOT NULL, pad text);
CREATE TABLE ck_b (k1 int, k2 text, v bigint NOT NULL, PRIMARY KEY (k1, k2));
CREATE TABLE ck_c (id int, v bigint NOT NULL, note text NOT NULL);
ALTER TABLE ck_c REPLICA IDENTITY FULL;
CREATE TABLE ck_d (id int PRIMARY KEY, v bigint NOT NULL, pad text);`

type crashConfig struct {
	seed        uint64
	kills       int
	verifyEvery int
}

func crashConfigFromEnv(t *testing.T) crashConfig {
	t.Helper()
	c := crashConfig{seed: uint64(time.Now().UnixNano()) % 1_000_000_000, kills: 30}
	for name, dst := range map[string]any{
		"WALCAKE_CRASH_SEED": &c.seed, "WALCAKE_CRASH_KILLS": &c.kills, "WALCAKE_CRASH_VERIFY_EVERY": &c.verifyEvery,
	} {
		s := os.Getenv(name)
		if s == "" {
			continue
		}
		var err error
		switch d := dst.(type) {
		case *uint64:
			*d, err = strconv.ParseUint(s, 10, 64)
		case *int:
			*d, err = strconv.Atoi(s)
		}
		if err != nil {
			t.Fatalf("%s=%q: %v", name, s, err)
		}
	}
	return c
}

func TestCrashRandomized(t *testing.T) {
	cfg := crashConfigFromEnv(t)
	t.Logf("crash test: seed %d (rerun with WALCAKE_CRASH_SEED=%d), %d kills", cfg.seed, cfg.seed, cfg.kills)
	failed := true
	defer func() {
		if failed || t.Failed() {
			t.Logf("crash test FAILED: reproduce with WALCAKE_CRASH_SEED=%d WALCAKE_CRASH_KILLS=%d", cfg.seed, cfg.kills)
		}
	}()

	e := newEnv(t)
	// Transactions over 64 kB reach capture streamed in progress (pgoutput
	// protocol 2), the bulk and the large transactions among them.
	e.db.Exec(t, "ALTER DATABASE "+pgx.Identifier{e.db.Name}.Sanitize()+" SET logical_decoding_work_mem = '64kB'")
	e.db.Exec(t, crashSchema)
	e.mustWalcake("setup")
	proxy := e.withProxy()
	e.overrideVar("WALCAKE_S3_IO_TIMEOUT", "1s")
	e.overrideVar("WALCAKE_SEGMENT_MAX_AGE", "300ms")

	wl := newWorkload(t, e, cfg.seed)
	ch := &chaos{t: t, e: e, proxy: proxy, rng: rand.New(rand.NewPCG(cfg.seed, 2))}
	started := time.Now()
	wl.start()
	defer wl.stop()

	next := cfg.kills
	if cfg.verifyEvery > 0 {
		next = min(cfg.verifyEvery, cfg.kills)
	}
	progress := 100
	for {
		for ch.kills < next && !t.Failed() {
			ch.step()
			if ch.kills >= progress {
				t.Logf("crash test: %d kills, %d actions, %d changes so far, %s", ch.kills, ch.actions, wl.changesSoFar(), time.Since(started).Round(time.Second))
				progress += 100
			}
		}
		if t.Failed() {
			ch.dumpLog()
			return
		}
		wl.pause()
		v := ch.verify(wl)
		t.Logf("crash test: verified after %d kills, %d actions: %s", ch.kills, ch.actions, v)
		if t.Failed() {
			ch.dumpLog()
			return
		}
		if ch.kills >= cfg.kills {
			break
		}
		next = min(next+cfg.verifyEvery, cfg.kills)
		wl.resume()
	}
	wl.stop()
	failed = false
	if os.Getenv("WALCAKE_CRASH_VERBOSE") != "" {
		ch.dumpLog()
	}
	t.Logf("crash test: seed=%d kills=%d (signal=%d failpoint=%d) actions=%d spool_drops=%d s3_faulty_actions=%d changes=%d txns=%d rolled_back_txns=%d duration=%s verdict=PASS",
		cfg.seed, ch.kills, ch.signalKills, ch.failpointKills, ch.actions, ch.spoolDrops, ch.faultyActions,
		wl.changes(), wl.committed, wl.rolledBack, time.Since(started).Round(time.Second))
}

// ---- the workload ----

// workload writes seeded random transactions and logs every change that
// commits, in the identities the lake's rows will carry.
type workload struct {
	t    *testing.T
	e    *env
	conn *pgx.Conn
	rng  *rand.Rand

	nextV   int64 // version stamps: every insert and update writes a new one
	nextKey int   // keys are never reused
	m       model
	bigAt   int // the large transaction comes after this many transactions

	// The ground truth, owned by the workload goroutine while it runs.
	want       map[string]int // identity -> times it must appear in the lake
	forbidden  map[int64]bool // versions written by rolled-back changes
	forbiddenR [][2]int64     // ranges [from, to) of them, from rolled-back bulk inserts
	committed  int
	rolledBack int
	logged     int // sum of want, under mu

	mu      sync.Mutex
	paused  bool
	cond    *sync.Cond
	idle    bool // paused and between transactions
	stopped bool
	done    chan struct{}
	err     error
}

// model is what the workload believes the tables hold.
type model struct {
	a keyed[int, rowA]
	b keyed[keyB, rowA]
	c []rowC // ck_c is a multiset (no key)
}

type rowA struct {
	v   int64
	pad string
}

type keyB struct {
	k1 int
	k2 string
}

type rowC struct {
	id   int
	v    int64
	note string
}

// keyed is a map whose random picks depend only on the sequence of changes,
// not on Go's map order.
type keyed[K comparable, R any] struct {
	keys []K
	idx  map[K]int
	rows map[K]R
}

func (k *keyed[K, R]) put(key K, r R) {
	if k.idx == nil {
		k.idx, k.rows = map[K]int{}, map[K]R{}
	}
	if _, ok := k.idx[key]; !ok {
		k.idx[key] = len(k.keys)
		k.keys = append(k.keys, key)
	}
	k.rows[key] = r
}

func (k *keyed[K, R]) del(key K) {
	i := k.idx[key]
	last := k.keys[len(k.keys)-1]
	k.keys[i] = last
	k.idx[last] = i
	k.keys = k.keys[:len(k.keys)-1]
	delete(k.idx, key)
	delete(k.rows, key)
}

func (k *keyed[K, R]) pick(rng *rand.Rand) (K, bool) {
	if len(k.keys) == 0 {
		var zero K
		return zero, false
	}
	return k.keys[rng.IntN(len(k.keys))], true
}

func (k keyed[K, R]) clone() keyed[K, R] {
	c := keyed[K, R]{keys: append([]K(nil), k.keys...), idx: make(map[K]int, len(k.idx)), rows: make(map[K]R, len(k.rows))}
	for key, i := range k.idx {
		c.idx[key] = i
	}
	for key, r := range k.rows {
		c.rows[key] = r
	}
	return c
}

func (m model) clone() model {
	return model{a: m.a.clone(), b: m.b.clone(), c: append([]rowC(nil), m.c...)}
}

func newWorkload(t *testing.T, e *env, seed uint64) *workload {
	w := &workload{
		t: t, e: e, conn: e.db.Conn(t),
		rng:       rand.New(rand.NewPCG(seed, 1)),
		nextV:     1,
		nextKey:   1,
		want:      map[string]int{},
		forbidden: map[int64]bool{},
		done:      make(chan struct{}),
	}
	w.bigAt = 100 + w.rng.IntN(400)
	w.cond = sync.NewCond(&w.mu)
	return w
}

// start runs transactions in a goroutine until stop.
func (w *workload) start() {
	go func() {
		defer close(w.done)
		ctx := context.Background()
		for {
			w.mu.Lock()
			for w.paused && !w.stopped {
				w.idle = true
				w.cond.Broadcast()
				w.cond.Wait()
			}
			w.idle = false
			stopped := w.stopped
			w.mu.Unlock()
			if stopped {
				return
			}
			if err := w.txn(ctx); err != nil {
				w.mu.Lock()
				w.err = err
				w.stopped = true
				w.mu.Unlock()
				return
			}
			time.Sleep(time.Duration(5+w.rng.IntN(35)) * time.Millisecond)
		}
	}()
}

// pause returns once the workload is between transactions and waiting.
func (w *workload) pause() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.paused = true
	for !w.idle && !w.stopped {
		w.cond.Wait()
	}
	if w.err != nil {
		w.t.Fatalf("workload: %v", w.err)
	}
}

func (w *workload) resume() {
	w.mu.Lock()
	w.paused = false
	w.cond.Broadcast()
	w.mu.Unlock()
}

func (w *workload) stop() {
	w.mu.Lock()
	w.stopped = true
	w.cond.Broadcast()
	w.mu.Unlock()
	<-w.done
	if w.err != nil {
		w.t.Errorf("workload: %v", w.err)
	}
}

// changesSoFar is changes, safe to call while the workload runs.
func (w *workload) changesSoFar() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.logged
}

// changes is how many lake rows the log expects.
func (w *workload) changes() int {
	n := 0
	for _, c := range w.want {
		n += c
	}
	return n
}

// txnPlan accumulates one transaction's statements and expected rows.
type txnPlan struct {
	stmts    []stmt
	want     []string
	versions []int64
}

type stmt struct {
	sql  string
	args []any
}

func (p *txnPlan) add(want []string, sql string, args ...any) {
	p.stmts = append(p.stmts, stmt{sql, args})
	p.want = append(p.want, want...)
}

// txn runs one random transaction.
func (w *workload) txn(ctx context.Context) error {
	if w.committed+w.rolledBack == w.bigAt {
		return w.bigTxn(ctx)
	}
	kind := w.rng.IntN(100)
	if kind < 3 {
		return w.bulkTxn(ctx)
	}
	tx, err := w.conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	var xid int64
	if err := tx.QueryRow(ctx, "SELECT (txid_current() % 4294967296)::bigint").Scan(&xid); err != nil {
		return err
	}
	exec := func(p *txnPlan) error {
		for _, s := range p.stmts {
			tag, err := tx.Exec(ctx, s.sql, s.args...)
			if err != nil {
				return fmt.Errorf("%s %v: %w", s.sql, s.args, err)
			}
			if tag.RowsAffected() != 1 {
				return fmt.Errorf("%s %v: %d rows, want 1 (the model is wrong)", s.sql, s.args, tag.RowsAffected())
			}
		}
		return nil
	}
	switch {
	case kind < 10: // rolled back whole
		m := w.m.clone()
		p := w.ops(&m, xid, 1+w.rng.IntN(6))
		if err := exec(p); err != nil {
			return err
		}
		if err := tx.Rollback(ctx); err != nil {
			return err
		}
		w.forbid(p)
		w.rolledBack++
		return nil
	case kind < 25: // a savepoint, rolled back or released
		p1 := w.ops(&w.m, xid, w.rng.IntN(4))
		if err := exec(p1); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "SAVEPOINT s"); err != nil {
			return err
		}
		keep := w.rng.IntN(3) == 0
		saved := w.m.clone()
		p2 := w.ops(&w.m, xid, 1+w.rng.IntN(4))
		if err := exec(p2); err != nil {
			return err
		}
		if keep {
			if _, err := tx.Exec(ctx, "RELEASE SAVEPOINT s"); err != nil {
				return err
			}
		} else {
			if _, err := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT s"); err != nil {
				return err
			}
			w.m = saved
			w.forbid(p2)
		}
		p3 := w.ops(&w.m, xid, w.rng.IntN(4))
		if err := exec(p3); err != nil {
			return err
		}
		if err := tx.Commit(ctx); err != nil {
			return err
		}
		w.record(p1, p3)
		if keep {
			w.record(p2)
		}
	default:
		p := w.ops(&w.m, xid, 1+w.rng.IntN(8))
		if err := exec(p); err != nil {
			return err
		}
		if err := tx.Commit(ctx); err != nil {
			return err
		}
		w.record(p)
	}
	w.committed++
	return nil
}

func (w *workload) record(ps ...*txnPlan) {
	n := 0
	for _, p := range ps {
		for _, id := range p.want {
			w.want[id]++
			n++
		}
	}
	w.mu.Lock()
	w.logged += n
	w.mu.Unlock()
}

func (w *workload) forbid(p *txnPlan) {
	for _, v := range p.versions {
		w.forbidden[v] = true
	}
}

func (w *workload) version(p *txnPlan) int64 {
	v := w.nextV
	w.nextV++
	p.versions = append(p.versions, v)
	return v
}

func (w *workload) key() int {
	k := w.nextKey
	w.nextKey++
	return k
}

func (w *workload) pad() string {
	return strings.Repeat(string(rune('a'+w.rng.IntN(26))), w.rng.IntN(80))
}

// ops plans n random single-row changes against m, updating m.
func (w *workload) ops(m *model, xid int64, n int) *txnPlan {
	p := &txnPlan{}
	for range n {
		r := w.rng.IntN(100)
		switch table := w.rng.IntN(3); table {
		case 0: // ck_a: primary key, default replica identity
			k, ok := m.a.pick(w.rng)
			switch {
			case r < 40 || !ok:
				k, v, pad := w.key(), w.version(p), w.pad()
				p.add([]string{fmt.Sprintf("a|I|%d", v)}, "INSERT INTO ck_a VALUES ($1, $2, $3)", k, v, pad)
				m.a.put(k, rowA{v, pad})
			case r < 65:
				v, pad := w.version(p), w.pad()
				p.add([]string{fmt.Sprintf("a|U|%d", v)}, "UPDATE ck_a SET v = $1, pad = $2 WHERE id = $3", v, pad, k)
				m.a.put(k, rowA{v, pad})
			case r < 80: // the key changes: a delete of the old key, an update of the new
				k2, v := w.key(), w.version(p)
				p.add([]string{fmt.Sprintf("a|D|%d|%d", k, xid), fmt.Sprintf("a|U|%d", v)}, "UPDATE ck_a SET id = $1, v = $2 WHERE id = $3", k2, v, k)
				old := m.a.rows[k]
				m.a.del(k)
				m.a.put(k2, rowA{v, old.pad})
			default:
				p.add([]string{fmt.Sprintf("a|D|%d|%d", k, xid)}, "DELETE FROM ck_a WHERE id = $1", k)
				m.a.del(k)
			}
		case 1: // ck_b: composite primary key
			k, ok := m.b.pick(w.rng)
			switch {
			case r < 40 || !ok:
				k, v := keyB{1 + w.rng.IntN(50), "k" + strconv.Itoa(w.key())}, w.version(p)
				p.add([]string{fmt.Sprintf("b|I|%d", v)}, "INSERT INTO ck_b VALUES ($1, $2, $3)", k.k1, k.k2, v)
				m.b.put(k, rowA{v: v})
			case r < 65:
				v := w.version(p)
				p.add([]string{fmt.Sprintf("b|U|%d", v)}, "UPDATE ck_b SET v = $1 WHERE k1 = $2 AND k2 = $3", v, k.k1, k.k2)
				m.b.put(k, rowA{v: v})
			case r < 80:
				k2 := keyB{k.k1, "k" + strconv.Itoa(w.key())}
				if w.rng.IntN(2) == 0 {
					k2.k1 = 1 + w.rng.IntN(50)
				}
				v := w.version(p)
				p.add([]string{fmt.Sprintf("b|D|%d|%s|%d", k.k1, k.k2, xid), fmt.Sprintf("b|U|%d", v)},
					"UPDATE ck_b SET k1 = $1, k2 = $2, v = $3 WHERE k1 = $4 AND k2 = $5", k2.k1, k2.k2, v, k.k1, k.k2)
				m.b.del(k)
				m.b.put(k2, rowA{v: v})
			default:
				p.add([]string{fmt.Sprintf("b|D|%d|%s|%d", k.k1, k.k2, xid)}, "DELETE FROM ck_b WHERE k1 = $1 AND k2 = $2", k.k1, k.k2)
				m.b.del(k)
			}
		default: // ck_c: no key, REPLICA IDENTITY FULL; an update is a delete of the old row and the new row
			switch {
			case r < 40 || len(m.c) == 0:
				row := rowC{id: 1 + w.rng.IntN(20), v: w.version(p), note: w.pad()}
				p.add([]string{fmt.Sprintf("c|I|%d", row.v)}, "INSERT INTO ck_c VALUES ($1, $2, $3)", row.id, row.v, row.note)
				m.c = append(m.c, row)
			case r < 75:
				i := w.rng.IntN(len(m.c))
				old := m.c[i]
				row := rowC{id: old.id, v: w.version(p), note: w.pad()}
				p.add([]string{fmt.Sprintf("c|D|%d", old.v), fmt.Sprintf("c|U|%d", row.v)}, "UPDATE ck_c SET v = $1, note = $2 WHERE v = $3", row.v, row.note, old.v)
				m.c[i] = row
			default:
				i := w.rng.IntN(len(m.c))
				old := m.c[i]
				p.add([]string{fmt.Sprintf("c|D|%d", old.v)}, "DELETE FROM ck_c WHERE v = $1", old.v)
				m.c[i] = m.c[len(m.c)-1]
				m.c = m.c[:len(m.c)-1]
			}
		}
	}
	return p
}

func (w *workload) isForbidden(v int64) bool {
	if w.forbidden[v] {
		return true
	}
	for _, r := range w.forbiddenR {
		if v >= r[0] && v < r[1] {
			return true
		}
	}
	return false
}

// bulkTxn inserts 1,500 to 3,000 rows into ck_d next to a few single-row
// changes: more than logical_decoding_work_mem (64 kB in this test), so the
// server streams it in progress (pgoutput protocol 2). It commits, rolls
// back whole, or rolls back a savepoint around the bulk insert (a streamed
// subtransaction abort).
func (w *workload) bulkTxn(ctx context.Context) error {
	n := 1500 + w.rng.IntN(1500)
	k0, v0 := w.nextKey, w.nextV
	w.nextKey += n
	w.nextV += int64(n)
	outcome := w.rng.IntN(5) // 0: rollback, 1: savepoint rolled back, else commit
	tx, err := w.conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	var xid int64
	if err := tx.QueryRow(ctx, "SELECT (txid_current() % 4294967296)::bigint").Scan(&xid); err != nil {
		return err
	}
	m := w.m.clone()
	p := w.ops(&m, xid, 1+w.rng.IntN(3))
	for _, st := range p.stmts {
		if _, err := tx.Exec(ctx, st.sql, st.args...); err != nil {
			return fmt.Errorf("%s %v: %w", st.sql, st.args, err)
		}
	}
	if outcome == 1 {
		if _, err := tx.Exec(ctx, "SAVEPOINT bulk"); err != nil {
			return err
		}
	}
	if _, err := tx.Exec(ctx, "INSERT INTO ck_d SELECT g, $1::bigint + (g - $2::int), repeat('y', 60) FROM generate_series($2::int, $3::int) g",
		v0, k0, k0+n-1); err != nil {
		return fmt.Errorf("bulk insert: %w", err)
	}
	bulkRolledBack := outcome <= 1
	if bulkRolledBack {
		w.forbiddenR = append(w.forbiddenR, [2]int64{v0, v0 + int64(n)})
	}
	switch outcome {
	case 0:
		if err := tx.Rollback(ctx); err != nil {
			return err
		}
		w.forbid(p)
		w.rolledBack++
		return nil
	case 1:
		if _, err := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT bulk"); err != nil {
			return err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	w.m = m
	w.record(p)
	if !bulkRolledBack {
		for i := range int64(n) {
			w.want[fmt.Sprintf("d|I|%d", v0+i)]++
		}
		w.mu.Lock()
		w.logged += n
		w.mu.Unlock()
	}
	w.committed++
	return nil
}

// bigTxn inserts tens of thousands of rows into ck_d in one transaction:
// more than one spool write group, so a kill can cut it in the middle.
func (w *workload) bigTxn(ctx context.Context) error {
	n := 40_000 + w.rng.IntN(40_000)
	k0, v0 := w.nextKey, w.nextV
	w.nextKey += n
	w.nextV += int64(n)
	_, err := w.conn.Exec(ctx, "INSERT INTO ck_d SELECT g, $1::bigint + (g - $2::int), repeat('x', 60) FROM generate_series($2::int, $3::int) g",
		v0, k0, k0+n-1)
	if err != nil {
		return fmt.Errorf("large transaction: %w", err)
	}
	for i := range int64(n) {
		w.want[fmt.Sprintf("d|I|%d", v0+i)]++
	}
	w.mu.Lock()
	w.logged += n
	w.mu.Unlock()
	w.committed++
	w.t.Logf("workload: large transaction of %d rows after %d transactions", n, w.bigAt)
	return nil
}

// ---- chaos: processes started and killed ----

type chaos struct {
	t     *testing.T
	e     *env
	proxy *testenv.FaultProxy
	rng   *rand.Rand

	actions        int
	kills          int
	signalKills    int
	failpointKills int
	spoolDrops     int
	faultyActions  int
	unexpected     int
	log            []string
}

func (c *chaos) logf(format string, args ...any) {
	c.log = append(c.log, fmt.Sprintf("#%d kills=%d ", c.actions, c.kills)+fmt.Sprintf(format, args...))
}

func (c *chaos) dumpLog() {
	c.t.Logf("crash test: the last actions:\n%s", strings.Join(c.log[max(0, len(c.log)-200):], "\n"))
}

// plan is one action, drawn whole before it runs so that a seed gives the
// same schedule whatever the processes do.
type plan struct {
	cmd       string        // run, capture, compact, follow
	killAfter time.Duration // SIGKILL after this long; 0: let it end
	failpoint string        // WALCAKE_FAILPOINT, or ""
	dropSpool bool
	s3        testenv.FaultRule
	// follow only: compactions beside it, and how long it lives.
	compacts []plan
	gaps     []time.Duration
}

func (c *chaos) draw() plan {
	r := c.rng
	var p plan
	p.dropSpool = r.IntN(100) < 6
	if r.IntN(100) < 35 {
		p.s3 = c.drawFaults()
	}
	switch x := r.IntN(100); {
	case x < 35:
		p.cmd = "run"
		c.drawKill(&p, 2500*time.Millisecond, 25, 75)
	case x < 55:
		p.cmd = "capture"
		c.drawKill(&p, 1500*time.Millisecond, 0, 80)
	case x < 75:
		p.cmd = "compact"
		c.drawKill(&p, 1200*time.Millisecond, 40, 40)
	default:
		p.cmd = "follow"
		p.killAfter = time.Duration(500+r.IntN(3500)) * time.Millisecond
		for n := r.IntN(4); n > 0; n-- {
			cp := plan{cmd: "compact"}
			c.drawKill(&cp, 1000*time.Millisecond, 30, 30)
			p.compacts = append(p.compacts, cp)
			p.gaps = append(p.gaps, time.Duration(100+r.IntN(1000))*time.Millisecond)
		}
	}
	return p
}

// drawKill gives p a failpoint (fpPct percent) or else a SIGKILL after up
// to maxDelay (killPct percent).
func (c *chaos) drawKill(p *plan, maxDelay time.Duration, fpPct, killPct int) {
	r := c.rng
	fp, kill := r.IntN(100) < fpPct, r.IntN(100) < killPct
	step := compact.Failpoints[r.IntN(len(compact.Failpoints))]
	hit := 1 + r.IntN(2)
	delay := time.Duration(20+r.Int64N(int64(maxDelay/time.Millisecond))) * time.Millisecond
	switch {
	case fp:
		p.failpoint = fmt.Sprintf("%s:%d", step, hit)
	case kill:
		p.killAfter = delay
	}
}

func (c *chaos) drawFaults() testenv.FaultRule {
	r := c.rng
	pool := []testenv.Fault{
		testenv.InternalError, testenv.InternalError, testenv.LostResponse, testenv.LostResponse,
		testenv.Hang, testenv.SlowDown, testenv.Stall, testenv.Refuse,
	}
	var faults []testenv.Fault
	for n := 1 + r.IntN(3); n > 0; n-- {
		faults = append(faults, pool[r.IntN(len(pool))])
	}
	return testenv.FaultRule{
		Faults:    faults,
		Fraction:  0.05 + 0.3*r.Float64(),
		Seed:      r.Uint64(),
		RefuseFor: time.Duration(100+r.IntN(700)) * time.Millisecond,
	}
}

// step draws and runs one action.
func (c *chaos) step() {
	p := c.draw()
	c.actions++
	if p.dropSpool {
		if err := os.RemoveAll(c.e.spool); err != nil {
			c.t.Fatal(err)
		}
		c.spoolDrops++
		c.logf("spool deleted")
	}
	faulty := len(p.s3.Faults) > 0
	if faulty {
		c.proxy.Set(p.s3)
		c.faultyActions++
	} else {
		c.proxy.Clear()
	}
	if p.cmd == "follow" {
		c.follow(p)
	} else {
		c.runOne(p, faulty)
	}
}

// runOne runs a batch command as planned and accounts for how it ended.
func (c *chaos) runOne(p plan, faulty bool) {
	args := []string{p.cmd}
	if p.cmd != "compact" {
		args = append(args, "--status-interval", "200ms")
	}
	vars := c.e.vars
	if p.failpoint != "" {
		c.e.vars = append(append([]string(nil), vars...), "WALCAKE_FAILPOINT="+p.failpoint)
	}
	proc := c.e.spawn(args...)
	c.e.vars = vars
	var r result
	if p.killAfter > 0 {
		var ok bool
		if r, ok = proc.waitFor(p.killAfter); !ok {
			r = proc.kill()
			c.checkNoPanic(p.cmd, r)
			c.kills++
			c.signalKills++
			c.logf("%s killed after %s (s3 faults %v)", p.cmd, p.killAfter, p.s3.Faults)
			return
		}
	} else {
		var ok bool
		if r, ok = proc.waitFor(3 * time.Minute); !ok {
			r = proc.kill()
			c.t.Errorf("walcake %s (failpoint %q) still running after 3 minutes; killed. stderr:\n%s", p.cmd, p.failpoint, r.stderr)
			return
		}
	}
	c.outcome(p, r, faulty)
}

// checkNoPanic fails the test when a killed process had panicked before.
func (c *chaos) checkNoPanic(cmd string, r result) {
	if strings.Contains(r.stderr, "panic:") {
		c.t.Errorf("walcake %s panicked before it was killed:\n%s", cmd, r.stderr)
	}
}

// outcome accounts for a process that ended by itself.
func (c *chaos) outcome(p plan, r result, faulty bool) {
	reason := ""
	if r.code != 0 {
		reason = finalLine(r.stderr)
	}
	switch {
	case strings.Contains(r.stderr, "panic:") || strings.Contains(r.stderr, "goroutine "):
		c.t.Errorf("walcake %s panicked:\n%s", p.cmd, r.stderr)
	case killed(r) && p.failpoint != "" && strings.Contains(r.stderr, "failpoint"):
		c.kills++
		c.failpointKills++
		c.logf("%s killed at failpoint %s", p.cmd, p.failpoint)
	case r.code == 0:
		c.logf("%s ended: %s", p.cmd, strings.TrimSpace(r.stdout))
	case strings.Contains(reason, "locked"):
		c.logf("%s locked out: %s", p.cmd, reason)
	case faulty && strings.Contains(reason, "s3:"):
		c.logf("%s failed on injected S3 faults %v: %s", p.cmd, p.s3.Faults, reason)
	default:
		c.unexpected++
		c.logf("%s FAILED (exit %d): %s", p.cmd, r.code, reason)
		c.t.Errorf("walcake %s failed without an injected cause (exit %d): %s\nstderr:\n%s", p.cmd, r.code, reason, r.stderr)
	}
}

// follow runs capture --follow with compactions beside it, then kills it.
func (c *chaos) follow(p plan) {
	started := time.Now()
	capture := c.e.spawn("capture", "--follow", "--status-interval", "200ms")
	for i, cp := range p.compacts {
		time.Sleep(p.gaps[i])
		cp.s3 = p.s3 // the proxy's rule for the whole action
		c.runOne(cp, len(p.s3.Faults) > 0)
	}
	if rest := p.killAfter - time.Since(started); rest > 0 {
		time.Sleep(rest)
	}
	if !capture.running() {
		r := capture.wait()
		c.outcome(plan{cmd: "capture --follow"}, r, len(p.s3.Faults) > 0)
		return
	}
	c.checkNoPanic("capture --follow", capture.kill())
	c.kills++
	c.signalKills++
	c.logf("capture --follow killed after %s, %d compactions beside it", time.Since(started).Round(time.Millisecond), len(p.compacts))
}

// ---- verification ----

// verify runs walcake cleanly, then compares the lake with the workload's
// log. It returns a summary.
func (c *chaos) verify(w *workload) string {
	t, e := c.t, c.e
	t.Helper()
	c.proxy.Clear()
	var r result
	for attempt := 1; ; attempt++ {
		r = e.walcake("run", "--status-interval", "200ms")
		if r.code == 0 {
			break
		}
		c.logf("final run %d failed: %s", attempt, finalLine(r.stderr))
		if attempt == 3 {
			t.Fatalf("the clean run after the chaos fails: exit %d\n%s", r.code, r.stderr)
		}
		time.Sleep(2 * time.Second)
	}
	c.logf("clean run: %s", strings.TrimSpace(r.stdout))

	lake := e.download()
	ddb := duck.Open(t)
	read := func(table, cols string) [][]any {
		glob := filepath.Join(lake, table, "**", "*.parquet")
		if m, _ := filepath.Glob(filepath.Join(lake, table, "*", "*.parquet")); len(m) == 0 {
			return nil
		}
		return duck.Rows(t, ddb, "SELECT "+cols+" FROM read_parquet('"+glob+"', union_by_name=true, hive_partitioning=false)")
	}
	got := map[string]int{}
	var rolledBack []string
	note := func(id string, v any) {
		got[id]++
		if n, ok := v.(int64); ok && w.isForbidden(n) {
			rolledBack = append(rolledBack, id)
		}
	}
	for _, r := range read("public.ck_a", "_op, v, id, _xid") {
		if r[0] == "D" {
			note(fmt.Sprintf("a|D|%v|%v", r[2], r[3]), r[1])
		} else {
			note(fmt.Sprintf("a|%v|%v", r[0], r[1]), r[1])
		}
	}
	for _, r := range read("public.ck_b", "_op, v, k1, k2, _xid") {
		if r[0] == "D" {
			note(fmt.Sprintf("b|D|%v|%v|%v", r[2], r[3], r[4]), r[1])
		} else {
			note(fmt.Sprintf("b|%v|%v", r[0], r[1]), r[1])
		}
	}
	for _, r := range read("public.ck_c", "_op, v") {
		note(fmt.Sprintf("c|%v|%v", r[0], r[1]), r[1])
	}
	for _, r := range read("public.ck_d", "_op, v") {
		note(fmt.Sprintf("d|%v|%v", r[0], r[1]), r[1])
	}

	var lost, dup []string
	nLost, nDup := 0, 0
	for id, n := range w.want {
		if g := got[id]; g < n {
			lost = append(lost, id)
			nLost += n - g
		}
	}
	for id, g := range got {
		if n := w.want[id]; g > n {
			dup = append(dup, fmt.Sprintf("%s (%d times, want %d)", id, g, n))
			nDup += g - n
		}
	}
	sort.Strings(lost)
	sort.Strings(dup)
	if nLost > 0 {
		t.Errorf("%d changes lost, e.g. %v", nLost, lost[:min(len(lost), 20)])
	}
	if nDup > 0 {
		t.Errorf("%d rows duplicated or unexpected, e.g. %v", nDup, dup[:min(len(dup), 20)])
	}
	if len(rolledBack) > 0 {
		t.Errorf("%d rows of rolled-back changes in the lake, e.g. %v", len(rolledBack), rolledBack[:min(len(rolledBack), 20)])
	}

	// The state by DESIGN.md's rule equals each table.
	for _, tb := range []lakeTableSpec{
		{"public.ck_a", "ck_a", []string{"id"}, "CAST(id AS VARCHAR), CAST(v AS VARCHAR), pad", "t.id::text, t.v::text, t.pad", "id", "t.id"},
		{"public.ck_b", "ck_b", []string{"k1", "k2"}, "CAST(k1 AS VARCHAR), k2, CAST(v AS VARCHAR)", "t.k1::text, t.k2, t.v::text", "k1, k2", "t.k1, t.k2"},
		{"public.ck_d", "ck_d", []string{"id"}, "CAST(id AS VARCHAR), CAST(v AS VARCHAR), pad", "t.id::text, t.v::text, t.pad", "id", "t.id"},
	} {
		want := asStrings(e.pgRows("SELECT " + tb.pgCols + " FROM " + tb.pgTable + " AS t ORDER BY " + tb.pgOrderBy))
		var state []string
		if m, _ := filepath.Glob(filepath.Join(lake, tb.table, "*", "*.parquet")); len(m) > 0 {
			state = asStrings(lakeState(t, ddb, lake, tb.table, tb.key, tb.duckCols, tb.orderBy))
		}
		sameRows(t, tb.table+" state", state, want)
	}
	// ck_c has no key: its state is the multiset its rows add and remove.
	if m, _ := filepath.Glob(filepath.Join(lake, "public.ck_c", "*", "*.parquet")); len(m) > 0 {
		glob := filepath.Join(lake, "public.ck_c", "**", "*.parquet")
		state := asStrings(duck.Rows(t, ddb, `SELECT CAST(id AS VARCHAR), CAST(v AS VARCHAR), note, sum(CASE WHEN _op = 'D' THEN -1 ELSE 1 END) AS n
			FROM read_parquet('`+glob+`', union_by_name=true, hive_partitioning=false)
			GROUP BY id, v, note HAVING n <> 0 ORDER BY v`))
		want := asStrings(e.pgRows("SELECT t.id::text, t.v::text, t.note, 1 FROM ck_c AS t ORDER BY t.v"))
		sameRows(t, "public.ck_c state (multiset)", state, want)
	}
	// Every row once by (_commit_lsn, _seq) within its table.
	for _, table := range []string{"public.ck_a", "public.ck_b", "public.ck_c", "public.ck_d"} {
		if rows := read(table, "count(*) - count(DISTINCT (_commit_lsn, _seq))"); len(rows) > 0 && rows[0][0].(int64) != 0 {
			t.Errorf("%s: %d rows share a (_commit_lsn, _seq)", table, rows[0][0])
		}
	}
	// A glob reader sees what a manifest reader sees.
	checkFilesMatchManifests(e, lake)
	if confirmed, end := e.slotConfirmed(), e.lakeEnd(); confirmed < end {
		t.Errorf("slot at %s, before the lake's end %s", confirmed, end)
	}
	if c.unexpected > 0 {
		t.Errorf("%d walcake processes failed without an injected cause", c.unexpected)
	}
	var streamed, spilled int64
	e.db.QueryRow(t, "SELECT coalesce(sum(stream_txns), 0)::bigint, coalesce(sum(spill_txns), 0)::bigint FROM pg_stat_replication_slots WHERE slot_name = 'walcake_test'").Scan(&streamed, &spilled)
	return fmt.Sprintf("%d changes expected, %d lake rows, %d lost, %d duplicated, %d rolled back present (server streamed %d transactions, spilled %d)",
		w.changes(), sumCounts(got), nLost, nDup, len(rolledBack), streamed, spilled)
}

type lakeTableSpec struct {
	table, pgTable     string
	key                []string
	duckCols, pgCols   string
	orderBy, pgOrderBy string
}

func sumCounts(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
