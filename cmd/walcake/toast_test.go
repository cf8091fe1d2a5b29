package main

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/wal-cake/wal-cake/scripts/testenv/duck"
)

// toastFillQuery is the query of docs/changes.md: each value named in
// _unchanged is taken from the newest earlier row of the same key that has
// it, never across a delete of the key or a truncate of the table ({'v': x}
// keeps a real NULL apart from "no value"); then the state is rebuilt as
// usual.
const toastFillQuery = `
WITH rows AS (SELECT * FROM $rows),
lives AS (  -- a key's life ends at its delete, every life at a truncate
  SELECT *, sum(CASE WHEN _op = 'D' THEN 1 ELSE 0 END) OVER (PARTITION BY id, tgen ORDER BY _commit_lsn, _seq
              ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS dgen
  FROM (SELECT *, count(*) FILTER (WHERE _op = 'T') OVER (ORDER BY _commit_lsn, _seq) AS tgen FROM rows)
),
filled AS (
  SELECT * REPLACE (
    CASE WHEN list_contains(_unchanged, 'body')
      THEN (last_value(CASE WHEN NOT list_contains(_unchanged, 'body') THEN {'v': body} END IGNORE NULLS) OVER w).v
      ELSE body END AS body,
    CASE WHEN list_contains(_unchanged, 'blob')
      THEN (last_value(CASE WHEN NOT list_contains(_unchanged, 'blob') THEN {'v': blob} END IGNORE NULLS) OVER w).v
      ELSE blob END AS blob,
    CASE WHEN list_contains(_unchanged, 'meta')
      THEN (last_value(CASE WHEN NOT list_contains(_unchanged, 'meta') THEN {'v': meta} END IGNORE NULLS) OVER w).v
      ELSE meta END AS meta)
  FROM lives
  WINDOW w AS (PARTITION BY id, tgen, dgen ORDER BY _commit_lsn, _seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
),
ranked AS (
  SELECT *, row_number() OVER (PARTITION BY id ORDER BY _commit_lsn DESC, _seq DESC) AS rn
  FROM filled WHERE _op <> 'T' AND tgen = (SELECT count(*) FILTER (WHERE _op = 'T') FROM rows)
)
SELECT CAST(id AS VARCHAR), note, md5(body), md5(blob), md5(CAST(meta AS VARCHAR)) FROM ranked WHERE rn = 1 AND _op <> 'D' ORDER BY id`

const toastSchema = `
-- Values of 12.8 kB text, 9.6 kB bytea and a 13 kB jsonb, stored out of
-- line uncompressed (STORAGE EXTERNAL): an UPDATE that does not change them
-- sends 'u' (unchanged TOAST) instead of the value.
CREATE FUNCTION bigtext(seed text) RETURNS text LANGUAGE sql IMMUTABLE AS
  $$ SELECT string_agg(md5(seed || ':' || g), '') FROM generate_series(1, 400) g $$;
CREATE FUNCTION bigbytes(seed text) RETURNS bytea LANGUAGE sql IMMUTABLE AS
  $$ SELECT decode(string_agg(md5(seed || '#' || g), ''), 'hex') FROM generate_series(1, 600) g $$;
CREATE TABLE docs (id int PRIMARY KEY, body text, blob bytea, meta jsonb, note text);
ALTER TABLE docs ALTER body SET STORAGE EXTERNAL, ALTER blob SET STORAGE EXTERNAL, ALTER meta SET STORAGE EXTERNAL;
CREATE TABLE docs_full (id int PRIMARY KEY, body text, note text);
ALTER TABLE docs_full REPLICA IDENTITY FULL, ALTER body SET STORAGE EXTERNAL;
CREATE TABLE docs_nopk (a int, body text, note text);
ALTER TABLE docs_nopk REPLICA IDENTITY FULL, ALTER body SET STORAGE EXTERNAL;
`

// toastRows keeps the rows the lake must hold for the TOAST tables, as
// "op|id|note|md5(body)|md5(blob)|md5(meta)|unchanged".
type toastRows struct {
	e    *exactEnv
	want map[string][]string
}

// expect appends the row an operation on table must have produced: the
// key's current values in PostgreSQL (or NULL for the columns named in
// unchanged), or, with deleted, the old key only.
func (r *toastRows) expect(table, op string, id int, unchanged string) {
	r.e.t.Helper()
	cols := "id::text, note, md5(body), NULL::text, NULL::text"
	if table == "docs" {
		cols = "id::text, note, md5(body), md5(blob), md5(meta::text)"
	}
	rows := r.e.pgQuery(fmt.Sprintf("SELECT %s FROM %s WHERE id = %d", cols, table, id))
	if len(rows) != 1 {
		r.e.t.Fatalf("%s id %d: %d rows", table, id, len(rows))
	}
	vals := asStrings(rows)[0]
	parts := strings.Split(vals, "|")
	for i, name := range []string{"", "", "body", "blob", "meta"} {
		if name != "" && strings.Contains(","+unchanged+",", ","+name+",") {
			parts[i] = "NULL"
		}
	}
	r.want[table] = append(r.want[table], op+"|"+strings.Join(parts, "|")+"|"+unchanged)
}

// expectWhere appends the insert or update rows of the keys that match
// where, in key order.
func (r *toastRows) expectWhere(table, op, where string) {
	r.e.t.Helper()
	for _, row := range asStrings(r.e.pgQuery(fmt.Sprintf(
		"SELECT id::text, note, md5(body), md5(blob), md5(meta::text) FROM %s WHERE %s ORDER BY id", table, where))) {
		r.want[table] = append(r.want[table], op+"|"+row+"|")
	}
}

// expectKey appends a delete row that carries only the old key.
func (r *toastRows) expectKey(table string, id int) {
	cols := "NULL|NULL|NULL|NULL"
	r.want[table] = append(r.want[table], fmt.Sprintf("D|%d|%s|", id, cols))
}

func (r *toastRows) check(what string) {
	r.e.t.Helper()
	lake, ddb := r.e.lakeOf()
	for _, table := range []string{"docs", "docs_full"} {
		cols := "_op, id, note, md5(body), NULL, NULL, array_to_string(_unchanged, ',')"
		if table == "docs" {
			cols = "_op, id, note, md5(body), md5(blob), md5(CAST(meta AS VARCHAR)), array_to_string(_unchanged, ',')"
		}
		sameRows(r.e.t, what+": "+table, history(r.e.t, ddb, lake, "public."+table, cols), r.want[table])
	}
}

func TestUnchangedToast(t *testing.T) {
	e := newExactEnv(t, "toast")
	e.exec(toastSchema)
	e.mustWalcake("setup")
	r := &toastRows{e: e, want: map[string][]string{}}
	ins := func(id int, seed string) {
		e.exec(fmt.Sprintf("INSERT INTO docs VALUES (%d, bigtext('%s'), bigbytes('%s'), jsonb_build_object('k', bigtext('%s')), 'new')", id, seed, seed, seed))
		r.expect("docs", "I", id, "")
	}
	note := func(id int, note, unchanged string) {
		e.exec(fmt.Sprintf("UPDATE docs SET note = '%s' WHERE id = %d", note, id))
		r.expect("docs", "U", id, unchanged)
	}
	const all = "body,blob,meta"

	// 1. In one run: the store fills from the insert of the same batch;
	// REPLICA IDENTITY FULL fills from the old row.
	for id := 1; id <= 3; id++ {
		ins(id, fmt.Sprint("v", id))
	}
	note(1, "n1", "")
	e.exec("INSERT INTO docs_full VALUES (1, bigtext('full'), 'a')")
	r.expect("docs_full", "I", 1, "")
	oldFull := r.want["docs_full"][0]
	e.exec("INSERT INTO docs_nopk VALUES (1, bigtext('nopk'), 'a')")
	e.exec("UPDATE docs_full SET note = 'b' WHERE id = 1")
	// The old row, as before the update, then the new one.
	r.want["docs_full"] = append(r.want["docs_full"], "D"+strings.TrimPrefix(oldFull, "I"))
	r.expect("docs_full", "U", 1, "")
	e.exec("UPDATE docs_nopk SET note = 'b'")
	e.mustWalcake("run")
	r.check("first run")

	// 2. In a later run: from the store, which the first run left beside
	// the spool; a key change takes the old key's values; a new value
	// replaces the kept one.
	note(2, "n2", "")
	e.exec("UPDATE docs SET id = 30 WHERE id = 3")
	r.expectKey("docs", 3)
	r.expect("docs", "U", 30, "")
	note(30, "n30", "")
	e.exec("UPDATE docs SET body = bigtext('v1b') WHERE id = 1")
	r.expect("docs", "U", 1, "")
	note(1, "n1b", "")
	e.mustWalcake("run")
	r.check("second run")

	// 3. The spool (and the store with it) is lost: nothing is filled
	// until the key's full value is seen again.
	if err := os.RemoveAll(e.spool); err != nil {
		t.Fatal(err)
	}
	note(2, "n2b", all)
	ins(4, "v4")
	note(4, "n4", "")
	e.mustWalcake("run")
	r.check("after the spool was lost")

	// 4. A compaction killed after its uploads, before the manifest, once
	// its store writes were flushed (the 400 inserts of 35 kB pass the
	// store's transaction size): the next run forgets what the killed
	// attempt wrote, so the redone batch's first update of key 30 (before
	// the new value) is left unfilled rather than filled with the value
	// the attempt stored, which is newer than the update; the redone batch
	// then fills from its own new value.
	note(30, "n30a", all)
	e.exec("UPDATE docs SET body = bigtext('v30b'), blob = bigbytes('v30b'), meta = '{}' WHERE id = 30")
	r.expect("docs", "U", 30, "")
	e.exec(`INSERT INTO docs SELECT g, bigtext(g::text), bigbytes(g::text), jsonb_build_object('k', bigtext(g::text)), 'bulk'
		FROM generate_series(1000, 1399) g`)
	r.expectWhere("docs", "I", "id >= 1000")
	note(30, "n30b", "")
	e.setVar("WALCAKE_FAILPOINT=compact-after-upload")
	if res := e.walcake("run"); res.code == 0 {
		t.Fatalf("the failpoint did not stop the run: %s", res.stderr)
	}
	e.setVar("WALCAKE_FAILPOINT=")
	e.mustWalcake("run")
	r.check("after a crash before the manifest")

	// 5. Killed after the manifest, before the store recorded it: the store
	// no longer matches the lake and starts empty; values are left
	// unfilled, never wrong. (meta is now '{}', stored inline: PostgreSQL
	// always sends it.)
	e.exec("UPDATE docs SET body = bigtext('v30c') WHERE id = 30")
	r.expect("docs", "U", 30, "")
	e.setVar("WALCAKE_FAILPOINT=compact-after-manifest")
	if res := e.walcake("run"); res.code == 0 {
		t.Fatalf("the failpoint did not stop the run: %s", res.stderr)
	}
	e.setVar("WALCAKE_FAILPOINT=")
	note(30, "n30c", "body,blob")
	e.mustWalcake("run")
	r.check("after a crash after the manifest")

	// Nothing is lost: the query of docs/changes.md fills each unchanged
	// value from the key's newest earlier row that has it, and the state
	// rebuilt from the filled rows is PostgreSQL's.
	{
		lake, ddb := e.lakeOf()
		got := asStrings(duck.Rows(t, ddb, strings.ReplaceAll(toastFillQuery, "$rows", parquetOf(lake, "public.docs"))))
		want := asStrings(e.pgQuery("SELECT id::text, note, md5(body), md5(blob), md5(meta::text) FROM docs t ORDER BY t.id"))
		sameRows(t, "state with unchanged values filled from history", got, want)
	}

	// The table without a primary key, under FULL: the old row, then the new.
	lake, ddb := e.lakeOf()
	got := history(t, ddb, lake, "public.docs_nopk", "_op, a, note, md5(body), len(_unchanged) = 0")
	want := asStrings(e.pgQuery(`
		SELECT op, a::text, n, md5(bigtext('nopk')), 'true' FROM (VALUES (1, 'I', 'a'), (2, 'D', 'a'), (3, 'U', 'b')) v(i, op, n), docs_nopk ORDER BY i`))
	sameRows(t, "docs_nopk", got, want)
}
