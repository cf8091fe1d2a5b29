package main

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wal-cake/wal-cake/compact"
	"github.com/wal-cake/wal-cake/scripts/testenv"
	"github.com/wal-cake/wal-cake/scripts/testenv/duck"
	"github.com/wal-cake/wal-cake/upload"
)

// walcakeBin is the binary under test, built once by TestMain.
var walcakeBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "walcake-bin-*")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	walcakeBin = filepath.Join(dir, "walcake")
	build := exec.Command("go", "build", "-o", walcakeBin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build walcake: %v\n%s", err, out)
		os.Exit(1)
	}
	code := testenv.Main(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is one test's configuration of walcake: its database, slot,
// publication, lake and spool.
type env struct {
	t     *testing.T
	db    *testenv.Database
	s3    *testenv.S3Env
	spool string
	vars  []string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvWith(t, testenv.NewDatabase(t))
}

type result struct {
	stdout, stderr string
	code           int
}

// walcake runs the binary with the env's variables and args.
func (e *env) walcake(args ...string) result {
	e.t.Helper()
	cmd := exec.Command(walcakeBin, args...)
	cmd.Env = append(minimalEnv(), e.vars...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			r.code = ee.ExitCode()
		} else {
			e.t.Fatalf("walcake %s: %v", strings.Join(args, " "), err)
		}
	}
	return r
}

// mustWalcake runs walcake and fails the test on a non-zero exit.
func (e *env) mustWalcake(args ...string) result {
	e.t.Helper()
	r := e.walcake(args...)
	if r.code != 0 {
		e.t.Fatalf("walcake %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

// minimalEnv keeps what a process needs (PATH, HOME) without the test's own
// AWS or PG variables.
func minimalEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "AWS_"), strings.HasPrefix(k, "PG"), strings.HasPrefix(k, "WALCAKE_"),
			k == "S3_BUCKET_NAME", k == "NAMESPACE", k == "SPOOL_DIR":
			continue
		}
		out = append(out, kv)
	}
	return out
}

// store opens the env's lake with our own S3 store.
func (e *env) store() compact.Store {
	e.t.Helper()
	s, err := upload.NewS3(context.Background(), upload.S3Config{
		Bucket: e.s3.Bucket, Prefix: e.s3.Prefix, Region: e.s3.Region, Endpoint: e.s3.Endpoint,
		AccessKeyID: e.s3.AccessKey, SecretAccessKey: e.s3.SecretKey,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

// download copies every object of the lake into a local directory, for
// DuckDB to read (it cannot reach S3 here).
func (e *env) download() string {
	e.t.Helper()
	dir := e.t.TempDir()
	ctx := context.Background()
	store := e.store()
	err := store.List(ctx, "", func(o compact.Object) error {
		r, err := store.Get(ctx, o.Key)
		if err != nil {
			return err
		}
		defer r.Close()
		path := filepath.Join(dir, filepath.FromSlash(o.Key))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(f, r)
		return err
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return dir
}

// lakeState rebuilds a table's current state from its lake files by the rule
// of DESIGN.md: per key, the newest row by (_commit_lsn, _seq) unless it is a
// delete, after the latest truncate. cols are DuckDB expressions selected
// from the winning rows, ordered by orderBy.
func lakeState(t *testing.T, ddb *sql.DB, lake, table string, key []string, cols, orderBy string) [][]any {
	t.Helper()
	glob := filepath.Join(lake, table, "**", "*.parquet")
	q := fmt.Sprintf(`
		WITH rows AS (SELECT * FROM read_parquet('%s', union_by_name=true, hive_partitioning=false)),
		trunc AS (SELECT max(_commit_lsn) AS lsn, max_by(_seq, _commit_lsn) AS seq FROM rows WHERE _op = 'T'),
		live AS (
			SELECT rows.* FROM rows, trunc
			WHERE _op <> 'T' AND (trunc.lsn IS NULL OR (_commit_lsn, _seq) > (trunc.lsn, trunc.seq))
		),
		ranked AS (
			SELECT *, row_number() OVER (PARTITION BY %s ORDER BY _commit_lsn DESC, _seq DESC) AS rn FROM live
		)
		SELECT %s FROM ranked WHERE rn = 1 AND _op <> 'D' ORDER BY %s`,
		glob, strings.Join(key, ", "), cols, orderBy)
	return duck.Rows(t, ddb, q)
}

// pgRows returns every row of a query on the test database as strings.
func (e *env) pgRows(query string) [][]any {
	e.t.Helper()
	conn := e.db.Conn(e.t)
	rows, err := conn.Query(context.Background(), query)
	if err != nil {
		e.t.Fatalf("%s: %v", query, err)
	}
	defer rows.Close()
	var out [][]any
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			e.t.Fatal(err)
		}
		out = append(out, vals)
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	return out
}

// asStrings renders rows as strings for comparison.
func asStrings(rows [][]any) []string {
	out := make([]string, len(rows))
	for i, r := range rows {
		parts := make([]string, len(r))
		for j, v := range r {
			if v == nil {
				parts[j] = "NULL"
			} else {
				parts[j] = fmt.Sprint(v)
			}
		}
		out[i] = strings.Join(parts, "|")
	}
	return out
}

// sameRows fails the test with the first difference between two row lists.
func sameRows(t *testing.T, what string, got, want []string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: lake has %d rows, PostgreSQL %d", what, len(got), len(want))
	}
	for i := 0; i < len(got) && i < len(want); i++ {
		if got[i] != want[i] {
			t.Errorf("%s: row %d differs:\n lake: %s\n   pg: %s", what, i, got[i], want[i])
			return
		}
	}
}
