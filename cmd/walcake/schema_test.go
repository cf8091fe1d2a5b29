package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/wal-cake/wal-cake/scripts/testenv/duck"
)

// TestSchemaChanges changes tables mid-stream, within runs and between
// them: every change of columns starts a schema version, DuckDB reads all
// versions together, nothing fails and no row is lost.
func TestSchemaChanges(t *testing.T) {
	e := newExactEnv(t, "schema")
	e.exec(
		"CREATE TABLE evolve (id int PRIMARY KEY, a int, v text)",
		"CREATE TABLE dropme (id int PRIMARY KEY, v text)",
		"CREATE TABLE dropme2 (id int PRIMARY KEY, v text)",
		`CREATE SCHEMA s1; CREATE SCHEMA s2; CREATE SCHEMA "a.b"; CREATE SCHEMA a`,
		"CREATE TABLE s1.same (id int PRIMARY KEY, x int)",
		"CREATE TABLE s2.same (id int PRIMARY KEY, y text)",
		`CREATE TABLE "a.b".c (id int PRIMARY KEY, v text)`,
		`CREATE TABLE a."b.c" (id int PRIMARY KEY, w int)`,
		"CREATE TABLE intxn (id int PRIMARY KEY)",
	)
	e.mustWalcake("setup") // all tables, those created later too

	// Run 1: columns added, without and with a default; a table dropped
	// and re-created within the run; same-named tables.
	e.exec(
		"INSERT INTO evolve VALUES (1, 1, 'one'), (2, 2, 'two')",
		"ALTER TABLE evolve ADD COLUMN n int",
		"INSERT INTO evolve VALUES (3, 3, 'three', 3)",
		"UPDATE evolve SET n = 10 WHERE id = 1",
		"ALTER TABLE evolve ADD COLUMN d text DEFAULT 'dflt'",
		"UPDATE evolve SET v = 'two b' WHERE id = 2",
		"INSERT INTO evolve VALUES (4, 4, 'four', 4)",
		"INSERT INTO dropme VALUES (1, 'old'), (2, 'old')",
		"INSERT INTO dropme2 VALUES (1, 'old')",
		"DROP TABLE dropme2",
		"CREATE TABLE dropme2 (id int PRIMARY KEY, v text)",
		"INSERT INTO dropme2 VALUES (2, 'new')",
		"INSERT INTO s1.same VALUES (1, 10)",
		"INSERT INTO s2.same VALUES (1, 'ten')",
		`INSERT INTO "a.b".c VALUES (1, 'dotted schema')`,
		`INSERT INTO a."b.c" VALUES (1, 42)`,
		"CREATE TABLE later (id int PRIMARY KEY)", // created after setup
		"INSERT INTO later VALUES (1)",
		// Two versions of a table in one transaction.
		"BEGIN; INSERT INTO intxn VALUES (1); ALTER TABLE intxn ADD COLUMN x int; INSERT INTO intxn VALUES (2, 20); COMMIT",
	)
	e.mustWalcake("run")

	// Run 2: a column dropped, types changed, a column renamed; a table
	// dropped and re-created between runs.
	e.exec(
		"ALTER TABLE evolve DROP COLUMN a",
		"INSERT INTO evolve VALUES (5, 'five', 5, 'd5')",
		"ALTER TABLE evolve ALTER COLUMN n TYPE bigint",
		"INSERT INTO evolve VALUES (6, 'six', 1099511627776, 'd6')",
		"ALTER TABLE evolve ALTER COLUMN v TYPE varchar(20)",
		"UPDATE evolve SET v = 'one b' WHERE id = 1",
		"ALTER TABLE evolve ALTER COLUMN n TYPE text USING n::text || '!'",
		"INSERT INTO evolve VALUES (7, 'seven', 'text now', 'd7')",
		"ALTER TABLE evolve RENAME COLUMN v TO v2",
		"DELETE FROM evolve WHERE id = 3",
		"DROP TABLE dropme",
		"CREATE TABLE dropme (id int PRIMARY KEY, v text)",
		"INSERT INTO dropme VALUES (3, 'new')",
	)
	e.mustWalcake("run")

	// Run 3: the table renamed; every row updated so that the newest row
	// of each key carries every current column.
	e.exec(
		"ALTER TABLE evolve RENAME TO evolved",
		"INSERT INTO evolved VALUES (8, 'eight', 'n8', 'd8')",
		"UPDATE evolved SET id = id",
	)
	e.mustWalcake("run")

	lake, ddb := e.lakeOf()
	if got := strings.Join(lakeTables(t, lake), " "); got != "a%2Eb.c a.b%2Ec public.dropme public.dropme2 public.evolve public.evolved public.intxn public.later s1.same s2.same" {
		t.Errorf("lake tables: %s", got)
	}
	for _, tt := range []struct {
		table    string
		versions int
		ops      string
	}{
		// v1; +n; +d; -a; n bigint; v varchar(20); n text; v renamed v2.
		{"public.evolve", 8, "D=1 I=7 U=3"},
		{"public.evolved", 1, "I=1 U=7"},
		{"public.dropme", 2, "I=3 T=1"},
		{"public.dropme2", 2, "I=2 T=1"},
		{"s1.same", 1, "I=1"}, {"s2.same", 1, "I=1"}, {"a%2Eb.c", 1, "I=1"}, {"a.b%2Ec", 1, "I=1"},
		{"public.later", 1, "I=1"},
		{"public.intxn", 2, "I=2"},
	} {
		if n := len(schemaVersions(t, lake, tt.table)); n != tt.versions {
			t.Errorf("%s: %d schema versions, want %d", tt.table, n, tt.versions)
		}
		if got := opsOf(t, ddb, lake, tt.table); got != tt.ops {
			t.Errorf("%s: rows %s, want %s", tt.table, got, tt.ops)
		}
	}

	// All versions of evolve read together: a column keeps its name across
	// versions, a renamed one shows under both names.
	got := history(t, ddb, lake, "public.evolve", "_op, id, a, v, v2, CAST(n AS VARCHAR), d")
	sameRows(t, "evolve rows", got, []string{
		"I|1|1|one|NULL|NULL|NULL", "I|2|2|two|NULL|NULL|NULL",
		"I|3|3|three|NULL|3|NULL", "U|1|1|one|NULL|10|NULL",
		"U|2|2|two b|NULL|NULL|dflt", "I|4|4|four|NULL|4|dflt",
		"I|5|NULL|five|NULL|5|d5",
		"I|6|NULL|six|NULL|1099511627776|d6",
		"U|1|NULL|one b|NULL|10|dflt",
		"I|7|NULL|seven|NULL|text now|d7",
		"D|3|NULL|NULL|NULL|NULL|NULL",
	})
	types := map[string]string{}
	for _, row := range duck.Rows(t, ddb, "SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM "+parquetOf(lake, "public.evolve")+")") {
		types[row[0].(string)] = row[1].(string)
	}
	if types["n"] != "VARCHAR" || types["v"] != "VARCHAR" || types["v2"] != "VARCHAR" || types["a"] != "INTEGER" {
		t.Errorf("evolve's columns across versions: %v", types)
	}
	// The state of the renamed table is PostgreSQL's.
	sameRows(t, "evolved state",
		asStrings(lakeState(t, ddb, lake, "public.evolved", []string{"id"}, "CAST(id AS VARCHAR), v2, n, d", "id")),
		asStrings(e.pgQuery("SELECT id::text, v2, n, d FROM evolved t ORDER BY t.id")))
	// A table dropped and re-created: its old rows leave the state.
	for _, table := range []string{"dropme", "dropme2"} {
		sameRows(t, table+" state",
			asStrings(lakeState(t, ddb, lake, "public."+table, []string{"id"}, "CAST(id AS VARCHAR), v", "id")),
			asStrings(e.pgQuery(fmt.Sprintf("SELECT id::text, v FROM %s t ORDER BY t.id", table))))
		docs := schemaVersions(t, lake, "public."+table)
		if len(docs) == 2 && docs[0]["relation_oid"] == docs[1]["relation_oid"] {
			t.Errorf("%s: both versions name relation %v", table, docs[0]["relation_oid"])
		}
	}
	// Two versions in one transaction: each has its own document, and each
	// file names its own.
	var cols []string
	for _, d := range schemaVersions(t, lake, "public.intxn") {
		var names []string
		for _, c := range d["columns"].([]any) {
			names = append(names, c.(map[string]any)["name"].(string))
		}
		cols = append(cols, strings.Join(names, ","))
	}
	if got := strings.Join(cols, " "); got != "id id,x" {
		t.Errorf("intxn schema versions: %s, want id and id,x", got)
	}
	sameRows(t, "intxn rows", history(t, ddb, lake, "public.intxn", "_op, id, x"), []string{"I|1|NULL", "I|2|20"})

	// Same-named tables in two schemas, and names with dots, keep apart.
	for _, tt := range []struct{ table, cols, want string }{
		{"s1.same", "id, x", "1|10"}, {"s2.same", "id, y", "1|ten"},
		{"a%2Eb.c", "id, v", "1|dotted schema"}, {"a.b%2Ec", "id, w", "1|42"},
	} {
		got := history(t, ddb, lake, tt.table, tt.cols)
		sameRows(t, tt.table, got, []string{tt.want})
		docs := schemaVersions(t, lake, tt.table)
		if len(docs) == 1 {
			if name := fmt.Sprintf("%v.%v", docs[0]["schema"], docs[0]["name"]); tt.table == "a%2Eb.c" && name != "a.b.c" {
				t.Errorf("%s: schema version names %s", tt.table, name)
			}
		}
	}
}
