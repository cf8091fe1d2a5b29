package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"

	"github.com/wal-cake/wal-cake/scripts/testenv"
)

// slotPos is a slot's positions as the server reports them.
type slotPos struct {
	confirmed, restart pglogrepl.LSN
	walStatus          string
}

func (e *env) slotPos() slotPos {
	e.t.Helper()
	return slotPosOf(e.t, e.db, "walcake_test")
}

func slotPosOf(t *testing.T, db *testenv.Database, slot string) slotPos {
	t.Helper()
	var confirmed, restart, status *string
	db.QueryRow(t, "SELECT confirmed_flush_lsn::text, restart_lsn::text, wal_status FROM pg_replication_slots WHERE slot_name = $1", slot).
		Scan(&confirmed, &restart, &status)
	var p slotPos
	if confirmed != nil {
		p.confirmed, _ = pglogrepl.ParseLSN(*confirmed)
	}
	if restart != nil {
		p.restart, _ = pglogrepl.ParseLSN(*restart)
	}
	if status != nil {
		p.walStatus = *status
	}
	return p
}

func (e *env) serverLSN() pglogrepl.LSN {
	e.t.Helper()
	var s string
	e.db.QueryRow(e.t, "SELECT pg_current_wal_insert_lsn()::text").Scan(&s)
	lsn, err := pglogrepl.ParseLSN(s)
	if err != nil {
		e.t.Fatal(err)
	}
	return lsn
}

// An idle publication never pins WAL: with writes only to an unpublished
// table, a run confirms the slot up to the server's position and its
// restart_lsn moves, so the server may recycle the WAL.
func TestSlotIdlePublicationDoesNotPinWAL(t *testing.T) {
	e := newEnv(t)
	e.db.Exec(t, `CREATE TABLE published (id int PRIMARY KEY); CREATE TABLE unpublished (id int PRIMARY KEY, pad text)`)
	e.mustWalcake("setup", "--tables", "public.published")
	before := e.slotPos()

	for round := 1; round <= 2; round++ {
		e.db.Exec(t, "INSERT INTO unpublished SELECT g, repeat('x', 200) FROM generate_series($1::int, $1::int + 19999) g", round*100000)
		// A checkpoint logs the running-transactions record from which
		// logical decoding may move a slot's restart point.
		e.db.Exec(t, "CHECKPOINT")
		server := e.serverLSN()
		r := e.mustWalcake("run")
		t.Logf("round %d: %s", round, strings.TrimSpace(r.stdout))
		after := e.slotPos()
		if after.confirmed < server {
			t.Errorf("round %d: slot confirmed at %s, before the server position %s it had seen idle", round, after.confirmed, server)
		}
		if after.restart <= before.restart {
			t.Errorf("round %d: restart_lsn stayed at %s (was %s): the slot pins WAL", round, after.restart, before.restart)
		}
		before = after
	}
	// Nothing reached the lake, and the spool is empty.
	if m, _ := filepath.Glob(filepath.Join(e.download(), "*", "*")); len(m) > 0 {
		t.Errorf("an idle publication wrote to the lake: %v", m)
	}
}

// --heartbeat writes a logical decoding message into the slot's database
// before capture; capture ignores it and the slot is confirmed past it.
func TestSlotHeartbeat(t *testing.T) {
	e := newEnv(t)
	e.db.Exec(t, `CREATE TABLE published (id int PRIMARY KEY)`)
	e.mustWalcake("setup", "--tables", "public.published")
	// A second slot with test_decoding sees what the heartbeat wrote.
	e.db.Exec(t, "SELECT pg_create_logical_replication_slot('probe', 'test_decoding')")
	start := e.serverLSN()

	r := e.mustWalcake("run", "--heartbeat")
	if !strings.Contains(r.stderr, "heartbeat written") {
		t.Errorf("no heartbeat log line:\n%s", r.stderr)
	}
	rows := e.pgRows("SELECT data FROM pg_logical_slot_peek_changes('probe', NULL, NULL)")
	found := 0
	for _, row := range rows {
		if s := row[0].(string); strings.Contains(s, "prefix: walcake") && strings.Contains(s, "transactional: 0") {
			found++
		}
	}
	if found != 1 {
		t.Errorf("%d heartbeat messages decoded, want 1: %v", found, rows)
	}
	if p := e.slotPos(); p.confirmed <= start {
		t.Errorf("slot confirmed at %s, not past the heartbeat written after %s", p.confirmed, start)
	}
	if !strings.Contains(r.stdout, "committed 0 txns") {
		t.Errorf("the heartbeat reached the lake: %s", r.stdout)
	}
}

// --max-retained-wal warns, and with --fail-on-lag the run exits 3 when the
// slot still retains more after its work; status says the same.
func TestSlotMaxRetainedWAL(t *testing.T) {
	e := newEnv(t)
	e.db.Exec(t, `CREATE TABLE published (id int PRIMARY KEY)`)
	e.mustWalcake("setup", "--tables", "public.published")
	e.db.Exec(t, "INSERT INTO published SELECT generate_series(1, 1000)")

	// Any slot retains more than one byte.
	r := e.mustWalcake("run", "--max-retained-wal", "1")
	if !strings.Contains(r.stderr, "more than --max-retained-wal 1 B") {
		t.Errorf("no warning about retained WAL:\n%s", r.stderr)
	}
	r = e.walcake("run", "--max-retained-wal", "1", "--fail-on-lag")
	if r.code != exitUnhealthy || !strings.Contains(r.stderr, "--fail-on-lag: slot walcake_test retains") {
		t.Errorf("run --fail-on-lag: exit %d, want %d\nstderr:\n%s", r.code, exitUnhealthy, r.stderr)
	}
	// Under the threshold: healthy.
	e.mustWalcake("run", "--max-retained-wal", "1TB", "--fail-on-lag")

	r = e.walcake("status", "--check", "--max-retained-wal", "1")
	if r.code != exitUnhealthy || !strings.HasPrefix(r.stdout, "unhealthy: slot walcake_test retains") {
		t.Errorf("status --check over the threshold: exit %d, stdout %q", r.code, r.stdout)
	}
	r = e.mustWalcake("status", "--check", "--max-retained-wal", "1TB")
	if !strings.HasPrefix(r.stdout, "ok: slot walcake_test") {
		t.Errorf("status --check: %q", r.stdout)
	}
	// A bad size is a usage error.
	if r := e.walcake("run", "--max-retained-wal", "lots"); r.code != 2 {
		t.Errorf("--max-retained-wal lots: exit %d, want 2\n%s", r.code, r.stderr)
	}
}

// An invalidated slot (wal_status = lost) stops capture with a clear
// message naming the recovery, exit code 3; status reports it.
func TestSlotLost(t *testing.T) {
	ctx := context.Background()
	// A server of its own: max_slot_wal_keep_size applies to every slot.
	srv, err := testenv.StartPostgres(ctx, testenv.PostgresOptions{ExtraConfig: map[string]string{
		"max_slot_wal_keep_size": "1MB",
		"max_wal_size":           "32MB",
		"min_wal_size":           "32MB",
	}})
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	e := newEnvOn(t, srv)
	e.db.Exec(t, `CREATE TABLE published (id int PRIMARY KEY, pad text)`)
	e.mustWalcake("setup", "--tables", "public.published")
	// More WAL than the slot may keep, then checkpoints: the server
	// removes the segments and invalidates the slot.
	for i := 0; i < 6 && e.slotPos().walStatus != "lost"; i++ {
		e.db.Exec(t, "INSERT INTO published SELECT g, repeat('y', 500) FROM generate_series($1::int, $1::int + 9999) g", i*10000)
		e.db.Exec(t, "SELECT pg_switch_wal()")
		e.db.Exec(t, "CHECKPOINT")
	}
	if s := e.slotPos().walStatus; s != "lost" {
		t.Fatalf("wal_status is %q after writing past max_slot_wal_keep_size; the test cannot make a lost slot", s)
	}

	for _, cmd := range []string{"run", "capture"} {
		r := e.walcake(cmd)
		if r.code != exitUnhealthy {
			t.Errorf("%s on a lost slot: exit %d, want %d\nstderr:\n%s", cmd, r.code, exitUnhealthy, r.stderr)
		}
		for _, want := range []string{"replication slot is lost", "walcake_test", "pg_drop_replication_slot", "backfill", "docs/operations.md"} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("%s on a lost slot: message lacks %q:\n%s", cmd, want, r.stderr)
			}
		}
	}
	r := e.walcake("status", "--json")
	var st statusReport
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, r.stdout)
	}
	if r.code != exitUnhealthy || st.Healthy || st.Slot.WALStatus == nil || *st.Slot.WALStatus != "lost" {
		t.Errorf("status on a lost slot: exit %d, %+v", r.code, st)
	}
}
