package compact

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress/zstd"

	"github.com/wal-cake/wal-cake/scripts/testenv"
	"github.com/wal-cake/wal-cake/scripts/testenv/duck"
	"github.com/wal-cake/wal-cake/upload"
)

// TestMain stops the servers the tests share. It is the compact package's
// only TestMain: other test files of the package use it too.
func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func TestCopyDecoder(t *testing.T) {
	t.Parallel()
	type row struct {
		vals  []string
		nulls []bool
	}
	tests := []struct {
		name   string
		ncols  int
		writes []string
		want   []row
		err    bool
	}{
		{name: "plain", ncols: 3, writes: []string{"1\tabc\t\\N\n", "2\t\t x \n"},
			want: []row{{[]string{"1", "abc", ""}, []bool{false, false, true}}, {[]string{"2", "", " x "}, []bool{false, false, false}}}},
		{name: "escapes", ncols: 2, writes: []string{`a\tb\nc\\d\re` + "\t" + `\b\f\v\N\x41\101\x` + "\n"},
			want: []row{{[]string{"a\tb\nc\\d\re", "\b\f\vNAAx"}, []bool{false, false}}}},
		{name: "a null is only the whole field", ncols: 2, writes: []string{`\\N` + "\t" + `\N` + "\n"},
			want: []row{{[]string{`\N`, ""}, []bool{false, true}}}},
		{name: "rows split across writes", ncols: 2, writes: []string{"1\tone", "\n2", "\ttwo\n3\tth", "ree\n"},
			want: []row{{[]string{"1", "one"}, []bool{false, false}}, {[]string{"2", "two"}, []bool{false, false}}, {[]string{"3", "three"}, []bool{false, false}}}},
		{name: "utf-8", ncols: 1, writes: []string{"évènement ✓\n"},
			want: []row{{[]string{"évènement ✓"}, []bool{false}}}},
		{name: "no columns", ncols: 0, writes: []string{"\n\n"},
			want: []row{{[]string{}, []bool{}}, {[]string{}, []bool{}}}},
		{name: "too few columns", ncols: 3, writes: []string{"1\t2\n"}, err: true},
		{name: "too many columns", ncols: 1, writes: []string{"1\t2\n"}, err: true},
		{name: "trailing backslash", ncols: 1, writes: []string{"abc\\\n"}, err: true},
		{name: "unterminated row", ncols: 1, writes: []string{"abc"}, err: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var got []row
			d := newCopyDecoder(tt.ncols, func(fields [][]byte, nulls []bool) error {
				r := row{vals: []string{}, nulls: []bool{}}
				for i, f := range fields {
					r.vals = append(r.vals, string(f))
					r.nulls = append(r.nulls, nulls[i])
				}
				got = append(got, r)
				return nil
			})
			var err error
			for _, w := range tt.writes {
				if _, err = d.Write([]byte(w)); err != nil {
					break
				}
			}
			if err == nil {
				err = d.Close()
			}
			if tt.err {
				if err == nil {
					t.Fatalf("no error; rows %v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestParseTableName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, schema, table string
		err               bool
	}{
		{in: "accounts", schema: "public", table: "accounts"},
		{in: "Shop.Orders", schema: "shop", table: "orders"},
		{in: `"Shop"."Or.ders"`, schema: "Shop", table: "Or.ders"},
		{in: `"a""b".c`, schema: `a"b`, table: "c"},
		{in: "a.b.c", err: true},
		{in: `"a.b`, err: true},
		{in: "a.", err: true},
	}
	for _, tt := range tests {
		s, tb, err := parseTableName(tt.in)
		if (err != nil) != tt.err || s != tt.schema || tb != tt.table {
			t.Errorf("parseTableName(%q) = %q, %q, %v", tt.in, s, tb, err)
		}
	}
}

// bfEnv is a database with a publication and a slot, and a lake in a local
// directory.
type bfEnv struct {
	db    *testenv.Database
	store Store
	lake  string
	cfg   BackfillConfig
}

func newBFEnv(t *testing.T, schema string, tables ...string) *bfEnv {
	t.Helper()
	db := testenv.NewDatabase(t)
	db.Exec(t, schema)
	db.Exec(t, "CREATE PUBLICATION bf FOR TABLE "+strings.Join(tables, ", "))
	slot := db.Name // slots are per server, databases per test
	db.Exec(t, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", slot)
	lake := t.TempDir()
	store, err := upload.NewDir(lake)
	if err != nil {
		t.Fatal(err)
	}
	return &bfEnv{db: db, store: store, lake: lake, cfg: BackfillConfig{
		Store: store, ConnString: db.URL, Slot: slot, Publication: "bf",
		TempDir: t.TempDir(), Parallel: 2,
	}}
}

func (e *bfEnv) backfill(t *testing.T, change func(*BackfillConfig)) BackfillStats {
	t.Helper()
	cfg := e.cfg
	if change != nil {
		change(&cfg)
	}
	st, err := Backfill(context.Background(), cfg)
	if err != nil {
		t.Fatalf("backfill: %v", err)
	}
	return st
}

func (e *bfEnv) glob(table string) string {
	return filepath.Join(e.lake, table, "**", "*.parquet")
}

// sameResult compares a DuckDB query on the lake with a PostgreSQL query,
// both rendered as text.
func sameResult(t *testing.T, e *bfEnv, ddb *sql.DB, duckQuery, pgQuery string) {
	t.Helper()
	got := rowStrings(duck.Rows(t, ddb, duckQuery))
	conn := e.db.Conn(t)
	rows, err := conn.Query(context.Background(), pgQuery)
	if err != nil {
		t.Fatalf("%s: %v", pgQuery, err)
	}
	var want []string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, rowStrings([][]any{vals})...)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Errorf("lake has %d rows, PostgreSQL %d", len(got), len(want))
	}
	for i := 0; i < len(got) && i < len(want); i++ {
		if got[i] != want[i] {
			t.Errorf("row %d differs:\n lake: %s\n   pg: %s", i, got[i], want[i])
			return
		}
	}
}

func rowStrings(rows [][]any) []string {
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

// TestBackfillTypes backfills a table of many types in several chunks and
// reads every value back with DuckDB.
func TestBackfillTypes(t *testing.T) {
	t.Parallel()
	e := newBFEnv(t, `
		CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
		CREATE TABLE typed (
			id int8 PRIMARY KEY, b bool, i2 int2, i4 int4, f4 float4, f8 float8,
			n numeric(12,3), nu numeric, t text, vc varchar(20), ch char(5), bin bytea, u uuid,
			j json, jb jsonb, d date, tm time, ts timestamp, tz timestamptz,
			iv interval, m mood, ia int[], ta text[][]);
		INSERT INTO typed SELECT g, g % 2 = 0, g % 30000, g * 7, g / 3.0, g / 7.0,
			g * 1.125, g * 1000000000000.5, E'tab\there\nnewline\\back ' || g, 'v' || g, 'c' || (g % 100),
			decode(md5(g::text), 'hex'), md5(g::text)::uuid,
			json_build_object('g', g, 'q', 'quo"te'), jsonb_build_object('g', g),
			DATE '2000-01-01' + g, TIME '00:00:00' + g * interval '1 second',
			TIMESTAMP '2020-01-01' + g * interval '1 minute', TIMESTAMPTZ '2020-01-01 00:00:00+00' + g * interval '1 hour',
			g * interval '1 minute', (ARRAY['sad','ok','happy'])[g % 3 + 1]::mood,
			ARRAY[g, NULL, g + 1], ARRAY[ARRAY['a' || g, NULL], ARRAY['x,y', '"q"']]
		FROM generate_series(1, 2500) g;
		INSERT INTO typed (id) VALUES (0);`, "typed")
	st := e.backfill(t, func(c *BackfillConfig) { c.ChunkRows = 1000; c.Parallel = 3 })
	tb := st.Tables[0]
	if tb.Rows != 2501 || tb.ChunksDone != 3 || tb.Files != 3 || tb.Mode != modeKey || !tb.Done {
		t.Errorf("stats: %+v", tb)
	}

	ddb := duck.Open(t)
	src := fmt.Sprintf("read_parquet('%s', union_by_name=true, hive_partitioning=false)", e.glob("public.typed"))
	sameResult(t, e, ddb,
		`SELECT CAST(id AS VARCHAR), CAST(b AS VARCHAR), CAST(i2 AS VARCHAR), CAST(i4 AS VARCHAR), CASE WHEN f4 = trunc(f4) THEN CAST(CAST(f4 AS BIGINT) AS VARCHAR) ELSE CAST(f4 AS VARCHAR) END,
			CASE WHEN f8 = trunc(f8) THEN CAST(CAST(f8 AS BIGINT) AS VARCHAR) ELSE CAST(f8 AS VARCHAR) END,
			CAST(n AS VARCHAR), nu, t, vc, ch, hex(bin), CAST(u AS VARCHAR), CAST(j AS VARCHAR), CAST(jb AS VARCHAR),
			CAST(d AS VARCHAR), CAST(tm AS VARCHAR), strftime(ts, '%Y-%m-%d %H:%M:%S'), CAST(epoch_us(tz) AS VARCHAR),
			iv, m, CAST(ia AS VARCHAR), CAST(ta AS VARCHAR)
		FROM `+src+` ORDER BY id`,
		`SELECT id::text, b::text, i2::text, i4::text, f4::text, f8::text, n::text, nu::text, t, vc, ch, upper(encode(bin, 'hex')), u::text,
			j::text, jb::text, d::text, tm::text, to_char(ts, 'YYYY-MM-DD HH24:MI:SS'),
			((extract(epoch FROM tz) * 1000000)::bigint)::text, iv::text, m::text,
			replace(replace(replace(ia::text, '{', '['), '}', ']'), ',', ', '),
			CASE WHEN ta IS NULL THEN NULL ELSE '[[a' || id || ', NULL], [''x,y'', ''"q"'']]' END
		FROM typed ORDER BY typed.id`)

	// R rows: one snapshot LSN per chunk (chunks whose slots were created
	// at once may share one), one less than its consistent point;
	// (_commit_lsn, _seq) unique; no transaction; one schema version.
	rows := duck.Rows(t, ddb, `SELECT count(DISTINCT _commit_lsn) BETWEEN 1 AND 3, count(DISTINCT (_commit_lsn, _seq)), min(_op), max(_op),
		bool_and(_lsn = _commit_lsn + 1), max(_xid), coalesce(max(len(_unchanged)), 0) FROM `+src)
	if got := rowStrings(rows)[0]; got != "true|2501|R|R|true|0|0" {
		t.Errorf("metadata columns: %s", got)
	}
	if m, _ := filepath.Glob(filepath.Join(e.lake, "_walcake", "schemas", "public.typed", "*.json")); len(m) != 1 {
		t.Errorf("schema versions: %v", m)
	}
	// Every manifest is a backfill manifest, never the stream's head.
	head, err := readHead(context.Background(), e.store)
	if err != nil || head.Key != "" {
		t.Errorf("stream head after a backfill: %+v, %v", head, err)
	}
	if m, _ := filepath.Glob(filepath.Join(e.lake, "_walcake", "manifests", "*-backfill-public.typed-000001-*.json")); len(m) != 3 {
		t.Errorf("backfill manifests: %v", m)
	}

	// A second backfill skips the table; --again backfills it anew.
	st = e.backfill(t, nil)
	if !st.Tables[0].Skipped || st.Tables[0].Rows != 0 {
		t.Errorf("second backfill: %+v", st.Tables[0])
	}
	st = e.backfill(t, func(c *BackfillConfig) { c.Again = true; c.ChunkRows = 5000 })
	if st.Tables[0].Run != "000002" || st.Tables[0].Rows != 2501 {
		t.Errorf("backfill again: %+v", st.Tables[0])
	}
}

// TestBackfillResume interrupts a backfill at each step of a chunk's commit
// and resumes it: every key has exactly one R row of the resumed run.
func TestBackfillResume(t *testing.T) {
	t.Parallel()
	for _, fp := range BackfillFailpoints {
		t.Run(fp, func(t *testing.T) {
			t.Parallel()
			e := newBFEnv(t, `CREATE TABLE r (a int, b text, v text, PRIMARY KEY (a, b));
				INSERT INTO r SELECT g / 10, 'k' || (g % 10), repeat('x', g % 50) FROM generate_series(1, 3000) g;`, "r")
			ctx, cancel := context.WithCancelCause(context.Background())
			var hits atomic.Int32
			cfg := e.cfg
			cfg.ChunkRows = 400
			cfg.Failpoint = func(name string) {
				if name == fp && hits.Add(1) == 3 {
					cancel(errors.New("interrupted by the test"))
				}
			}
			if _, err := Backfill(ctx, cfg); err == nil {
				t.Fatal("the interrupted backfill reported success")
			}
			st := e.backfill(t, nil)
			if st.Tables[0].Run != "000001" || !st.Tables[0].Done {
				t.Errorf("resumed backfill: %+v", st.Tables[0])
			}
			ddb := duck.Open(t)
			src := fmt.Sprintf("read_parquet('%s', union_by_name=true, hive_partitioning=false)", e.glob("public.r"))
			rows := duck.Rows(t, ddb, "SELECT count(*), count(DISTINCT (a, b)) FROM "+src)
			if got := rowStrings(rows)[0]; got != "3000|3000" {
				t.Errorf("rows, keys: %s, want 3000|3000", got)
			}
			sameResult(t, e, ddb, "SELECT a, b, v FROM "+src+" ORDER BY a, b", "SELECT a::int8, b, v FROM r ORDER BY a, b")
			// Every data file is named by a manifest.
			named := map[string]bool{}
			manifests, _ := filepath.Glob(filepath.Join(e.lake, "_walcake", "manifests", "*.json"))
			for _, m := range manifests {
				b, _ := os.ReadFile(m)
				for _, f := range parseManifestFiles(t, b) {
					named[f] = true
				}
			}
			files, _ := filepath.Glob(filepath.Join(e.lake, "public.r", "*", "*.parquet"))
			for _, f := range files {
				rel, _ := filepath.Rel(e.lake, f)
				if !named[filepath.ToSlash(rel)] {
					t.Errorf("%s is in no manifest", rel)
				}
			}
		})
	}
}

func parseManifestFiles(t *testing.T, b []byte) []string {
	t.Helper()
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range m.Files {
		out = append(out, f.Key)
	}
	return out
}

// TestBackfillKeyless reads a table without a key in ctid ranges of one
// snapshot, committed by one manifest; an interrupted run is undone and
// started over.
func TestBackfillKeyless(t *testing.T) {
	t.Parallel()
	e := newBFEnv(t, `CREATE TABLE logs (n int, msg text);
		ALTER TABLE logs REPLICA IDENTITY FULL;
		INSERT INTO logs SELECT g % 100, 'line ' || (g % 7) FROM generate_series(1, 20000) g;
		ANALYZE logs;`, "logs")

	ctx, cancel := context.WithCancelCause(context.Background())
	cfg := e.cfg
	cfg.ChunkRows = 3000
	var hits atomic.Int32
	cfg.Failpoint = func(name string) {
		if name == FailBackfillAfterUpload && hits.Add(1) == 2 {
			cancel(errors.New("interrupted by the test"))
		}
	}
	if _, err := Backfill(ctx, cfg); err == nil {
		t.Fatal("the interrupted backfill reported success")
	}
	st := e.backfill(t, func(c *BackfillConfig) { c.ChunkRows = 3000 })
	tb := st.Tables[0]
	if tb.Mode != modeCTID || tb.Run != "000002" || tb.Rows != 20000 || tb.ChunksDone < 5 {
		t.Errorf("stats: %+v", tb)
	}
	ddb := duck.Open(t)
	src := fmt.Sprintf("read_parquet('%s', union_by_name=true, hive_partitioning=false)", e.glob("public.logs"))
	sameResult(t, e, ddb,
		"SELECT CAST(n AS BIGINT), msg, count(*) FROM "+src+" GROUP BY ALL ORDER BY ALL",
		"SELECT n::int8, msg, count(*) FROM logs GROUP BY 1, 2 ORDER BY 1, 2")
	rows := duck.Rows(t, ddb, "SELECT count(DISTINCT _commit_lsn), count(DISTINCT (_commit_lsn, _seq)) FROM "+src)
	if got := rowStrings(rows)[0]; got != "1|20000" {
		t.Errorf("snapshots, distinct (_commit_lsn, _seq): %s", got)
	}
	if m, _ := filepath.Glob(filepath.Join(e.lake, "_walcake", "manifests", "*-backfill-public.logs-000002.json")); len(m) != 1 {
		t.Errorf("manifests: %v", m)
	}
	if m, _ := filepath.Glob(filepath.Join(e.lake, "_walcake", "manifests", "*-backfill-public.logs-000001*.json")); len(m) != 0 {
		t.Errorf("the interrupted run committed: %v", m)
	}
}

// TestBackfillRefusals: no slot, a table outside the publication.
func TestBackfillRefusals(t *testing.T) {
	t.Parallel()
	e := newBFEnv(t, `CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);`, "a")
	cfg := e.cfg
	cfg.Tables = []string{"public.b"}
	if _, err := Backfill(context.Background(), cfg); !errors.Is(err, ErrNotPublished) {
		t.Errorf("unpublished table: %v", err)
	}
	cfg = e.cfg
	cfg.Slot = "nosuch"
	if _, err := Backfill(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing slot: %v", err)
	}
}

var _ io.Writer = (*copyDecoder)(nil)

// BenchmarkBackfillRows measures the client side of a chunk: COPY text rows
// of a pgbench_accounts-like table decoded, converted and written as ZSTD
// Parquet to a local file (no server).
func BenchmarkBackfillRows(b *testing.B) {
	rel := &pglogrepl.RelationMessage{RelationID: 1, Namespace: "public", RelationName: "pgbench_accounts", ReplicaIdentity: 'd',
		Columns: []*pglogrepl.RelationMessageColumn{
			{Flags: 1, Name: "aid", DataType: 23, TypeModifier: -1},
			{Name: "bid", DataType: 23, TypeModifier: -1},
			{Name: "abalance", DataType: 23, TypeModifier: -1},
			{Name: "filler", DataType: 1042, TypeModifier: 88},
		}}
	ts, err := newTableSchema(context.Background(), newCatalog(nil), rel)
	if err != nil {
		b.Fatal(err)
	}
	ts.Version = "0000000000000001"
	const rows = 100_000
	var text []byte
	filler := strings.Repeat(" ", 84)
	for i := 1; i <= rows; i++ {
		text = fmt.Appendf(text, "%d\t%d\t0\t%s\n", i, (i-1)/100000+1, filler)
	}
	dir := b.TempDir()
	codec := &zstd.Codec{Level: zstd.SpeedDefault} // shared, as Backfill does
	b.ResetTimer()
	for range b.N {
		w := &bfWorker{}
		t := &bfTable{}
		fw, err := newFileWriter(dir, ts, time.Now(), 0, parquet.Compression(codec))
		if err != nil {
			b.Fatal(err)
		}
		rw := w.rowWriter(t, ts, fw, chunkRead{commit: 7, consistent: 8, at: time.Now()}, 1)
		dec := newCopyDecoder(len(ts.Columns), rw.row)
		for p := text; len(p) > 0; {
			i := bytes.IndexByte(p, '\n') + 1
			if _, err := dec.Write(p[:i]); err != nil {
				b.Fatal(err)
			}
			p = p[i:]
		}
		if err := rw.flush(); err != nil {
			b.Fatal(err)
		}
		path, _, err := fw.finish()
		if err != nil {
			b.Fatal(err)
		}
		os.Remove(path)
	}
	b.ReportMetric(float64(b.N*rows)/b.Elapsed().Seconds(), "rows/s")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*rows), "ns/row")
}

// TestBackfillMemoryBounded backfills a table far larger than a chunk and
// watches the heap: it stays bounded by chunk size and parallelism, not by
// the table. Not parallel, so that no other test shares the heap.
func TestBackfillMemoryBounded(t *testing.T) {
	e := newBFEnv(t, `CREATE TABLE wide (id int PRIMARY KEY, a text, b text);
		INSERT INTO wide SELECT g, repeat(md5(g::text), 24), repeat(md5((g * 7)::text), 24) FROM generate_series(1, 200000) g;`, "wide")
	var size int64
	e.db.QueryRow(t, "SELECT pg_table_size('wide')").Scan(&size)

	// The live heap as of each garbage collection: what the backfill holds,
	// not the garbage it has not collected yet.
	var peak, peakAlloc atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/heap/objects:bytes"}}
		for {
			metrics.Read(sample)
			if v := sample[0].Value.Uint64(); v > peak.Load() {
				peak.Store(v)
			}
			if v := sample[1].Value.Uint64(); v > peakAlloc.Load() {
				peakAlloc.Store(v)
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	runtime.GC()
	base := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(base)
	st := e.backfill(t, func(c *BackfillConfig) { c.ChunkRows = 2000; c.Parallel = 2 })
	close(stop)
	<-sampled
	grew := int64(peak.Load()) - int64(base[0].Value.Uint64())
	t.Logf("table %d MiB, %d rows in %d chunks; live heap grew by at most %d MiB (heap objects, garbage included, peaked at %d MiB)",
		size>>20, st.Rows(), st.Tables[0].ChunksDone, grew>>20, peakAlloc.Load()>>20)
	if st.Rows() != 200000 {
		t.Fatalf("rows: %d", st.Rows())
	}
	// A bound that does not depend on the table: ZSTD encoders and a few
	// row groups in flight per worker.
	if limit := int64(128 << 20); grew > limit || grew > size/3 {
		t.Errorf("the heap grew by %d MiB backfilling a %d MiB table in 2,000-row chunks", grew>>20, size>>20)
	}
}

// TestBackfillRecreatedTable: a table dropped and re-created under the same
// name is another table: its backfill is not skipped as done, and the old
// table's interrupted run is abandoned without leaving files behind.
func TestBackfillRecreatedTable(t *testing.T) {
	t.Parallel()
	e := newBFEnv(t, `CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10);`, "t")
	if st := e.backfill(t, nil); st.Tables[0].Rows != 10 {
		t.Fatalf("first backfill: %+v", st.Tables[0])
	}
	e.db.Exec(t, `DROP TABLE t; CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 20);
		ALTER PUBLICATION bf ADD TABLE t;`)
	// Interrupted after a chunk's upload, before its manifest.
	ctx, cancel := context.WithCancelCause(context.Background())
	cfg := e.cfg
	cfg.ChunkRows, cfg.Parallel, cfg.Again = 3, 1, true
	cfg.Failpoint = func(name string) {
		if name == FailBackfillAfterUpload {
			cancel(errors.New("interrupted by the test"))
		}
	}
	if _, err := Backfill(ctx, cfg); err == nil {
		t.Fatal("the interrupted backfill reported success")
	}
	e.db.Exec(t, `DROP TABLE t; CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 30);
		ALTER PUBLICATION bf ADD TABLE t;`)
	st := e.backfill(t, nil)
	if tb := st.Tables[0]; tb.Skipped || tb.Run != "000003" || tb.Rows != 30 {
		t.Errorf("backfill of the re-created table: %+v", tb)
	}
	named := map[string]bool{}
	manifests, _ := filepath.Glob(filepath.Join(e.lake, "_walcake", "manifests", "*.json"))
	for _, m := range manifests {
		b, _ := os.ReadFile(m)
		for _, f := range parseManifestFiles(t, b) {
			named[f] = true
		}
	}
	files, _ := filepath.Glob(filepath.Join(e.lake, "public.t", "*", "*.parquet"))
	for _, f := range files {
		rel, _ := filepath.Rel(e.lake, f)
		if !named[filepath.ToSlash(rel)] {
			t.Errorf("%s is in no manifest", rel)
		}
	}
	var r bfRunRecord
	if err := getJSON(context.Background(), e.store, runKey("public.t", "000002"), &r); err != nil || r.State != runAbandoned {
		t.Errorf("the interrupted run: %+v, %v", r, err)
	}
}

// TestBackfillSampledPlan: a table of many chunks gets its bounds from a
// sample of its blocks; chunks hold about --chunk-rows rows, and every row
// is read once.
func TestBackfillSampledPlan(t *testing.T) {
	t.Parallel()
	e := newBFEnv(t, `CREATE TABLE s (k text PRIMARY KEY, v int);
		INSERT INTO s SELECT md5(g::text), g FROM generate_series(1, 100000) g;`, "s")
	e.db.Exec(t, "ANALYZE s")
	st := e.backfill(t, func(c *BackfillConfig) { c.ChunkRows = 10000 })
	if tb := st.Tables[0]; tb.Rows != 100000 || tb.ChunksDone < 6 || tb.ChunksDone > 16 {
		t.Errorf("stats: %+v", tb)
	}
	ddb := duck.Open(t)
	src := fmt.Sprintf("read_parquet('%s', union_by_name=true, hive_partitioning=false)", e.glob("public.s"))
	rows := duck.Rows(t, ddb, "SELECT count(*), count(DISTINCT k), min(n), max(n) FROM (SELECT k, count(*) OVER (PARTITION BY _seq >> 32) AS n FROM "+src+")")
	got := rowStrings(rows)[0]
	var n, distinct, smallest, largest int64
	fmt.Sscanf(strings.ReplaceAll(got, "|", " "), "%d %d %d %d", &n, &distinct, &smallest, &largest)
	t.Logf("rows, keys, smallest and largest chunk: %s", got)
	if n != 100000 || distinct != 100000 || smallest < 2000 || largest > 30000 {
		t.Errorf("rows, keys, smallest and largest chunk: %s", got)
	}
}
