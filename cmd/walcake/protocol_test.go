package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/wal-cake/wal-cake/compact"
	"github.com/wal-cake/wal-cake/scripts/testenv/duck"
	"github.com/wal-cake/wal-cake/spool"
)

// Two tables, so that a commit uploads several files.
const protoSchema = `
CREATE TABLE items (id int PRIMARY KEY, v text);
CREATE TABLE notes (id int PRIMARY KEY, body text);`

// protoBatch writes a batch of changes numbered by n: 20 inserts into each
// table, 5 updates, 2 deletes and a rolled-back transaction.
func protoBatch(e *env, n int) {
	base := n * 1000
	e.db.Exec(e.t, fmt.Sprintf(`INSERT INTO items SELECT g, 'item ' || g FROM generate_series(%d, %d) g`, base+1, base+20))
	e.db.Exec(e.t, fmt.Sprintf(`INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(%d, %d) g`, base+1, base+20))
	e.db.Exec(e.t, fmt.Sprintf(`UPDATE items SET v = v || ' (updated)' WHERE id BETWEEN %d AND %d`, base+1, base+5))
	e.db.Exec(e.t, fmt.Sprintf(`DELETE FROM notes WHERE id IN (%d, %d)`, base+6, base+7))
	e.db.Exec(e.t, fmt.Sprintf(`BEGIN; INSERT INTO items VALUES (%d, 'ROLLBACK'); ROLLBACK`, base+999))
}

// protoOps is what protoBatch writes, by table and _op.
func protoOps(batches int) map[string]map[string]int64 {
	return map[string]map[string]int64{
		"public.items": {"I": int64(20 * batches), "U": int64(5 * batches)},
		"public.notes": {"I": int64(20 * batches), "D": int64(2 * batches)},
	}
}

// checkExactlyOnce reads the lake with DuckDB and checks: every change once
// (counts by op), nothing rolled back, state equal to PostgreSQL, and every
// Parquet file named by exactly one manifest (a glob reader sees what a
// manifest reader sees).
func checkExactlyOnce(e *env, want map[string]map[string]int64) {
	t := e.t
	t.Helper()
	lake := e.download()
	ddb := duck.Open(t)
	for table, ops := range want {
		glob := filepath.Join(lake, table, "**", "*.parquet")
		rows := duck.Rows(t, ddb, "SELECT _op, count(*), count(DISTINCT (_commit_lsn, _seq)) FROM read_parquet('"+glob+"', union_by_name=true, hive_partitioning=false) GROUP BY _op")
		got := map[string]int64{}
		for _, r := range rows {
			got[r[0].(string)] = r[1].(int64)
			if r[1] != r[2] {
				t.Errorf("%s: %v %s rows but %v distinct (_commit_lsn, _seq)", table, r[1], r[0], r[2])
			}
		}
		for op, n := range ops {
			if got[op] != n {
				t.Errorf("%s: %d %s rows in the lake, want %d", table, got[op], op, n)
			}
			delete(got, op)
		}
		for op, n := range got {
			t.Errorf("%s: %d unexpected %s rows", table, n, op)
		}
		name := strings.TrimPrefix(table, "public.")
		state := asStrings(lakeState(t, ddb, lake, table, []string{"id"}, "CAST(id AS VARCHAR), "+map[string]string{"items": "v", "notes": "body"}[name], "id"))
		pg := asStrings(e.pgRows(fmt.Sprintf("SELECT t.id::text, t.%s FROM %s AS t ORDER BY t.id", map[string]string{"items": "v", "notes": "body"}[name], name)))
		sameRows(t, table, state, pg)
	}
	rows := duck.Rows(t, ddb, "SELECT count(*) FROM read_parquet('"+filepath.Join(lake, "public.items", "**", "*.parquet")+"', union_by_name=true, hive_partitioning=false) WHERE v = 'ROLLBACK'")
	if n := rows[0][0].(int64); n != 0 {
		t.Errorf("%d rolled-back rows in the lake", n)
	}
	checkFilesMatchManifests(e, lake)
}

// checkFilesMatchManifests checks that the set of Parquet files in the lake
// is exactly the union of the files the stream manifests name, each once.
func checkFilesMatchManifests(e *env, lake string) {
	t := e.t
	t.Helper()
	var inLake []string
	filepath.Walk(lake, func(p string, fi os.FileInfo, err error) error {
		if err == nil && strings.HasSuffix(p, ".parquet") {
			rel, _ := filepath.Rel(lake, p)
			inLake = append(inLake, filepath.ToSlash(rel))
		}
		return nil
	})
	named := map[string]int{}
	manifests, _ := filepath.Glob(filepath.Join(lake, "_walcake", "manifests", "*.json"))
	for _, path := range manifests {
		m := readManifestFile(t, path)
		for _, f := range m.Files {
			named[f.Key]++
		}
	}
	sort.Strings(inLake)
	for _, k := range inLake {
		if named[k] != 1 {
			t.Errorf("lake file %s is named by %d manifests, want 1", k, named[k])
		}
		delete(named, k)
	}
	for k := range named {
		t.Errorf("manifest names %s, which is not in the lake", k)
	}
	if _, err := os.Stat(filepath.Join(lake, "_walcake", "pending.json")); err == nil {
		t.Errorf("an intent object is left in the lake after a successful run")
	}
}

func readManifestFile(t *testing.T, path string) compact.Manifest {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m compact.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return m
}

// killed reports whether a result is a process killed by SIGKILL.
func killed(r result) bool { return r.code == -1 }

// newProtoEnv is an env with protoSchema published.
func newProtoEnv(t *testing.T) *env {
	e := newEnv(t)
	e.db.Exec(t, protoSchema)
	e.mustWalcake("setup")
	return e
}

// runKilledAt runs `walcake run` with a failpoint and checks that the
// process died there.
func (e *env) runKilledAt(fp string) {
	e.t.Helper()
	e.vars = append(e.vars, "WALCAKE_FAILPOINT="+fp)
	r := e.walcake("run")
	e.vars = e.vars[:len(e.vars)-1]
	if !killed(r) || !strings.Contains(r.stderr, "failpoint "+fp) {
		e.t.Fatalf("run with failpoint %s: exit %d, stderr:\n%s", fp, r.code, r.stderr)
	}
}

func TestFailpointsEachStep(t *testing.T) {
	for _, fp := range compact.Failpoints {
		t.Run(fp, func(t *testing.T) {
			e := newProtoEnv(t)
			protoBatch(e, 1)
			e.mustWalcake("run")
			protoBatch(e, 2)
			e.runKilledAt(fp)
			protoBatch(e, 3)
			e.mustWalcake("run")
			checkExactlyOnce(e, protoOps(3))
			if confirmed, end := e.slotConfirmed(), e.lakeEnd(); confirmed < end {
				t.Errorf("slot at %s, before the lake's end %s", confirmed, end)
			}
		})
	}
}

// A crash in the middle of the uploads, then a lost spool: the next run
// re-reads the slot and cuts its commits differently, so the first attempt's
// files would be orphans under other names. They must be gone.
func TestInterruptedCommitThenLostSpool(t *testing.T) {
	e := newProtoEnv(t)
	protoBatch(e, 1)
	e.runKilledAt(compact.FailAfterFirstUpload)
	if err := os.RemoveAll(e.spool); err != nil {
		t.Fatal(err)
	}
	protoBatch(e, 2)
	e.mustWalcake("run")
	checkExactlyOnce(e, protoOps(2))
}

// A crash after the manifest but before the slot moved, then a lost spool:
// capture re-reads transactions that are already in the lake, and
// compaction must skip them.
func TestCommittedButNotConfirmedThenLostSpool(t *testing.T) {
	e := newProtoEnv(t)
	protoBatch(e, 1)
	e.runKilledAt(compact.FailAfterManifest)
	os.RemoveAll(e.spool)
	e.mustWalcake("run")
	protoBatch(e, 2)
	e.mustWalcake("run")
	checkExactlyOnce(e, protoOps(2))
}

func TestOverlappingRunsAreLockedOut(t *testing.T) {
	e := newProtoEnv(t)
	protoBatch(e, 1)
	e.mustWalcake("capture")

	sp, err := spool.Open(e.spool, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ lock, cmd string }{{"compact", "compact"}, {"compact", "run"}, {"capture", "capture"}, {"capture", "run"}} {
		lock, err := sp.Lock(tc.lock)
		if err != nil {
			t.Fatal(err)
		}
		r := e.walcake(tc.cmd)
		lock.Unlock()
		if r.code == 0 || !strings.Contains(r.stderr, "locked") || strings.Count(strings.TrimSpace(r.stderr), "\n") > 3 {
			t.Errorf("walcake %s while another holds the %s lock: exit %d, stderr:\n%s", tc.cmd, tc.lock, r.code, r.stderr)
		}
	}
	e.mustWalcake("run")
	checkExactlyOnce(e, protoOps(1))
}

func TestSpoolDiskFull(t *testing.T) {
	e := newProtoEnv(t)
	before := e.slotConfirmed()
	protoBatch(e, 1)
	e.vars = append(e.vars, "WALCAKE_FAULT_SPOOL_ENOSPC_AFTER=0")
	r := e.walcake("run")
	e.vars = e.vars[:len(e.vars)-1]
	if r.code == 0 || !strings.Contains(r.stderr, "no space left on device") {
		t.Fatalf("run on a full spool disk: exit %d, stderr:\n%s", r.code, r.stderr)
	}
	if after := e.slotConfirmed(); after != before {
		t.Errorf("slot moved from %s to %s although nothing was written", before, after)
	}
	protoBatch(e, 2)
	e.mustWalcake("run")
	checkExactlyOnce(e, protoOps(2))
}

// capture --follow runs while compact commits: compaction cannot advance an
// active slot, so capture confirms the lake's position itself.
func TestCompactBesideFollowingCapture(t *testing.T) {
	e := newProtoEnv(t)

	cmd := exec.Command(walcakeBin, "capture", "--follow", "--status-interval", "200ms", "--segment-max-age", "300ms")
	cmd.Env = append(minimalEnv(), e.vars...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cmd.Process.Signal(os.Interrupt)
			cmd.Wait()
		}
	}
	defer stop()

	protoBatch(e, 1)
	sp, _ := spool.Open(e.spool, spool.Options{})
	waitUntil(t, "capture seals a segment", func() bool {
		segs, _ := sp.Sealed()
		return len(segs) > 0
	})
	time.Sleep(500 * time.Millisecond) // let the rest of the batch seal too
	r := e.mustWalcake("compact")
	t.Logf("compact beside capture: %s", strings.TrimSpace(r.stdout))
	end := e.lakeEnd()
	if end == 0 {
		t.Fatal("compact committed nothing")
	}
	waitUntil(t, "capture confirms the lake's position", func() bool { return e.slotConfirmed() >= end })
	stop()
	if !strings.Contains(stderr.String(), "streaming") {
		t.Logf("capture stderr:\n%s", stderr.String())
	}
	e.mustWalcake("run")
	checkExactlyOnce(e, protoOps(1))
}

// lakeEnd is the end LSN of the lake's newest stream manifest.
func (e *env) lakeEnd() pglogrepl.LSN {
	e.t.Helper()
	m, err := compact.ReadHeadManifest(context.Background(), e.store())
	if err != nil {
		e.t.Fatal(err)
	}
	if m == nil {
		return 0
	}
	lsn, err := pglogrepl.ParseLSN(m.EndLSN)
	if err != nil {
		e.t.Fatal(err)
	}
	return lsn
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
