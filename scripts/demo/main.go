// Command demo runs wal-cake end to end on a throwaway PostgreSQL: it starts
// a server, creates a small shop schema, writes a mixed workload, runs
// `walcake setup` and `walcake run` twice into a local file:// lake, and
// shows what landed. Run it with scripts/demo.sh.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/format"

	"github.com/wal-cake/wal-cake/scripts/testenv"
)

func main() {
	lake := flag.String("lake", "demo-lake", "directory of the local lake (emptied first)")
	flag.Parse()
	if err := run(context.Background(), *lake); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

const schema = `
CREATE SCHEMA shop;
CREATE TABLE shop.customers (id bigint PRIMARY KEY, email text NOT NULL, name text, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE shop.orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL, total numeric(12,2) NOT NULL, status text NOT NULL, tags text[], placed_at timestamptz NOT NULL);
CREATE TABLE shop.order_lines (order_id bigint, line int, sku text NOT NULL, qty int NOT NULL, price numeric(10,2) NOT NULL, PRIMARY KEY (order_id, line));
`

var firstBatch = []string{
	`INSERT INTO shop.customers (id, email, name) SELECT g, 'user' || g || '@example.com', 'Customer ' || g FROM generate_series(1, 200) g`,
	`INSERT INTO shop.orders SELECT g, 1 + g % 200, (g % 97) * 3.15 + 9.99, 'new', ARRAY['web', CASE WHEN g % 3 = 0 THEN 'promo' ELSE 'full-price' END], '2026-11-20T08:00:00Z'::timestamptz + g * interval '37 seconds' FROM generate_series(1, 5000) g`,
	`INSERT INTO shop.order_lines SELECT o, l, 'SKU-' || (o * l % 113), 1 + (o + l) % 4, 4.99 + l FROM generate_series(1, 5000) o, generate_series(1, 3) l`,
	`UPDATE shop.orders SET status = 'paid' WHERE id % 3 = 0`,
	`DELETE FROM shop.order_lines WHERE order_id % 50 = 0 AND line = 3`,
	`BEGIN; UPDATE shop.orders SET status = 'lost in a rollback'; ROLLBACK`,
}

var secondBatch = []string{
	`UPDATE shop.orders SET status = 'shipped' WHERE status = 'paid' AND id < 1000`,
	`UPDATE shop.customers SET id = id + 10000 WHERE id = 42`, // a key change: D for 42, U for 10042
	`DELETE FROM shop.orders WHERE id BETWEEN 4990 AND 5000`,
	`INSERT INTO shop.customers (id, email, name) VALUES (201, 'new@example.com', 'Zoë Ünicode')`,
}

func run(ctx context.Context, lakeDir string) error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	lakeDir, err = filepath.Abs(lakeDir)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "walcake-demo-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	step("building walcake")
	bin := filepath.Join(work, "walcake")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/walcake")
	build.Dir, build.Stdout, build.Stderr = root, os.Stdout, os.Stderr
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if err := build.Run(); err != nil {
		return fmt.Errorf("build walcake: %w", err)
	}

	step("starting a throwaway PostgreSQL 15 (wal_level=logical)")
	srv, err := testenv.StartPostgres(ctx, testenv.PostgresOptions{})
	if err != nil {
		return err
	}
	defer srv.Stop()
	conn, err := pgx.Connect(ctx, srv.URL("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	fmt.Printf("    PostgreSQL on 127.0.0.1:%d\n", srv.Port)

	if err := os.RemoveAll(lakeDir); err != nil {
		return err
	}
	env := append(os.Environ(),
		"PG_CONN_STRING="+srv.URL("postgres"),
		"PG_SLOT=walcake_demo",
		"PG_PUBLICATION=walcake_demo",
		"WALCAKE_DEST=file://"+lakeDir,
		"SPOOL_DIR="+filepath.Join(work, "spool"),
	)
	walcake := func(args ...string) error {
		fmt.Printf("    $ walcake %s\n", strings.Join(args, " "))
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env, cmd.Stdout, cmd.Stderr = env, prefixed("    "), prefixed("    ")
		return cmd.Run()
	}

	step("creating the shop schema and running walcake setup")
	if _, err := conn.Exec(ctx, schema); err != nil {
		return err
	}
	if err := walcake("setup", "--tables", "shop.customers,shop.orders,shop.order_lines"); err != nil {
		return err
	}

	step("first workload: 200 customers, 5,000 orders, 15,000 order lines, updates, deletes, a rollback")
	if err := execAll(ctx, conn, firstBatch); err != nil {
		return err
	}
	if err := walcake("run"); err != nil {
		return err
	}

	step("second workload: status changes, a primary-key change, deletes, an insert")
	if err := execAll(ctx, conn, secondBatch); err != nil {
		return err
	}
	if err := walcake("run"); err != nil {
		return err
	}
	if err := walcake("status"); err != nil {
		return err
	}

	step("what landed in " + lakeDir)
	if err := showLake(lakeDir); err != nil {
		return err
	}
	fmt.Printf(`
Query it with DuckDB, for example:
    duckdb -c "SELECT _op, count(*) FROM read_parquet('%s/shop.orders/**/*.parquet', union_by_name=true, hive_partitioning=false) GROUP BY _op"
`, lakeDir)
	return nil
}

func execAll(ctx context.Context, conn *pgx.Conn, stmts []string) error {
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	return nil
}

func step(s string) { fmt.Printf("\n==> %s\n", s) }

// showLake prints the lake's tables, files and rows by operation (from the
// manifests) and the first rows of one table (read with parquet-go).
func showLake(dir string) error {
	manifests, err := filepath.Glob(filepath.Join(dir, "_walcake", "manifests", "*.json"))
	if err != nil {
		return err
	}
	type tableStats struct {
		files int
		rows  int64
		bytes int64
	}
	tables := map[string]*tableStats{}
	ops := map[string]int64{}
	for _, path := range manifests {
		var m struct {
			Rows  map[string]int64 `json:"rows"`
			Files []struct {
				Table string `json:"table"`
				Rows  int64  `json:"rows"`
				Bytes int64  `json:"bytes"`
			} `json:"files"`
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(b, &m); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		for op, n := range m.Rows {
			ops[op] += n
		}
		for _, f := range m.Files {
			ts := tables[f.Table]
			if ts == nil {
				ts = &tableStats{}
				tables[f.Table] = ts
			}
			ts.files++
			ts.rows += f.Rows
			ts.bytes += f.Bytes
		}
	}
	fmt.Printf("    %d lake commits (manifests)\n", len(manifests))
	fmt.Printf("    rows by operation: I=%d U=%d D=%d T=%d\n", ops["I"], ops["U"], ops["D"], ops["T"])
	names := make([]string, 0, len(tables))
	for n := range tables {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		ts := tables[n]
		fmt.Printf("    %-20s %3d files %7d rows %9d bytes\n", n, ts.files, ts.rows, ts.bytes)
	}
	files, err := filepath.Glob(filepath.Join(dir, "shop.customers", "dt=*", "*.parquet"))
	if err != nil || len(files) == 0 {
		return err
	}
	sort.Strings(files)
	last := files[len(files)-1]
	rel, _ := filepath.Rel(dir, last)
	fmt.Printf("\n    rows of %s:\n", rel)
	return printRows(last, 6)
}

// printRows prints the first n rows of a flat Parquet file.
func printRows(path string, n int) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	pf, err := parquet.OpenFile(f, fi.Size())
	if err != nil {
		return err
	}
	cols := pf.Schema().Columns()
	r := parquet.NewReader(pf)
	defer r.Close()
	rows := make([]parquet.Row, n)
	got, _ := r.ReadRows(rows)
	for _, row := range rows[:got] {
		var parts []string
		byCol := map[int][]parquet.Value{}
		for _, v := range row {
			byCol[v.Column()] = append(byCol[v.Column()], v)
		}
		for i, path := range cols {
			name := path[0]
			if name == "_xid" || name == "_lsn" {
				continue
			}
			parts = append(parts, name+"="+render(pf.Schema(), path, byCol[i]))
		}
		fmt.Printf("      %s\n", strings.Join(parts, " "))
	}
	return nil
}

func render(s *parquet.Schema, path []string, vals []parquet.Value) string {
	leaf, _ := s.Lookup(path...)
	var out []string
	for _, v := range vals {
		if v.IsNull() {
			continue
		}
		out = append(out, renderValue(leaf.Node.Type().LogicalType(), v))
	}
	if len(path) > 1 { // a list
		return "[" + strings.Join(out, ",") + "]"
	}
	if len(out) == 0 {
		return "NULL"
	}
	return out[0]
}

func renderValue(lt *format.LogicalType, v parquet.Value) string {
	if lt == nil {
		return v.String()
	}
	switch t := lt.Value.(type) {
	case *format.TimestampType:
		return time.UnixMicro(v.Int64()).UTC().Format("2006-01-02T15:04:05.000000Z")
	case *format.DecimalType:
		var unscaled *big.Int
		switch v.Kind() {
		case parquet.Int32:
			unscaled = big.NewInt(int64(v.Int32()))
		case parquet.Int64:
			unscaled = big.NewInt(v.Int64())
		default:
			unscaled = new(big.Int).SetBytes(v.ByteArray()) // demo values are positive
		}
		r := new(big.Rat).SetFrac(unscaled, new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(t.Scale)), nil))
		return r.FloatString(int(t.Scale))
	case *format.StringType, *format.JsonType, *format.EnumType:
		return fmt.Sprintf("%q", v.ByteArray())
	}
	return v.String()
}

func prefixed(p string) *prefixWriter { return &prefixWriter{prefix: p} }

type prefixWriter struct {
	prefix string
	buf    []byte
}

func (w *prefixWriter) Write(b []byte) (int, error) {
	w.buf = append(w.buf, b...)
	for {
		i := strings.IndexByte(string(w.buf), '\n')
		if i < 0 {
			return len(b), nil
		}
		os.Stdout.WriteString(w.prefix + string(w.buf[:i+1]))
		w.buf = w.buf[i+1:]
	}
}

func repoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("find the repository: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("run the demo from inside the wal-cake repository")
	}
	return filepath.Dir(mod), nil
}
