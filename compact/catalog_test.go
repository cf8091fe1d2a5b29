package compact

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

func TestCatalogBuiltins(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cat := newCatalog(nil)
	tests := []struct {
		oid    uint32
		typmod int32
		want   pgType
	}{
		{pgtype.Int4OID, -1, pgType{OID: pgtype.Int4OID, Typmod: -1, Name: "int4"}},
		{pgtype.NumericOID, numericTypmod(10, 2), pgType{OID: pgtype.NumericOID, Typmod: numericTypmod(10, 2), Name: "numeric"}},
		{pgtype.Int4ArrayOID, -1, pgType{OID: pgtype.Int4ArrayOID, Typmod: -1, Dims: 1, Elem: pgtype.Int4OID, Name: "_int4"}},
		{pgtype.NumericArrayOID, numericTypmod(5, 2), pgType{OID: pgtype.NumericArrayOID, Typmod: numericTypmod(5, 2), Dims: 1, Elem: pgtype.NumericOID, Name: "_numeric"}},
		{pgtype.TimestamptzArrayOID, -1, pgType{OID: pgtype.TimestamptzArrayOID, Typmod: -1, Dims: 1, Elem: pgtype.TimestamptzOID, Name: "_timestamptz"}},
		{pgtype.BoxArrayOID, -1, pgType{OID: pgtype.BoxArrayOID, Typmod: -1, Dims: 1, Elem: pgtype.BoxOID, Name: "_box"}},
		{pgtype.IntervalOID, -1, pgType{OID: pgtype.IntervalOID, Typmod: -1, Name: "interval"}},
		{70000, -1, pgType{OID: 70000, Typmod: -1, Name: "oid 70000"}}, // unknown without a server: text
		{22, -1, pgType{OID: 22, Typmod: -1, Name: "oid 22"}},          // int2vector
	}
	for _, tt := range tests {
		got, err := cat.columnType(ctx, 12345, "c", tt.oid, tt.typmod)
		if err != nil {
			t.Fatal(err)
		}
		if got != tt.want {
			t.Errorf("columnType(%d, %d) = %+v, want %+v", tt.oid, tt.typmod, got, tt.want)
		}
	}
}

// startTypemapPostgres starts a throwaway PostgreSQL 15 and returns a
// connection string. Without the server binaries it skips, unless CI=true.
func startTypemapPostgres(t *testing.T) string {
	t.Helper()
	bin := "/usr/lib/postgresql/15/bin"
	if _, err := os.Stat(filepath.Join(bin, "initdb")); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL server binaries: %v", err)
		}
		t.Skipf("no PostgreSQL server binaries: %v", err)
	}
	// initdb refuses root: run the server as postgres, in a directory it
	// can enter (t.TempDir's parent is private to us).
	dir, err := os.MkdirTemp("", "walcake-typemap-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	run := func(name string, args ...string) {
		t.Helper()
		cmd := exec.Command(filepath.Join(bin, name), args...)
		if os.Geteuid() == 0 {
			cmd = exec.Command("runuser", append([]string{"-u", "postgres", "--", filepath.Join(bin, name)}, args...)...)
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", name, err, out)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	data := filepath.Join(dir, "data")
	run("initdb", "--no-sync", "-A", "trust", "-U", "postgres", "-D", data)
	run("pg_ctl", "-w", "-D", data, "-l", filepath.Join(dir, "log"), "-o",
		fmt.Sprintf("-c port=%d -c listen_addresses='' -k %s -c fsync=off", port, dir), "start")
	t.Cleanup(func() {
		cmd := exec.Command("runuser", "-u", "postgres", "--", filepath.Join(bin, "pg_ctl"), "-D", data, "-m", "immediate", "stop")
		if os.Geteuid() != 0 {
			cmd = exec.Command(filepath.Join(bin, "pg_ctl"), "-D", data, "-m", "immediate", "stop")
		}
		cmd.Run()
	})
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres", dir, port)
}

// countingQuerier counts the queries that reach the server.
type countingQuerier struct {
	q querier
	n atomic.Int64
}

func (c *countingQuerier) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	c.n.Add(1)
	return c.q.Query(ctx, sql, args...)
}

func TestCatalogPostgres(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, startTypemapPostgres(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	mustExec := func(sql string) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	mustExec(`CREATE EXTENSION citext`)
	mustExec(`CREATE TYPE mood AS ENUM ('sad', 'happy')`)
	mustExec(`CREATE DOMAIN posint AS int4 CHECK (VALUE > 0)`)
	mustExec(`CREATE DOMAIN money2 AS numeric(10,2)`)
	mustExec(`CREATE DOMAIN money2b AS money2`)
	mustExec(`CREATE DOMAIN intmatrix AS int[][]`)
	mustExec(`CREATE TYPE pair AS (a int, b text)`)
	mustExec(`CREATE TABLE t (
		a int4, b int[], c int[][], d text[][][], e numeric(10,2)[], f mood, g mood[], h posint,
		i money2, j money2b, k money2[], l intmatrix, m citext, n citext[], o box[], p int2vector,
		q pair, r pair[], s numeric, u numeric(12,3), v varchar(5)[], w timestamptz[], x jsonb)`)
	mustExec(`INSERT INTO t VALUES (1, '{1,NULL}', '{{1,2},{3,4}}', '{{{"a b",NULL}}}', '{1.5,NaN}', 'happy',
		'{sad,happy}', 5, 12.34, 56.78, '{1.10,NULL}', '{{7}}', 'MiXed', '{"A,b",c}', '{(1,2),(3,4);(5,6),(7,8)}',
		'1 2 3', '(1,"x ""y""")', ARRAY['(2,z)'::pair, NULL], 'NaN', -123456789.012, '{ab,"c d"}',
		'{"2024-01-01 00:00:00+00",-infinity}', '{"k": [1, "\u00e9"]}')`)
	mustExec(`CREATE TABLE t2 AS SELECT b FROM t`)

	oidOf := func(name string) uint32 {
		var oid uint32
		if err := conn.QueryRow(ctx, "SELECT $1::regtype::oid", name).Scan(&oid); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return oid
	}
	mood, pair, citext := oidOf("mood"), oidOf("pair"), oidOf("citext")
	want := map[string]pgType{
		"a": {OID: pgtype.Int4OID, Typmod: -1, Name: "int4"},
		"b": {OID: pgtype.Int4ArrayOID, Typmod: -1, Dims: 1, Elem: pgtype.Int4OID, Name: "_int4"},
		"c": {OID: pgtype.Int4ArrayOID, Typmod: -1, Dims: 2, Elem: pgtype.Int4OID, Name: "_int4"},
		"d": {OID: pgtype.TextArrayOID, Typmod: -1, Dims: 3, Elem: pgtype.TextOID, Name: "_text"},
		"e": {OID: pgtype.NumericArrayOID, Typmod: numericTypmod(10, 2), Dims: 1, Elem: pgtype.NumericOID, Name: "_numeric"},
		"f": {OID: mood, Typmod: -1, Name: "mood"},
		"g": {OID: oidOf("mood[]"), Typmod: -1, Dims: 1, Elem: mood, Name: "_mood"},
		"h": {OID: pgtype.Int4OID, Typmod: -1, Name: "int4"},
		"i": {OID: pgtype.NumericOID, Typmod: numericTypmod(10, 2), Name: "numeric"},
		"j": {OID: pgtype.NumericOID, Typmod: numericTypmod(10, 2), Name: "numeric"},
		"k": {OID: oidOf("money2[]"), Typmod: numericTypmod(10, 2), Dims: 1, Elem: pgtype.NumericOID, Name: "_money2"},
		"l": {OID: pgtype.Int4ArrayOID, Typmod: -1, Dims: 2, Elem: pgtype.Int4OID, Name: "_int4"},
		"m": {OID: citext, Typmod: -1, Name: "citext"},
		"n": {OID: oidOf("citext[]"), Typmod: -1, Dims: 1, Elem: citext, Name: "_citext"},
		"o": {OID: pgtype.BoxArrayOID, Typmod: -1, Dims: 1, Elem: pgtype.BoxOID, Name: "_box"},
		"p": {OID: 22, Typmod: -1, Name: "int2vector"},
		"q": {OID: pair, Typmod: -1, Name: "pair"},
		"r": {OID: oidOf("pair[]"), Typmod: -1, Dims: 1, Elem: pair, Name: "_pair"},
		"s": {OID: pgtype.NumericOID, Typmod: -1, Name: "numeric"},
		"u": {OID: pgtype.NumericOID, Typmod: numericTypmod(12, 3), Name: "numeric"},
		"v": {OID: pgtype.VarcharArrayOID, Typmod: 9, Dims: 1, Elem: pgtype.VarcharOID, Name: "_varchar"},
		"w": {OID: pgtype.TimestamptzArrayOID, Typmod: -1, Dims: 1, Elem: pgtype.TimestamptzOID, Name: "_timestamptz"},
		"x": {OID: pgtype.JSONBOID, Typmod: -1, Name: "jsonb"},
	}

	q := &countingQuerier{q: conn}
	cat := newCatalog(q)
	type attr struct {
		relid  uint32
		name   string
		typ    uint32
		typmod int32
	}
	attrs := func(table string) []attr {
		rows, err := conn.Query(ctx, `SELECT attrelid, attname::text, atttypid, atttypmod FROM pg_attribute
			WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum`, table)
		if err != nil {
			t.Fatal(err)
		}
		var out []attr
		var a attr
		if _, err := pgx.ForEachRow(rows, []any{&a.relid, &a.name, &a.typ, &a.typmod}, func() error {
			out = append(out, a)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	cols := attrs("t")
	for _, a := range cols {
		got, err := cat.columnType(ctx, a.relid, a.name, a.typ, a.typmod)
		if err != nil {
			t.Fatalf("%s: %v", a.name, err)
		}
		if got != want[a.name] {
			t.Errorf("column %s: got %+v, want %+v", a.name, got, want[a.name])
		}
	}

	// Cached: asking again reaches the server no more.
	n := q.n.Load()
	for _, a := range cols {
		if _, err := cat.columnType(ctx, a.relid, a.name, a.typ, a.typmod); err != nil {
			t.Fatal(err)
		}
	}
	if got := q.n.Load(); got != n {
		t.Errorf("second pass ran %d queries, want 0", got-n)
	}

	// Every value PostgreSQL prints for these columns converts.
	for _, a := range cols {
		typ, _ := cat.columnType(ctx, a.relid, a.name, a.typ, a.typmod)
		var text *string
		if err := conn.QueryRow(ctx, fmt.Sprintf("SELECT %s::text FROM t", pgx.Identifier{a.name}.Sanitize())).Scan(&text); err != nil {
			t.Fatal(err)
		}
		c := newConverter(typ)
		if _, err := c.appendText(nil, []byte(*text), false, 0); err != nil {
			t.Errorf("column %s: %v", a.name, err)
		}
	}

	// CREATE TABLE AS leaves attndims 0: one dimension.
	for _, a := range attrs("t2") {
		got, err := cat.columnType(ctx, a.relid, a.name, a.typ, a.typmod)
		if err != nil {
			t.Fatal(err)
		}
		if got.Dims != 1 || got.Elem != pgtype.Int4OID {
			t.Errorf("t2.b: got %+v, want one dimension of int4", got)
		}
	}

	// ALTER COLUMN TYPE changes attndims under the same type OID: forget
	// drops the cached value.
	mustExec(`ALTER TABLE t ALTER COLUMN b TYPE int[][]`)
	b := cols[1]
	cat.forget(b.relid)
	got, err := cat.columnType(ctx, b.relid, b.name, b.typ, b.typmod)
	if err != nil {
		t.Fatal(err)
	}
	if got.Dims != 2 {
		t.Errorf("after ALTER: dims %d, want 2", got.Dims)
	}

	// A type dropped since the change was captured reads as text.
	if got, err := cat.columnType(ctx, 1, "gone", 4000000000, -1); err != nil || got.Dims != 0 || got.Name != "oid 4000000000" {
		t.Errorf("missing type: got %+v, %v", got, err)
	}

	// Errors from the server are returned, wrapped.
	conn2, err := pgx.Connect(ctx, conn.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	conn2.Close(ctx)
	if _, err := newCatalog(conn2).columnType(ctx, 1, "x", 4000000001, -1); err == nil || !strings.Contains(err.Error(), "compact: catalog: type 4000000001") {
		t.Errorf("closed connection: got %v", err)
	}
}

// TestTextFormatsPostgres checks the parsers against what a real server
// prints, in several time zones (old dates carry offsets with seconds) and
// with exact references computed by the server.
func TestTextFormatsPostgres(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, startTypemapPostgres(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for _, s := range []string{"SET DateStyle = ISO", "SET IntervalStyle = postgres", "SET extra_float_digits = 3"} {
		if _, err := conn.Exec(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	// rows runs a query returning (text, reference) pairs.
	rows := func(sql string, args ...any) [][2]string {
		t.Helper()
		r, err := conn.Query(ctx, sql, args...)
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		var out [][2]string
		var a, b string
		if _, err := pgx.ForEachRow(r, []any{&a, &b}, func() error {
			out = append(out, [2]string{a, b})
			return nil
		}); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return out
	}
	checked := 0

	timestamps := []string{
		"2024-01-01 00:00:00", "1900-01-01 00:00:00", "1800-06-01 12:34:56.789", "0044-03-15 12:00:00 BC",
		"4714-11-24 00:00:00 BC", "0001-01-01 00:00:00 BC", "0001-01-01 00:00:00", "9999-12-31 23:59:59.999999",
		"1969-12-31 23:59:59.999999", "2000-02-29 01:02:03.000001", "1582-10-10 00:00:00", "200000-06-30 12:00:00",
	}
	for _, zone := range []string{"UTC", "Asia/Kolkata", "America/St_Johns", "Europe/Amsterdam", "Pacific/Chatham", "America/Sao_Paulo"} {
		if _, err := conn.Exec(ctx, "SET TimeZone = "+pgQuoteLiteral(zone)); err != nil {
			t.Fatal(err)
		}
		for _, r := range rows(`SELECT v::text, (extract(epoch FROM v) * 1000000)::int8::text
			FROM unnest($1::text[]) s, LATERAL (SELECT (s || ' UTC')::timestamptz AS v) x`, timestamps) {
			got, err := parseTextTimestamp([]byte(r[0]), true)
			if err != nil || strconv.FormatInt(got, 10) != r[1] {
				t.Errorf("timestamptz %q in %s: got %d, %v; want %s", r[0], zone, got, err, r[1])
			}
			checked++
		}
		// Local times in the zone, which may fall on odd offsets (the first
		// UTC day is out of range east of Greenwich).
		local := append([]string{"4714-11-25 00:00:00 BC"}, timestamps...)
		local = slices.DeleteFunc(local, func(s string) bool { return s == "4714-11-24 00:00:00 BC" })
		for _, r := range rows(`SELECT v::text, (extract(epoch FROM v) * 1000000)::int8::text
			FROM unnest($1::timestamptz[]) v`, local) {
			got, err := parseTextTimestamp([]byte(r[0]), true)
			if err != nil || strconv.FormatInt(got, 10) != r[1] {
				t.Errorf("timestamptz %q in %s: got %d, %v; want %s", r[0], zone, got, err, r[1])
			}
			checked++
		}
	}
	for _, r := range rows(`SELECT v::text, (extract(epoch FROM v) * 1000000)::int8::text FROM unnest($1::timestamp[]) v`, timestamps) {
		got, err := parseTextTimestamp([]byte(r[0]), false)
		if err != nil || strconv.FormatInt(got, 10) != r[1] {
			t.Errorf("timestamp %q: got %d, %v; want %s", r[0], got, err, r[1])
		}
		checked++
	}
	for _, r := range rows(`SELECT v::text, (v - date '1970-01-01')::text FROM unnest($1::date[]) v`,
		[]string{"1970-01-01", "0044-03-15 BC", "4714-11-24 BC", "5874897-12-31", "2000-02-29", "0001-02-29 BC", "1600-03-01"}) {
		got, err := parseTextDate([]byte(r[0]))
		if err != nil || strconv.Itoa(int(got)) != r[1] {
			t.Errorf("date %q: got %d, %v; want %s", r[0], got, err, r[1])
		}
		checked++
	}
	for _, r := range rows(`SELECT v::text, (extract(epoch FROM v) * 1000000)::int8::text FROM unnest($1::time[]) v`,
		[]string{"00:00:00", "24:00:00", "23:59:59.999999", "12:00:00.5", "01:02:03.000001"}) {
		got, err := parseTextTime([]byte(r[0]))
		if err != nil || strconv.FormatInt(got, 10) != r[1] {
			t.Errorf("time %q: got %d, %v; want %s", r[0], got, err, r[1])
		}
		checked++
	}
	// The infinities print as the words the parsers expect.
	for _, r := range rows(`SELECT v, v FROM unnest(ARRAY['infinity'::date::text, '-infinity'::date::text,
		'infinity'::timestamp::text, '-infinity'::timestamptz::text]) v`) {
		if r[0] != "infinity" && r[0] != "-infinity" {
			t.Errorf("infinity prints as %q", r[0])
		}
	}

	// numeric(p,s): the unscaled integer, computed by the server.
	for _, ps := range [][2]int{{5, 2}, {9, 0}, {18, 4}, {20, 5}, {38, 0}, {38, 38}, {38, 10}, {3, 5}, {2, -3}} {
		p, s := ps[0], ps[1]
		tm := numericTypmod(p, s)
		dp, ds, _ := decimalOf(tm)
		typ := fmt.Sprintf("numeric(%d,%d)", p, s)
		// x × the largest value of the type, for x in [-1, 1].
		for _, r := range rows(fmt.Sprintf(`SELECT v::text, trunc(v * 10::numeric ^ (%d))::text
			FROM (SELECT (x * %s::numeric)::%s AS v
			      FROM unnest(ARRAY[0, 0.5, -0.123456789, 0.999999, -1, 1]::numeric[]) x) y`, ds, maxNumeric(p, s), typ)) {
			mag, neg, err := parseTextDecimal([]byte(r[0]), dp, ds)
			got := new(big.Int).SetUint64(mag.hi)
			got.Lsh(got, 64).Or(got, new(big.Int).SetUint64(mag.lo))
			if neg {
				got.Neg(got)
			}
			if err != nil || got.String() != r[1] {
				t.Errorf("%s %q: got %s, %v; want %s", typ, r[0], got, err, r[1])
			}
			checked++
		}
	}

	// Floats: the exact bits.
	for _, r := range rows(`SELECT v::text, encode(float8send(v), 'hex') FROM unnest(ARRAY['NaN', 'Infinity', '-Infinity', '-0',
		'1.7976931348623157e308', '5e-324', '0.1', '-2.2250738585072014e-308', '123456789.123456789']::float8[]) v`) {
		f, err := parseTextFloat([]byte(r[0]), 64)
		if err != nil || fmt.Sprintf("%016x", math.Float64bits(f)) != r[1] {
			t.Errorf("float8 %q: got %016x, %v; want %s", r[0], math.Float64bits(f), err, r[1])
		}
		checked++
	}
	for _, r := range rows(`SELECT v::text, encode(float4send(v), 'hex') FROM unnest(ARRAY['NaN', 'Infinity', '-Infinity', '-0',
		'3.4028235e38', '1e-45', '0.1', '1.17549435e-38', '16777217']::float4[]) v`) {
		f, err := parseTextFloat([]byte(r[0]), 32)
		if err != nil || fmt.Sprintf("%08x", math.Float32bits(float32(f))) != r[1] {
			t.Errorf("float4 %q: got %08x, %v; want %s", r[0], math.Float32bits(float32(f)), err, r[1])
		}
		checked++
	}

	// bytea in both output formats.
	for _, format := range []string{"hex", "escape"} {
		if _, err := conn.Exec(ctx, "SET bytea_output = "+format); err != nil {
			t.Fatal(err)
		}
		for _, r := range rows(`SELECT v::text, encode(v, 'hex') FROM unnest(ARRAY['\x'::bytea, '\x00', '\x5c78',
			'\x00ff7f805c22270a', 'plain text'::bytea]) v`) {
			got, err := parseTextBytea([]byte(r[0]))
			if err != nil || fmt.Sprintf("%x", got) != r[1] {
				t.Errorf("bytea (%s) %q: got %x, %v; want %s", format, r[0], got, err, r[1])
			}
			checked++
		}
	}

	// Arrays: the leaf values in order, against the server's own unnest.
	arrays := []struct {
		typ   pgType
		value string
	}{
		{pgType{OID: pgtype.TextArrayOID, Typmod: -1, Dims: 1, Elem: pgtype.TextOID}, `ARRAY['a,b', 'c"d', 'e\f', NULL, 'NULL', '', ' x ', '{}', 'é']`},
		{pgType{OID: pgtype.TextArrayOID, Typmod: -1, Dims: 2, Elem: pgtype.TextOID}, `ARRAY[['a', NULL], ['{', '}']]`},
		{pgType{OID: pgtype.Int4ArrayOID, Typmod: -1, Dims: 1, Elem: pgtype.Int4OID}, `'[-2:0]={1,NULL,3}'::int[]`},
		{pgType{OID: pgtype.ByteaArrayOID, Typmod: -1, Dims: 1, Elem: pgtype.ByteaOID}, `ARRAY['\x00ff'::bytea, NULL, '\x5c']`},
		{pgType{OID: pgtype.BoxArrayOID, Typmod: -1, Dims: 1, Elem: pgtype.BoxOID}, `ARRAY['(1,2),(3,4)'::box, '(0,0),(1,1)']`},
		{pgType{OID: pgtype.JSONBArrayOID, Typmod: -1, Dims: 1, Elem: pgtype.JSONBOID}, `ARRAY['{"a": "b,c"}'::jsonb, 'null', NULL]`},
		{pgType{OID: 1, Typmod: -1, Dims: 1, Elem: 2249}, `ARRAY[ROW(1, 'x "y"'), ROW(NULL, NULL), NULL]`},
		{pgType{OID: pgtype.TimestamptzArrayOID, Typmod: -1, Dims: 1, Elem: pgtype.TimestamptzOID}, `ARRAY['2024-01-01 00:00:00+00'::timestamptz, 'infinity']`},
	}
	for _, a := range arrays {
		var text string
		var elems []*string
		elemsSQL := "(SELECT json_agg(e::text) FROM unnest(v) e)"
		if a.typ.Dims == 1 {
			// unnest would expand a composite element into columns.
			elemsSQL = "(SELECT json_agg(v[i]::text ORDER BY i) FROM generate_subscripts(v, 1) i)"
		}
		if err := conn.QueryRow(ctx, fmt.Sprintf(`SELECT v::text, %s::text FROM (SELECT %s AS v) x`, elemsSQL, a.value)).
			Scan(&text, pgJSONStrings(&elems)); err != nil {
			t.Fatal(err)
		}
		row, err := newConverter(a.typ).appendText(nil, []byte(text), false, 0)
		if err != nil {
			t.Errorf("%s: %v", text, err)
			continue
		}
		if len(row) != len(elems) {
			t.Errorf("%s: %d values, want %d", text, len(row), len(elems))
			continue
		}
		for i, e := range elems {
			if e == nil {
				if !row[i].IsNull() {
					t.Errorf("%s: value %d is %v, want NULL", text, i, row[i])
				}
				continue
			}
			want, err := newScalar(a.typ.Elem, a.typ.Typmod).parse([]byte(*e))
			if err != nil {
				t.Fatal(err)
			}
			if !sameParquetValue(row[i], want) {
				t.Errorf("%s: value %d is %v, want %v", text, i, row[i], want)
			}
		}
		checked++
	}
	t.Logf("%d values checked against the server", checked)
}

// maxNumeric returns the largest value of numeric(p,s) as text:
// (10^p - 1) × 10^-s.
func maxNumeric(p, s int) string {
	digits := strings.Repeat("9", p)
	if s <= 0 {
		return digits + strings.Repeat("0", -s)
	}
	if len(digits) <= s {
		digits = strings.Repeat("0", s-len(digits)+1) + digits
	}
	return digits[:len(digits)-s] + "." + digits[len(digits)-s:]
}

// pgJSONStrings scans a JSON array of strings and nulls.
func pgJSONStrings(dst *[]*string) any { return (*jsonStrings)(dst) }

type jsonStrings []*string

func (j *jsonStrings) Scan(src any) error {
	s, ok := src.(string)
	if !ok {
		return errors.New("jsonStrings: not text")
	}
	return json.Unmarshal([]byte(s), (*[]*string)(j))
}

func pgQuoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
