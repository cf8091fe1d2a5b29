package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

const identitySchema = `
CREATE TABLE pk (id int PRIMARY KEY, v text);
CREATE TABLE pk2 (a int, b int, v text, PRIMARY KEY (a, b));
CREATE TABLE pk_full (id int PRIMARY KEY, v text);
ALTER TABLE pk_full REPLICA IDENTITY FULL;
CREATE TABLE nopk_full (a int, b text);
ALTER TABLE nopk_full REPLICA IDENTITY FULL;
CREATE TABLE idx (a int NOT NULL, b int NOT NULL, c text);
CREATE UNIQUE INDEX idx_ab ON idx (a, b);
ALTER TABLE idx REPLICA IDENTITY USING INDEX idx_ab;
CREATE TABLE nothing (a int, b text);
ALTER TABLE nothing REPLICA IDENTITY NOTHING;
CREATE TABLE nopk (a int, b text);
CREATE TABLE pk_nothing (id int PRIMARY KEY, v text);
ALTER TABLE pk_nothing REPLICA IDENTITY NOTHING;
`

// TestReplicaIdentities checks key changes and each replica identity: the
// rows wal-cake writes, the state the lake rebuilds, the keys in the schema
// versions, and setup's warnings for the tables whose updates PostgreSQL
// rejects.
func TestReplicaIdentities(t *testing.T) {
	e := newExactEnv(t, "identity")
	e.exec(identitySchema)
	r := e.mustWalcake("setup")
	for _, table := range []string{"public.nothing", "public.nopk", "public.pk_nothing"} {
		if !strings.Contains(r.stderr, "table "+table+" has") {
			t.Errorf("setup does not warn about %s:\n%s", table, r.stderr)
		}
	}
	if !strings.Contains(r.stdout, "3 warning(s)") {
		t.Errorf("setup: want 3 warnings: %s", r.stdout)
	}

	e.exec(
		// Primary key: a key change is a delete of the old key, then the
		// new row; a delete carries the old key only.
		"INSERT INTO pk SELECT g, 'v' || g FROM generate_series(1, 6) g",
		"UPDATE pk SET v = 'v1b' WHERE id = 1",
		"UPDATE pk SET id = 20 WHERE id = 2",
		"UPDATE pk SET id = id + 100, v = 'moved' WHERE id IN (3, 4)",
		"DELETE FROM pk WHERE id = 5",
		"INSERT INTO pk VALUES (5, 'back')",
		"BEGIN; UPDATE pk SET id = 60 WHERE id = 6; INSERT INTO pk VALUES (6, 'new six'); COMMIT",
		// A composite primary key.
		"INSERT INTO pk2 VALUES (1, 1, 'a'), (1, 2, 'b')",
		"UPDATE pk2 SET b = 3 WHERE a = 1 AND b = 2",
		"UPDATE pk2 SET v = 'a2' WHERE a = 1 AND b = 1",
		// FULL with a primary key: every update is the old row, then the new.
		"INSERT INTO pk_full VALUES (1, 'x'), (2, 'y')",
		"UPDATE pk_full SET v = 'x2' WHERE id = 1",
		"UPDATE pk_full SET id = 3 WHERE id = 2",
		"DELETE FROM pk_full WHERE id = 1",
		// FULL without a primary key: a multiset, duplicates included.
		"INSERT INTO nopk_full VALUES (1, 'x'), (1, 'x'), (2, 'y'), (4, NULL)",
		"UPDATE nopk_full SET b = 'z' WHERE ctid = (SELECT ctid FROM nopk_full WHERE a = 1 LIMIT 1)",
		"UPDATE nopk_full SET a = 3 WHERE a = 2",
		"UPDATE nopk_full SET a = a", // changes nothing, still an update
		"DELETE FROM nopk_full WHERE b = 'z'",
		"INSERT INTO nopk_full VALUES (1, 'x')",
		"DELETE FROM nopk_full WHERE b IS NULL",
		// USING INDEX: keyed by the index's columns.
		"INSERT INTO idx VALUES (1, 1, 'c'), (1, 2, 'd'), (2, 2, 'e')",
		"UPDATE idx SET c = 'c2' WHERE a = 1 AND b = 1",
		"UPDATE idx SET b = 5 WHERE a = 1 AND b = 2",
		"DELETE FROM idx WHERE a = 2",
		// NOTHING and DEFAULT without a primary key: inserts only.
		"INSERT INTO nothing VALUES (1, 'a'), (1, 'a')",
		"INSERT INTO nopk VALUES (1, 'a')",
		"INSERT INTO pk_nothing VALUES (1, 'a')",
	)
	// PostgreSQL rejects their updates and deletes while they are
	// published, so nothing is lost silently.
	for _, sql := range []string{
		"UPDATE nothing SET b = 'b'", "DELETE FROM nothing", "UPDATE nopk SET b = 'b'",
		"DELETE FROM nopk", "UPDATE pk_nothing SET v = 'b'",
	} {
		_, err := e.db.Conn(t).Exec(context.Background(), sql)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "55000" || !strings.Contains(pgErr.Message, "does not have a replica identity") {
			t.Errorf("%s: got %v, want PostgreSQL to reject it (55000, no replica identity)", sql, err)
		}
	}
	e.mustWalcake("run")

	lake, ddb := e.lakeOf()
	// States keyed by primary key or index.
	for _, tb := range []struct {
		table   string
		key     []string
		duck    string
		pg      string
		orderBy string
	}{
		{"pk", []string{"id"}, "CAST(id AS VARCHAR), v", "id::text, v", "id"},
		{"pk2", []string{"a", "b"}, "CAST(a AS VARCHAR), CAST(b AS VARCHAR), v", "a::text, b::text, v", "a, b"},
		{"pk_full", []string{"id"}, "CAST(id AS VARCHAR), v", "id::text, v", "id"},
		{"idx", []string{"a", "b"}, "CAST(a AS VARCHAR), CAST(b AS VARCHAR), c", "a::text, b::text, c", "a, b"},
	} {
		got := asStrings(lakeState(t, ddb, lake, "public."+tb.table, tb.key, tb.duck, tb.orderBy))
		want := asStrings(e.pgQuery(fmt.Sprintf("SELECT %s FROM %s t ORDER BY %s", tb.pg, tb.table, qualify("t", tb.orderBy))))
		sameRows(t, tb.table+" state", got, want)
	}
	// States of tables keyed by their whole row: multisets.
	for _, table := range []string{"nopk_full", "nothing", "nopk", "pk_nothing"} {
		cols := "a, b"
		if table == "pk_nothing" {
			cols = "id, v"
		}
		sameRows(t, table+" multiset", multiset(t, ddb, lake, "public."+table, cols), e.pgMultiset(table, cols))
	}

	// The rows themselves.
	for _, tt := range []struct {
		table, cols string
		want        []string
	}{
		{"pk", "_op, id, v", []string{
			"I|1|v1", "I|2|v2", "I|3|v3", "I|4|v4", "I|5|v5", "I|6|v6",
			"U|1|v1b",
			"D|2|NULL", "U|20|v2", // the old key, then the new row
			"D|3|NULL", "U|103|moved", "D|4|NULL", "U|104|moved",
			"D|5|NULL", // the old key only
			"I|5|back",
			"D|6|NULL", "U|60|v6", "I|6|new six",
		}},
		{"pk2", "_op, a, b, v", []string{"I|1|1|a", "I|1|2|b", "D|1|2|NULL", "U|1|3|b", "U|1|1|a2"}},
		{"pk_full", "_op, id, v", []string{
			"I|1|x", "I|2|y",
			"D|1|x", "U|1|x2", // the whole old row, then the new
			"D|2|y", "U|3|y",
			"D|1|x2",
		}},
		{"nopk_full", "_op, a, b", []string{
			"I|1|x", "I|1|x", "I|2|y", "I|4|NULL",
			"D|1|x", "U|1|z",
			"D|2|y", "U|3|y",
			"D|1|x", "U|1|x", "D|1|z", "U|1|z", "D|3|y", "U|3|y", "D|4|NULL", "U|4|NULL",
			"D|1|z",
			"I|1|x",
			"D|4|NULL",
		}},
		{"idx", "_op, a, b, c", []string{"I|1|1|c", "I|1|2|d", "I|2|2|e", "U|1|1|c2", "D|1|2|NULL", "U|1|5|d", "D|2|2|NULL"}},
	} {
		got := history(t, ddb, lake, "public."+tt.table, tt.cols)
		if tt.table == "nopk_full" {
			// The order of the rows of one UPDATE depends on the heap.
			got, tt.want = sortedWithinUpdate(got), sortedWithinUpdate(tt.want)
		}
		sameRows(t, tt.table+" rows", got, tt.want)
	}

	// The schema versions name the replica identity and its columns.
	for _, tt := range []struct{ table, ident, keys string }{
		{"pk", "d", "id"}, {"pk2", "d", "a,b"}, {"pk_full", "f", "id,v"}, {"nopk_full", "f", "a,b"},
		{"idx", "i", "a,b"}, {"nothing", "n", ""}, {"nopk", "d", ""},
	} {
		docs := schemaVersions(t, lake, "public."+tt.table)
		if len(docs) != 1 {
			t.Errorf("%s: %d schema versions, want 1", tt.table, len(docs))
			continue
		}
		var keys []string
		for _, c := range docs[0]["columns"].([]any) {
			if col := c.(map[string]any); col["key"] == true {
				keys = append(keys, col["name"].(string))
			}
		}
		if got := fmt.Sprintf("%v %s", docs[0]["replica_identity"], strings.Join(keys, ",")); got != tt.ident+" "+tt.keys {
			t.Errorf("%s: schema version says %q, want %q", tt.table, got, tt.ident+" "+tt.keys)
		}
	}
}

// qualify prefixes each of a comma-separated list of columns with alias.
func qualify(alias, cols string) string {
	parts := strings.Split(cols, ",")
	for i, p := range parts {
		parts[i] = alias + "." + strings.TrimSpace(p)
	}
	return strings.Join(parts, ", ")
}

// sortedWithinUpdate sorts the D/U pairs of the statement "UPDATE
// nopk_full SET a = a" (rows 8 to 15), whose order is the heap's.
func sortedWithinUpdate(rows []string) []string {
	out := append([]string(nil), rows...)
	if len(out) < 16 {
		return out
	}
	var pairs []string
	for i := 8; i < 16; i += 2 {
		pairs = append(pairs, out[i]+"\n"+out[i+1])
	}
	sort.Strings(pairs)
	for i, p := range pairs {
		d, u, _ := strings.Cut(p, "\n")
		out[8+2*i], out[9+2*i] = d, u
	}
	return out
}
