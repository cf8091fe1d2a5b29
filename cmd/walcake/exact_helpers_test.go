package main

// Helpers of the data-exactness tests (issue 4): the type matrix, TOAST,
// replica identities, truncates, schema changes, partitions, large values.

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/wal-cake/wal-cake/scripts/testenv/duck"
)

// exactEnv is an env whose slot and publication are named after the test.
type exactEnv struct {
	*env
	name string
}

func newExactEnv(t *testing.T, name string) *exactEnv {
	t.Helper()
	e := &exactEnv{env: newEnv(t), name: name}
	e.setVar("PG_SLOT=" + name)
	e.setVar("PG_PUBLICATION=" + name)
	return e
}

// exec runs statements on the test database.
func (e *exactEnv) exec(sqls ...string) {
	e.t.Helper()
	for _, s := range sqls {
		e.db.Exec(e.t, s)
	}
}

// pgQuery returns the rows of query, run in a session with TimeZone UTC (as
// the walsender's), each value as text or nil.
func (e *exactEnv) pgQuery(query string) [][]any {
	e.t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, e.db.URL)
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "SET TimeZone = 'UTC'"); err != nil {
		e.t.Fatal(err)
	}
	rows, err := conn.Query(ctx, query, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		e.t.Fatalf("%s: %v", query, err)
	}
	defer rows.Close()
	var out [][]any
	for rows.Next() {
		raw := rows.RawValues()
		r := make([]any, len(raw))
		for i, b := range raw {
			if b != nil {
				r[i] = string(b)
			}
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		e.t.Fatalf("%s: %v", query, err)
	}
	return out
}

// lakeOf downloads the lake and opens DuckDB on it.
func (e *exactEnv) lakeOf() (string, *sql.DB) {
	e.t.Helper()
	return e.download(), duck.Open(e.t)
}

// parquetOf is the DuckDB table expression reading every file of a lake
// table, all schema versions together.
func parquetOf(lake, table string) string {
	return fmt.Sprintf("read_parquet('%s', union_by_name=true, hive_partitioning=false)",
		filepath.Join(lake, table, "**", "*.parquet"))
}

// lakeTables lists the table folders of a lake.
func lakeTables(t *testing.T, lake string) []string {
	t.Helper()
	entries, err := os.ReadDir(lake)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, en := range entries {
		if en.IsDir() && en.Name() != "_walcake" {
			out = append(out, en.Name())
		}
	}
	sort.Strings(out)
	return out
}

// schemaVersions lists the schema version documents of a lake table.
func schemaVersions(t *testing.T, lake, table string) []map[string]any {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(lake, "_walcake", "schemas", table, "*.json"))
	sort.Strings(files)
	var out []map[string]any
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d map[string]any
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatal(err)
		}
		out = append(out, d)
	}
	return out
}

// opsOf returns a table's rows by _op, e.g. "D=1 I=3 T=1 U=2".
func opsOf(t *testing.T, ddb *sql.DB, lake, table string) string {
	t.Helper()
	rows := duck.Rows(t, ddb, "SELECT _op, count(*) FROM "+parquetOf(lake, table)+" GROUP BY _op ORDER BY _op")
	parts := make([]string, len(rows))
	for i, r := range rows {
		parts[i] = fmt.Sprintf("%v=%v", r[0], r[1])
	}
	return strings.Join(parts, " ")
}

// history returns a table's rows in commit order, each as the given DuckDB
// expressions joined by '|'.
func history(t *testing.T, ddb *sql.DB, lake, table, cols string) []string {
	t.Helper()
	return asStrings(duck.Rows(t, ddb, fmt.Sprintf("SELECT %s FROM %s ORDER BY _commit_lsn, _seq", cols, parquetOf(lake, table))))
}

// multiset rebuilds the state of a table keyed by its whole row: rows added
// by I and U, removed by D, after the latest truncate. It returns each
// distinct row (cols) with its count, as "row|count", sorted.
func multiset(t *testing.T, ddb *sql.DB, lake, table, cols string) []string {
	t.Helper()
	q := fmt.Sprintf(`
		WITH rows AS (SELECT * FROM %s),
		trunc AS (SELECT max(_commit_lsn) AS lsn, max_by(_seq, _commit_lsn) AS seq FROM rows WHERE _op = 'T'),
		live AS (SELECT rows.* FROM rows, trunc WHERE _op <> 'T' AND (trunc.lsn IS NULL OR (_commit_lsn, _seq) > (trunc.lsn, trunc.seq)))
		SELECT concat_ws('|', %s) AS r, sum(CASE WHEN _op = 'D' THEN -1 ELSE 1 END) AS n
		FROM live GROUP BY r HAVING n <> 0 ORDER BY r`, parquetOf(lake, table), cols)
	var out []string
	for _, r := range duck.Rows(t, ddb, q) {
		out = append(out, fmt.Sprintf("%v|%v", r[0], r[1]))
	}
	return out
}

// pgMultiset is multiset's counterpart in PostgreSQL.
func (e *exactEnv) pgMultiset(table, cols string) []string {
	e.t.Helper()
	var out []string
	for _, r := range e.pgQuery(fmt.Sprintf(`SELECT r, n FROM (SELECT concat_ws('|', %s) AS r, count(*) AS n FROM %s GROUP BY 1) s ORDER BY r COLLATE "C"`, cols, table)) {
		out = append(out, fmt.Sprintf("%v|%v", r[0], r[1]))
	}
	return out
}

// jsonCanon rewrites a JSON text with numbers as exact rationals and object
// keys sorted, so that 1.50 and 1.5 compare equal (as DECIMAL values do)
// and nothing else does.
func jsonCanon(s string) (string, error) {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return "", err
	}
	var canon func(v any) any
	canon = func(v any) any {
		switch x := v.(type) {
		case json.Number:
			r, ok := new(big.Rat).SetString(string(x))
			if !ok {
				return "bad number " + string(x)
			}
			return "#" + r.RatString()
		case []any:
			for i := range x {
				x[i] = canon(x[i])
			}
		case map[string]any:
			for k := range x {
				x[k] = canon(x[k])
			}
		}
		return v
	}
	b, err := json.Marshal(canon(v))
	return string(b), err
}
