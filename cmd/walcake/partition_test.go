package main

import (
	"fmt"
	"strings"
	"testing"
)

const partitionSchema = `
CREATE TABLE measure (id int, mdate date, v text, PRIMARY KEY (id, mdate)) PARTITION BY RANGE (mdate);
CREATE TABLE measure_2024 PARTITION OF measure FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE measure_2025 PARTITION OF measure FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
-- A partition whose columns are in another order.
CREATE TABLE measure_2026 (v text, mdate date, id int NOT NULL, PRIMARY KEY (id, mdate));
ALTER TABLE measure ATTACH PARTITION measure_2026 FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
`

// TestPartitions streams one partitioned table through two publications:
// with setup --via-partition-root it is one lake table, without it each
// partition is its own.
func TestPartitions(t *testing.T) {
	root := newExactEnv(t, "viaroot")
	root.exec(partitionSchema)
	leaf := &exactEnv{env: newEnvWith(t, root.db), name: "leaf"}
	leaf.setVar("PG_SLOT=leaf")
	leaf.setVar("PG_PUBLICATION=leaf")
	root.mustWalcake("setup", "--tables", "public.measure", "--via-partition-root")
	leaf.mustWalcake("setup", "--tables", "public.measure")

	// setup keeps the setting unless told otherwise.
	root.mustWalcake("setup", "--tables", "public.measure")
	pubs := asStrings(root.pgQuery("SELECT pubname, pubviaroot::text FROM pg_publication ORDER BY pubname"))
	if strings.Join(pubs, " ") != "leaf|false viaroot|true" {
		t.Errorf("publications: %v", pubs)
	}

	root.exec(
		"INSERT INTO measure SELECT g, DATE '2024-01-01' + g * 30, 'v' || g FROM generate_series(1, 30) g",
		"UPDATE measure SET v = 'updated' WHERE id % 5 = 0",
		// Moves a row to another partition: a delete and an insert.
		"UPDATE measure SET mdate = mdate + 365 WHERE id = 3",
		"DELETE FROM measure WHERE id = 4",
		"INSERT INTO measure_2026 (id, mdate, v) VALUES (100, '2026-06-01', 'straight into a partition')",
	)
	for _, e := range []*exactEnv{root, leaf} {
		e.mustWalcake("run")
	}
	state := func(e *exactEnv, table string) []string {
		lake, ddb := e.lakeOf()
		return asStrings(lakeState(t, ddb, lake, table, []string{"id", "mdate"}, "CAST(id AS VARCHAR), CAST(mdate AS VARCHAR), v", "id, mdate"))
	}
	pgState := func(table string) []string {
		return asStrings(root.pgQuery(fmt.Sprintf("SELECT id::text, mdate::text, v FROM %s t ORDER BY t.id, t.mdate", table)))
	}

	// PostgreSQL does not publish the TRUNCATE of a single partition via
	// the root (docs/changes.md): per partition it is a T row, via the root
	// nothing, and the lake keeps the partition's rows.
	root.exec("TRUNCATE measure_2025")
	for _, e := range []*exactEnv{root, leaf} {
		e.mustWalcake("run")
	}
	sameRows(t, "per partition, measure_2025 truncated", state(leaf, "public.measure_2025"), pgState("measure_2025"))
	if got, want := len(state(root, "public.measure")), len(pgState("measure")); got == want {
		t.Errorf("via the root: the lake has %d rows, as PostgreSQL; the documented limitation no longer holds", got)
	}

	root.exec(
		"TRUNCATE measure",
		"INSERT INTO measure VALUES (1, '2024-02-02', 'after truncate'), (2, '2026-02-02', 'after truncate')",
	)
	for _, e := range []*exactEnv{root, leaf} {
		e.mustWalcake("run")
	}

	lake, _ := root.lakeOf()
	if got := strings.Join(lakeTables(t, lake), " "); got != "public.measure" {
		t.Errorf("via the root: lake tables %s, want public.measure", got)
	}
	sameRows(t, "via the root", state(root, "public.measure"), pgState("measure"))

	lake, _ = leaf.lakeOf()
	if got := strings.Join(lakeTables(t, lake), " "); got != "public.measure_2024 public.measure_2025 public.measure_2026" {
		t.Errorf("per partition: lake tables %s", got)
	}
	for _, p := range []string{"measure_2024", "measure_2025", "measure_2026"} {
		sameRows(t, "per partition "+p, state(leaf, "public."+p), pgState(p))
	}
	// measure_2026 keeps its own column order when published as itself.
	docs := schemaVersions(t, lake, "public.measure_2026")
	var cols []string
	for _, c := range docs[0]["columns"].([]any) {
		cols = append(cols, c.(map[string]any)["name"].(string))
	}
	if strings.Join(cols, ",") != "v,mdate,id" {
		t.Errorf("measure_2026 columns: %v", cols)
	}

	// Changing the setting on an existing publication is explicit.
	r := leaf.mustWalcake("setup", "--tables", "public.measure", "--via-partition-root")
	if !strings.Contains(r.stderr, "publish_via_partition_root") {
		t.Errorf("setup does not say it changed publish_via_partition_root:\n%s", r.stderr)
	}
	if got := asStrings(root.pgQuery("SELECT pubviaroot::text FROM pg_publication WHERE pubname = 'leaf'")); got[0] != "true" {
		t.Errorf("leaf publication: pubviaroot %v", got)
	}
}
