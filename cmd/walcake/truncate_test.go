package main

import (
	"fmt"
	"testing"

	"github.com/wal-cake/wal-cake/scripts/testenv/duck"
)

const truncateSchema = `
CREATE TABLE t1 (id int PRIMARY KEY, v text);
CREATE TABLE t2 (id int PRIMARY KEY, v text);
CREATE TABLE parent (id int PRIMARY KEY);
CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent);
CREATE TABLE seq (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text);
CREATE TABLE unpub (id int PRIMARY KEY);
`

// TestTruncate checks that every TRUNCATE (one table, several in one
// statement, CASCADE, RESTART IDENTITY, inside a transaction with other
// changes) is a T row per published table, and that the state rule honours
// them.
func TestTruncate(t *testing.T) {
	e := newExactEnv(t, "truncate")
	e.exec(truncateSchema)
	e.mustWalcake("setup", "--tables", "t1,t2,parent,child,seq")
	e.exec(
		"INSERT INTO t1 SELECT g, 'a' || g FROM generate_series(1, 5) g",
		"INSERT INTO t2 SELECT g, 'b' || g FROM generate_series(1, 5) g",
		"INSERT INTO parent SELECT generate_series(1, 3)",
		"INSERT INTO child SELECT g, g % 3 + 1 FROM generate_series(1, 6) g",
		"INSERT INTO seq (v) VALUES ('s1'), ('s2'), ('s3')",
		"INSERT INTO unpub VALUES (1)",
		// One table.
		"TRUNCATE t1",
		"INSERT INTO t1 VALUES (10, 'after')",
		// Several tables in one statement, with changes before and after
		// it in the same transaction; an unpublished table among them.
		"BEGIN; INSERT INTO t2 VALUES (6, 'b6'); UPDATE t1 SET v = 'gone' WHERE id = 10; TRUNCATE t1, t2, unpub; INSERT INTO t2 VALUES (100, 'kept'); COMMIT",
		// CASCADE truncates the referencing table too.
		"TRUNCATE parent CASCADE",
		"INSERT INTO parent VALUES (7)",
		// RESTART IDENTITY: the keys begin again at 1.
		"TRUNCATE seq RESTART IDENTITY",
		"INSERT INTO seq (v) VALUES ('again1'), ('again2')",
	)
	e.mustWalcake("run")
	// In a later run, after the lake has the table's rows.
	e.exec("INSERT INTO child VALUES (1, 7)", "TRUNCATE child", "INSERT INTO child VALUES (2, 7)",
		"BEGIN; TRUNCATE seq; INSERT INTO seq (v) VALUES ('third'); ROLLBACK")
	e.mustWalcake("run")

	lake, ddb := e.lakeOf()
	for _, tb := range []struct {
		table, cols string
		ops         string
	}{
		{"t1", "v", "I=6 T=2 U=1"},
		{"t2", "v", "I=7 T=1"},
		{"parent", "NULL", "I=4 T=1"},
		{"child", "parent_id", "I=8 T=2"},
		{"seq", "v", "I=5 T=1"},
	} {
		got := asStrings(lakeState(t, ddb, lake, "public."+tb.table, []string{"id"}, "CAST(id AS VARCHAR), CAST("+tb.cols+" AS VARCHAR)", "id"))
		want := asStrings(e.pgQuery(fmt.Sprintf("SELECT id::text, (%s)::text FROM %s t ORDER BY t.id", tb.cols, tb.table)))
		sameRows(t, tb.table+" state", got, want)
		if got := opsOf(t, ddb, lake, "public."+tb.table); got != tb.ops {
			t.Errorf("%s: rows %s, want %s", tb.table, got, tb.ops)
		}
	}
	// A truncate row has NULL in every table column.
	got := history(t, ddb, lake, "public.child", "_op, id, parent_id, len(_unchanged)")
	want := []string{
		"I|1|2|0", "I|2|3|0", "I|3|1|0", "I|4|2|0", "I|5|3|0", "I|6|1|0",
		"T|NULL|NULL|0", // CASCADE
		"I|1|7|0", "T|NULL|NULL|0", "I|2|7|0",
	}
	sameRows(t, "child rows", got, want)
	// The statement that truncated two published tables: one T row each,
	// in the transaction's order.
	got = asStrings(duck.Rows(t, ddb, fmt.Sprintf(`
		SELECT string_agg(t || ':' || _op, ',' ORDER BY _seq) FROM (
			SELECT 't1' AS t, * FROM %s UNION ALL BY NAME SELECT 't2' AS t, * FROM %s)
		WHERE _commit_lsn = (SELECT _commit_lsn FROM %s WHERE id = 100)`,
		parquetOf(lake, "public.t1"), parquetOf(lake, "public.t2"), parquetOf(lake, "public.t2"))))
	sameRows(t, "one transaction", got, []string{"t2:I,t1:U,t1:T,t2:T,t2:I"})
	if tables := lakeTables(t, lake); fmt.Sprint(tables) != "[public.child public.parent public.seq public.t1 public.t2]" {
		t.Errorf("lake tables: %v", tables)
	}
}
