package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"

	"github.com/wal-cake/wal-cake/compact"
	"github.com/wal-cake/wal-cake/scripts/testenv/duck"
)

const e2eSchema = `
CREATE SCHEMA shop;
CREATE TABLE accounts (id bigint PRIMARY KEY, name text NOT NULL, balance numeric(12,2), updated_at timestamptz);
CREATE TABLE shop.order_items (order_id int, line int, sku text, qty int, PRIMARY KEY (order_id, line));
CREATE TABLE events (id uuid PRIMARY KEY, payload jsonb, tags text[], happened date);
CREATE TABLE not_published (id int PRIMARY KEY);
`

var e2eWorkload1 = []string{
	`INSERT INTO accounts SELECT g, 'acct ' || g, g * 1.25, '2026-01-01T00:00:00Z'::timestamptz + g * interval '1 second' FROM generate_series(1, 1000) g`,
	`INSERT INTO shop.order_items SELECT o, l, 'sku-' || o || '-' || l, l FROM generate_series(1, 40) o, generate_series(1, 5) l`,
	`INSERT INTO events SELECT md5(g::text)::uuid, jsonb_build_object('n', g, 'name', 'évènement ' || g, 'nested', jsonb_build_object('ok', g % 2 = 0)), ARRAY['t' || g, 'x,y', 'quote"d'], DATE '2026-01-01' + g FROM generate_series(1, 50) g`,
	`UPDATE accounts SET balance = balance + 1, updated_at = updated_at + interval '1 day' WHERE id % 10 = 0`,
	`DELETE FROM accounts WHERE id % 7 = 0`,
	`UPDATE shop.order_items SET qty = qty + 10 WHERE line = 1`,
	`DELETE FROM shop.order_items WHERE order_id = 3`,
	`BEGIN; INSERT INTO accounts VALUES (999999, 'ROLLBACK', 0, now()); UPDATE accounts SET name = 'ROLLBACK' WHERE id = 1; ROLLBACK`,
	`INSERT INTO not_published SELECT generate_series(1, 10)`,
	// One transaction of 100,000 rows.
	`INSERT INTO accounts SELECT g, 'bulk ' || g, g / 100.0, '2026-02-01T00:00:00Z'::timestamptz FROM generate_series(100001, 200000) g`,
}

var e2eWorkload2 = []string{
	`UPDATE accounts SET id = id + 1000000 WHERE id BETWEEN 1 AND 5`,   // primary key changes
	`UPDATE shop.order_items SET line = line + 100 WHERE order_id = 1`, // composite key changes
	`UPDATE events SET payload = payload || '{"updated": true}', tags = '{}' WHERE happened < DATE '2026-01-10'`,
	`DELETE FROM events WHERE happened > DATE '2026-02-10'`,
	`UPDATE accounts SET name = name || ' (renamed)' WHERE id BETWEEN 150000 AND 150100`,
	`INSERT INTO accounts VALUES (7, 'seven is back', NULL, NULL)`, // deleted in the first run
	`BEGIN; DELETE FROM accounts WHERE id > 190000; ROLLBACK`,
}

var e2eWorkload3 = []string{
	`INSERT INTO shop.order_items VALUES (500, 1, 'late', 1)`,
	`UPDATE accounts SET balance = -1 WHERE id = 100001`,
}

// e2eTables says how to compare each table: the key, the columns as text in
// DuckDB and in PostgreSQL, in the same order.
var e2eTables = []struct {
	table, pgTable string
	key            []string
	duckCols       string
	pgCols         string
	orderBy        string
	pgOrderBy      string // qualified: PostgreSQL would sort by the text output column of the same name
}{
	{
		table: "public.accounts", pgTable: "accounts", key: []string{"id"},
		duckCols: "CAST(id AS VARCHAR), name, CAST(balance AS VARCHAR), CAST(epoch_us(updated_at) AS VARCHAR)",
		pgCols:   "id::text, name, balance::text, ((extract(epoch FROM updated_at) * 1000000)::bigint)::text",
		orderBy:  "id", pgOrderBy: "t.id",
	},
	{
		table: "shop.order_items", pgTable: "shop.order_items", key: []string{"order_id", "line"},
		duckCols: "CAST(order_id AS VARCHAR), CAST(line AS VARCHAR), sku, CAST(qty AS VARCHAR)",
		pgCols:   "order_id::text, line::text, sku, qty::text",
		orderBy:  "order_id, line", pgOrderBy: "t.order_id, t.line",
	},
	{
		table: "public.events", pgTable: "events", key: []string{"id"},
		duckCols: "CAST(id AS VARCHAR), CAST(payload AS VARCHAR), array_to_string(tags, '|'), CAST(happened AS VARCHAR)",
		pgCols:   "id::text, payload::text, array_to_string(tags, '|'), happened::text",
		orderBy:  "id", pgOrderBy: "t.id",
	},
}

func TestEndToEnd(t *testing.T) {
	e := newEnv(t)
	e.db.Exec(t, e2eSchema)
	e.mustWalcake("setup", "--tables", "public.accounts,shop.order_items,events")
	// setup is idempotent.
	e.mustWalcake("setup", "--tables", "public.accounts,shop.order_items,events")

	for _, sql := range e2eWorkload1 {
		e.db.Exec(t, sql)
	}
	r := e.mustWalcake("run")
	t.Logf("first run: %s", strings.TrimSpace(r.stdout))
	if !strings.Contains(r.stdout, "3 tables") {
		t.Errorf("summary does not name 3 tables: %s", r.stdout)
	}

	for _, sql := range e2eWorkload2 {
		e.db.Exec(t, sql)
	}
	r = e.mustWalcake("run")
	t.Logf("second run: %s", strings.TrimSpace(r.stdout))

	// Capture alone: the changes are spooled, and the slot must not be
	// confirmed past them while the lake lacks them.
	var before string
	e.db.QueryRow(t, "SELECT pg_current_wal_insert_lsn()::text").Scan(&before)
	for _, sql := range e2eWorkload3 {
		e.db.Exec(t, sql)
	}
	e.mustWalcake("capture")
	beforeLSN, _ := pglogrepl.ParseLSN(before)
	if confirmed := e.slotConfirmed(); confirmed > beforeLSN {
		t.Errorf("after capture alone the slot is confirmed at %s, past changes written after %s that the lake lacks", confirmed, beforeLSN)
	}
	r = e.mustWalcake("run") // captures nothing new, commits the spooled segment
	t.Logf("third run: %s", strings.TrimSpace(r.stdout))
	if !strings.Contains(r.stdout, "committed 2 txns") {
		t.Errorf("third run should commit the 2 spooled transactions: %s", r.stdout)
	}

	// The slot is at or past the lake's newest commit.
	m, err := compact.ReadHeadManifest(context.Background(), e.store())
	if err != nil || m == nil {
		t.Fatalf("head manifest: %v, %v", m, err)
	}
	end, _ := pglogrepl.ParseLSN(m.EndLSN)
	if confirmed := e.slotConfirmed(); confirmed < end {
		t.Errorf("slot confirmed at %s, before the lake's last commit end %s", confirmed, end)
	}

	lake := e.download()
	ddb := duck.Open(t)
	for _, tb := range e2eTables {
		got := asStrings(lakeState(t, ddb, lake, tb.table, tb.key, tb.duckCols, tb.orderBy))
		want := asStrings(e.pgRows("SELECT " + tb.pgCols + " FROM " + tb.pgTable + " AS t ORDER BY " + tb.pgOrderBy))
		sameRows(t, tb.table, got, want)
		if len(want) == 0 {
			t.Errorf("%s: empty in PostgreSQL; the test is not testing", tb.table)
		}
	}

	// Each change once: no (key, commit, seq) twice, and (commit, seq) unique.
	for _, tb := range e2eTables {
		glob := filepath.Join(lake, tb.table, "**", "*.parquet")
		rows := duck.Rows(t, ddb, "SELECT count(*) - count(DISTINCT (_commit_lsn, _seq)) FROM read_parquet('"+glob+"', union_by_name=true, hive_partitioning=false)")
		if n := rows[0][0].(int64); n != 0 {
			t.Errorf("%s: %d duplicated (_commit_lsn, _seq)", tb.table, n)
		}
	}
	// Rolled-back transactions never appear.
	rows := duck.Rows(t, ddb, "SELECT count(*) FROM read_parquet('"+filepath.Join(lake, "public.accounts", "**", "*.parquet")+"', union_by_name=true, hive_partitioning=false) WHERE name = 'ROLLBACK' OR id = 999999")
	if n := rows[0][0].(int64); n != 0 {
		t.Errorf("%d rows of rolled-back transactions in the lake", n)
	}
	// The 100k-row transaction landed whole, as inserts of one commit.
	rows = duck.Rows(t, ddb, "SELECT count(*), count(DISTINCT _commit_lsn) FROM read_parquet('"+filepath.Join(lake, "public.accounts", "**", "*.parquet")+"', union_by_name=true, hive_partitioning=false) WHERE _op = 'I' AND id BETWEEN 100001 AND 200000")
	if rows[0][0].(int64) != 100000 || rows[0][1].(int64) != 1 {
		t.Errorf("bulk transaction: %v rows in %v commits, want 100000 in 1", rows[0][0], rows[0][1])
	}
	// A key change is a delete of the old key and an update of the new one.
	rows = duck.Rows(t, ddb, "SELECT list(_op ORDER BY _seq) FROM read_parquet('"+filepath.Join(lake, "public.accounts", "**", "*.parquet")+"', union_by_name=true, hive_partitioning=false) WHERE (id = 1 OR id = 1000001) AND _op IN ('D', 'U')")
	if got := toString(rows[0][0]); got != `["D","U"]` {
		t.Errorf("key change of id 1: ops %v, want D then U", got)
	}
	// Unpublished tables stay out of the lake.
	if _, err := filepath.Glob(filepath.Join(lake, "public.not_published")); err == nil {
		if m, _ := filepath.Glob(filepath.Join(lake, "public.not_published", "*")); len(m) > 0 {
			t.Errorf("unpublished table in the lake: %v", m)
		}
	}
	// Manifests and schema versions are where DESIGN.md says.
	for _, pat := range []string{"_walcake/manifests/*.json", "_walcake/schemas/public.accounts/*.json"} {
		if m, _ := filepath.Glob(filepath.Join(lake, pat)); len(m) == 0 {
			t.Errorf("no %s in the lake", pat)
		}
	}
	// The spool gave its disk back.
	st := e.mustWalcake("status", "--json")
	var status statusReport
	if err := json.Unmarshal([]byte(st.stdout), &status); err != nil {
		t.Fatalf("status --json: %v\n%s", err, st.stdout)
	}
	if status.Spool.Sealed != 0 || status.Spool.Open != 0 {
		t.Errorf("spool after runs: %+v", status.Spool)
	}
	if !status.Slot.Exists || status.Lake.LastCommitLSN != m.LastCommitLSN {
		t.Errorf("status: slot %+v lake %+v", status.Slot, status.Lake)
	}
}

func toString(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// slotConfirmed reads the test slot's confirmed_flush_lsn.
func (e *env) slotConfirmed() pglogrepl.LSN {
	e.t.Helper()
	var s string
	e.db.QueryRow(e.t, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'walcake_test'").Scan(&s)
	lsn, err := pglogrepl.ParseLSN(s)
	if err != nil {
		e.t.Fatal(err)
	}
	return lsn
}
