package main

import (
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/duckdb/duckdb-go/v2"

	"github.com/wal-cake/wal-cake/scripts/testenv/duck"
)

// matrixCol is one column of the type matrix: its PostgreSQL type, the
// values written (SQL expressions; row k takes value k, NULL past the end),
// the DuckDB type of the lake column, and how each side renders a value as
// exact text ($c is the column). A rule of docs/types.md that writes NULL
// shows in the PostgreSQL rendering.
type matrixCol struct {
	name, typ string
	values    []string
	duckType  string
	pg, duck  string
	// goDuck, when set, renders the DuckDB value (duck selects it raw).
	goDuck func(v any) string
}

// pgQuery reads PostgreSQL's text output as the walsender sends it: "$c"
// renders a value the way pgoutput does ($c::text may differ: inet's cast
// adds the netmask, char(n)'s strips the padding).
const (
	pgText   = "$c::text"
	duckText = "CAST($c AS VARCHAR)"
	// Dates and timestamps: days or microseconds since 1970, or the
	// infinity's name.
	pgDays     = "CASE WHEN isfinite($c) THEN ($c - DATE '1970-01-01')::text ELSE $c::text END"
	duckDays   = "CASE WHEN isfinite($c) THEN CAST($c - DATE '1970-01-01' AS VARCHAR) ELSE CAST($c AS VARCHAR) END"
	pgMicros   = "CASE WHEN isfinite($c) THEN (extract(epoch FROM $c) * 1000000)::numeric(30,0)::text ELSE $c::text END"
	duckMicros = "CASE WHEN isfinite($c) THEN CAST(epoch_us($c) AS VARCHAR) ELSE CAST($c AS VARCHAR) END"
	// Timestamps after 294247-01-10 04:00:54.775806 UTC are NULL in the lake.
	pgMicrosRule = "CASE WHEN isfinite($c) AND $c >= '294247-01-10 04:00:54.775807+00' THEN NULL ELSE " + pgMicros + " END"
	pgJSON       = "array_to_json($c)::text"
	duckJSON     = "CAST(to_json($c) AS VARCHAR)"
)

// pgUnscaled renders numeric(p,s) as its unscaled integer; NaN is NULL in
// the lake (docs/types.md).
func pgUnscaled(scale int) string {
	return fmt.Sprintf("CASE WHEN $c = 'NaN' THEN NULL ELSE trunc($c * 10::numeric ^ %d)::text END", scale)
}

func duckUnscaled(v any) string { return v.(duckdb.Decimal).Value.String() }

func float4Bits(v any) string { return fmt.Sprintf("%08x", math.Float32bits(v.(float32))) }
func float8Bits(v any) string { return fmt.Sprintf("%016x", math.Float64bits(v.(float64))) }

var matrixZones = []string{"Asia/Kolkata", "America/St_Johns", "UTC", "Pacific/Chatham", "Europe/Amsterdam", "America/Sao_Paulo"}

var matrixSchema = `
CREATE EXTENSION citext;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'ünïcode ☃');
CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
CREATE DOMAIN price AS numeric(10,2);
CREATE TYPE pair AS (a int, b text);
`

var matrixCols = []matrixCol{
	{name: "c_bool", typ: "bool", values: []string{"true", "false"}, duckType: "BOOLEAN", pg: pgText, duck: duckText},
	{name: "c_int2", typ: "int2", values: []string{"-32768", "32767", "0"}, duckType: "SMALLINT", pg: pgText, duck: duckText},
	{name: "c_int4", typ: "int4", values: []string{"-2147483648", "2147483647", "0"}, duckType: "INTEGER", pg: pgText, duck: duckText},
	{name: "c_int8", typ: "int8", values: []string{"-9223372036854775808", "9223372036854775807", "0"}, duckType: "BIGINT", pg: pgText, duck: duckText},
	{name: "c_oid", typ: "oid", values: []string{"0", "4294967295"}, duckType: "BIGINT", pg: pgText, duck: duckText},
	{name: "c_float4", typ: "float4", values: []string{"'NaN'", "'Infinity'", "'-Infinity'", "'-0'", "'3.4028235e38'", "'1e-45'", "'0.1'", "'16777217'", "'-1.17549435e-38'"},
		duckType: "FLOAT", pg: "encode(float4send($c), 'hex')", duck: "$c", goDuck: float4Bits},
	{name: "c_float8", typ: "float8", values: []string{"'NaN'", "'Infinity'", "'-Infinity'", "'-0'", "'1.7976931348623157e308'", "'5e-324'", "'0.1'", "'-2.2250738585072014e-308'", "'123456789.123456789'"},
		duckType: "DOUBLE", pg: "encode(float8send($c), 'hex')", duck: "$c", goDuck: float8Bits},
	{name: "c_num_5_2", typ: "numeric(5,2)", values: []string{"999.99", "-999.99", "0.01", "'NaN'", "0"},
		duckType: "DECIMAL(5,2)", pg: pgUnscaled(2), duck: "$c", goDuck: duckUnscaled},
	{name: "c_num_18_4", typ: "numeric(18,4)", values: []string{"99999999999999.9999", "-99999999999999.9999", "-0.0001"},
		duckType: "DECIMAL(18,4)", pg: pgUnscaled(4), duck: "$c", goDuck: duckUnscaled},
	{name: "c_num_20_5", typ: "numeric(20,5)", values: []string{"999999999999999.99999", "-999999999999999.99999", "0.00001"},
		duckType: "DECIMAL(20,5)", pg: pgUnscaled(5), duck: "$c", goDuck: duckUnscaled},
	{name: "c_num_38_0", typ: "numeric(38,0)", values: []string{strings.Repeat("9", 38), "-" + strings.Repeat("9", 38), "1"},
		duckType: "DECIMAL(38,0)", pg: pgUnscaled(0), duck: "$c", goDuck: duckUnscaled},
	{name: "c_num_38_38", typ: "numeric(38,38)", values: []string{"0." + strings.Repeat("9", 38), "-0." + strings.Repeat("0", 37) + "1", "0"},
		duckType: "DECIMAL(38,38)", pg: pgUnscaled(38), duck: "$c", goDuck: duckUnscaled},
	{name: "c_num_38_10", typ: "numeric(38,10)", values: []string{strings.Repeat("9", 28) + "." + strings.Repeat("9", 10), "-1.0000000001"},
		duckType: "DECIMAL(38,10)", pg: pgUnscaled(10), duck: "$c", goDuck: duckUnscaled},
	{name: "c_numeric", typ: "numeric", values: []string{"(repeat('9', 120) || '.' || repeat('1', 30))::numeric", "'NaN'", "'Infinity'", "'-Infinity'",
		"-0.000000000000000000000000000000000000000000000000001", "0.10", "-" + strings.Repeat("1234567890", 11)},
		duckType: "VARCHAR", pg: pgText, duck: duckText},
	{name: "c_text", typ: "text", values: []string{"'héllo wörld 🎉 中文'", "''", `E'tab\there\nnew line \\ "quoted" ''single'''`, "repeat('x', 3000)", "'NULL'"},
		duckType: "VARCHAR", pg: "$c", duck: "$c"},
	{name: "c_varchar", typ: "varchar(10)", values: []string{"'abc'", "'ünïcödé!!!'"}, duckType: "VARCHAR", pg: "$c", duck: "$c"},
	{name: "c_char", typ: "char(5)", values: []string{"'ab'", "'é'", "''", "'abcde'"}, duckType: "VARCHAR", pg: "$c", duck: "$c"},
	{name: "c_name", typ: "name", values: []string{"'some_name'"}, duckType: "VARCHAR", pg: "$c", duck: "$c"},
	{name: "c_qchar", typ: `"char"`, values: []string{"'x'"}, duckType: "VARCHAR", pg: "$c", duck: "$c"},
	{name: "c_citext", typ: "citext", values: []string{"'MiXeD Case'"}, duckType: "VARCHAR", pg: "$c", duck: "$c"},
	{name: "c_bytea", typ: "bytea", values: []string{`'\x'`, `'\x00'`, `'\x00ff00'`, "decode(repeat('00', 1000), 'hex')", `'\xdeadbeef'`},
		duckType: "BLOB", pg: "encode($c, 'hex')", duck: "lower(hex($c))"},
	{name: "c_uuid", typ: "uuid", values: []string{"'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "'00000000-0000-0000-0000-000000000000'", "'ffffffff-ffff-ffff-ffff-ffffffffffff'"},
		duckType: "UUID", pg: pgText, duck: duckText},
	{name: "c_json", typ: "json", values: []string{`'{"b": 1,  "a": [true, null], "u": "\u00e9\ud83d\ude00 é"}'`, `'"x"'`, "'null'", "'[]'", `'{"deep": {"er": {"est": [1, [2, [3.50]]]}}}'`},
		duckType: "JSON", pg: pgText, duck: duckText},
	{name: "c_jsonb", typ: "jsonb", values: []string{`'{"b": 1,  "a": [true, null], "u": "\u00e9\ud83d\ude00 é"}'`, `'"x"'`, "'null'", "'[]'", `'{"deep": {"er": {"est": [1, [2, [3.50]]]}}}'`},
		duckType: "JSON", pg: pgText, duck: duckText},
	{name: "c_date", typ: "date", values: []string{"'2024-02-29'", "'0044-03-15 BC'", "'4714-11-24 BC'", "'9999-12-31'", "'5874897-12-31'", "'infinity'", "'-infinity'", "'1970-01-01'"},
		duckType: "DATE", pg: pgDays, duck: duckDays},
	{name: "c_time", typ: "time", values: []string{"'00:00:00'", "'24:00:00'", "'23:59:59.999999'", "'12:00:00.5'"},
		duckType: "TIME", pg: "(extract(epoch FROM $c) * 1000000)::int8::text",
		duck: "CAST((hour($c) * 3600 + minute($c) * 60)::BIGINT * 1000000 + microsecond($c) AS VARCHAR)"},
	{name: "c_timetz", typ: "timetz", values: []string{"'12:00:00+05:30'", "'23:59:59.999999-12'", "'00:00:00+00'"}, duckType: "VARCHAR", pg: "$c", duck: "$c"},
	{name: "c_timestamp", typ: "timestamp", values: []string{"'2024-02-29 12:34:56.123456'", "'0044-03-15 12:00:00 BC'", "'9999-12-31 23:59:59.999999'",
		"'infinity'", "'-infinity'", "'294276-12-31 23:59:59'", "'1969-12-31 23:59:59.999999'", "'4714-11-24 00:00:00 BC'"},
		duckType: "TIMESTAMP", pg: strings.ReplaceAll(pgMicrosRule, "+00'", "'"), duck: duckMicros},
	// Without an offset, a timestamptz literal is in the writer's time zone.
	{name: "c_timestamptz", typ: "timestamptz", values: []string{"'2024-01-01 05:30:00.25+05:30'", "'1900-01-01 00:00:00'", "'0044-03-15 12:00:00 BC'",
		"'9999-12-31 23:59:59.999999+00'", "'infinity'", "'-infinity'", "'2024-07-01 12:00:00 America/St_Johns'", "'2024-03-31 02:30:00'"},
		duckType: "TIMESTAMP WITH TIME ZONE", pg: pgMicrosRule, duck: duckMicros},
	{name: "c_interval", typ: "interval", values: []string{"'1 year 2 mons -3 days 04:05:06.7'", "'-178000000 years'", "'0'", "'1 day -00:00:01'"},
		duckType: "VARCHAR", pg: "$c", duck: "$c"},
	// Arrays. An int[] column holding a 2-D value keeps its elements in
	// order (docs/types.md): the PostgreSQL side flattens it the same way.
	{name: "c_int_arr", typ: "int[]", values: []string{"'{1,NULL,3}'", "'{}'", "'{{1,2},{3,4}}'", "'[0:2]={7,8,9}'", "'{NULL}'", "'{-2147483648,2147483647}'"},
		duckType: "INTEGER[]", pg: "CASE WHEN cardinality($c) = 0 THEN '[]' ELSE (SELECT json_agg(e)::text FROM unnest($c) e) END", duck: duckJSON},
	// A text[][] column holding a 1-D value: wrapped in one outer list.
	{name: "c_text_2d", typ: "text[][]", values: []string{"'{{a,b},{c,NULL}}'", "'{}'", `'{{"x,y","q\"z"},{"é","{}"}}'`, "'{p,q}'", `'{{" spaced ",""}}'`},
		duckType: "VARCHAR[][]", pg: "CASE WHEN array_ndims($c) = 1 THEN '[' || array_to_json($c)::text || ']' ELSE " + pgJSON + " END", duck: duckJSON},
	{name: "c_num_arr", typ: "numeric(5,2)[]", values: []string{"'{1.50,-0.01,NaN}'", "'{}'", "'{999.99}'"},
		duckType: "DECIMAL(5,2)[]", pg: "CASE WHEN $c IS NULL THEN NULL ELSE coalesce((SELECT json_agg(CASE WHEN e = 'NaN' THEN NULL ELSE e END)::text FROM unnest($c) e), '[]') END", duck: duckJSON},
	{name: "c_numeric_arr", typ: "numeric[]", values: []string{"'{1.50,NaN,-Infinity,123456789012345678901234567890.123}'"},
		duckType: "VARCHAR[]", pg: "(SELECT json_agg(e::text)::text FROM unnest($c) e)", duck: duckJSON},
	{name: "c_uuid_arr", typ: "uuid[]", values: []string{"'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,NULL}'"}, duckType: "UUID[]", pg: pgJSON, duck: duckJSON},
	{name: "c_bytea_arr", typ: "bytea[]", values: []string{`ARRAY['\x00'::bytea, NULL, '\x00ff', '\x']`},
		duckType: "BLOB[]", pg: "(SELECT json_agg(encode(e, 'hex'))::text FROM unnest($c) e)", duck: "CAST(to_json(list_transform($c, x -> lower(hex(x)))) AS VARCHAR)"},
	{name: "c_tstz_arr", typ: "timestamptz[]", values: []string{`'{"2024-01-01 00:00:00+05:30","1900-01-01 00:00:00",NULL}'`},
		duckType: "TIMESTAMP WITH TIME ZONE[]", pg: "(SELECT json_agg((extract(epoch FROM e) * 1000000)::int8)::text FROM unnest($c) e)",
		duck: "CAST(to_json(list_transform($c, x -> epoch_us(x))) AS VARCHAR)"},
	{name: "c_jsonb_arr", typ: "jsonb[]", values: []string{`ARRAY['{"a": "b,c"}'::jsonb, 'null', NULL, '[1, 2.50]']`}, duckType: "JSON[]", pg: pgJSON, duck: duckJSON},
	// Enums, domains, composites, ranges and the types kept as text.
	{name: "c_mood", typ: "mood", values: []string{"'sad'", "'ünïcode ☃'"}, duckType: "VARCHAR", pg: "$c", duck: "$c"},
	{name: "c_mood_arr", typ: "mood[]", values: []string{"'{sad,happy}'", "'{}'"}, duckType: "VARCHAR[]", pg: pgJSON, duck: duckJSON},
	{name: "c_posint", typ: "posint", values: []string{"1", "2147483647"}, duckType: "INTEGER", pg: pgText, duck: duckText},
	{name: "c_price", typ: "price", values: []string{"12345678.90", "-0.01"}, duckType: "DECIMAL(10,2)", pg: pgUnscaled(2), duck: "$c", goDuck: duckUnscaled},
	{name: "c_pair", typ: "pair", values: []string{`ROW(1, 'x "y", z')`, "ROW(NULL, NULL)"}, duckType: "VARCHAR", pg: "$c", duck: "$c"},
	{name: "c_int4range", typ: "int4range", values: []string{"'[1,10)'", "'empty'", "'(,5]'"}, duckType: "VARCHAR", pg: "$c", duck: "$c"},
	{name: "c_tstzrange", typ: "tstzrange", values: []string{"'[2024-01-01 00:00:00+00,infinity)'"}, duckType: "VARCHAR", pg: "$c", duck: "$c"},
	{name: "c_inet", typ: "inet", values: []string{"'192.168.1.1/24'", "'::1'"}, duckType: "VARCHAR", pg: "$c", duck: "$c"},
	{name: "c_cidr", typ: "cidr", values: []string{"'10.0.0.0/8'"}, duckType: "VARCHAR", pg: "$c", duck: "$c"},
	{name: "c_macaddr", typ: "macaddr", values: []string{"'08:00:2b:01:02:03'"}, duckType: "VARCHAR", pg: "$c", duck: "$c"},
	{name: "c_macaddr8", typ: "macaddr8", values: []string{"'08:00:2b:01:02:03:04:05'"}, duckType: "VARCHAR", pg: "$c", duck: "$c"},
	{name: "c_bit", typ: "bit(4)", values: []string{"B'1010'"}, duckType: "VARCHAR", pg: "$c", duck: "$c"},
	{name: "c_varbit", typ: "varbit", values: []string{"B''", "B'101'"}, duckType: "VARCHAR", pg: "$c", duck: "$c"},
	{name: "c_money", typ: "money", values: []string{"1234.56", "-0.01"}, duckType: "VARCHAR", pg: "$c", duck: "$c"},
	{name: "c_xml", typ: "xml", values: []string{`'<a b="c">é &amp; ü</a>'`}, duckType: "VARCHAR", pg: "$c", duck: "$c"},
	{name: "c_tsvector", typ: "tsvector", values: []string{"'a fat cat sat on a mat'"}, duckType: "VARCHAR", pg: "$c", duck: "$c"},
	{name: "c_box", typ: "box", values: []string{"'(1,2),(3,4)'"}, duckType: "VARCHAR", pg: "$c", duck: "$c"},
}

// TestTypeMatrix writes every mapped type with its edge values from
// sessions in several time zones, by INSERT and by UPDATE, runs walcake, and
// compares every value DuckDB reads from the lake with PostgreSQL's own.
func TestTypeMatrix(t *testing.T) {
	e := newExactEnv(t, "matrix")
	e.exec(matrixSchema)
	var defs []string
	nrows := 0
	for _, c := range matrixCols {
		defs = append(defs, c.name+" "+c.typ)
		nrows = max(nrows, len(c.values))
	}
	e.exec("CREATE TABLE matrix (id int PRIMARY KEY, " + strings.Join(defs, ", ") + ")")
	e.mustWalcake("setup", "--tables", "public.matrix")

	// Row k by INSERT, row 100+k by INSERT of the key then UPDATE; each in
	// a session of its own time zone.
	conn := e.db.Conn(t)
	for k := range nrows {
		var names, lits, sets []string
		for _, c := range matrixCols {
			if k < len(c.values) {
				names = append(names, c.name)
				lits = append(lits, c.values[k])
				sets = append(sets, c.name+" = "+c.values[k])
			}
		}
		zone := matrixZones[k%len(matrixZones)]
		for _, sql := range []string{
			"SET TimeZone = '" + zone + "'",
			fmt.Sprintf("INSERT INTO matrix (id, %s) VALUES (%d, %s)", strings.Join(names, ", "), k, strings.Join(lits, ", ")),
			fmt.Sprintf("INSERT INTO matrix (id) VALUES (%d)", 100+k),
			fmt.Sprintf("UPDATE matrix SET %s WHERE id = %d", strings.Join(sets, ", "), 100+k),
		} {
			if _, err := conn.Exec(t.Context(), sql); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
		}
	}
	e.exec("INSERT INTO matrix (id) VALUES (1000)") // every column NULL

	r := e.mustWalcake("run")
	t.Logf("run: %s", strings.TrimSpace(r.stdout))
	// The values a rule wrote as NULL are reported: numeric NaN in
	// numeric(5,2) and its array, the timestamp past year 294247.
	for _, col := range []string{"public.matrix.c_num_5_2=2", "public.matrix.c_num_arr=2", "public.matrix.c_timestamp=2"} {
		if !strings.Contains(r.stderr, col) {
			t.Errorf("the run's log does not report %s written as NULL:\n%s", col, r.stderr)
		}
	}

	lake, ddb := e.lakeOf()
	src := parquetOf(lake, "public.matrix")

	// The types DuckDB sees are those of docs/types.md.
	types := map[string]string{}
	for _, row := range duck.Rows(t, ddb, "SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM "+src+")") {
		types[row[0].(string)] = row[1].(string)
	}
	for _, c := range matrixCols {
		if types[c.name] != c.duckType {
			t.Errorf("%s %s: DuckDB type %s, want %s", c.name, c.typ, types[c.name], c.duckType)
		}
	}

	// Every value, against PostgreSQL's, in the lake's current state.
	var pgExprs, duckExprs []string
	for _, c := range matrixCols {
		pgExprs = append(pgExprs, strings.ReplaceAll(c.pg, "$c", c.name))
		duckExprs = append(duckExprs, strings.ReplaceAll(c.duck, "$c", c.name))
	}
	want := e.pgQuery("SELECT id::text, " + strings.Join(pgExprs, ", ") + " FROM matrix ORDER BY matrix.id")
	got := lakeState(t, ddb, lake, "public.matrix", []string{"id"}, "CAST(id AS VARCHAR), "+strings.Join(duckExprs, ", "), "id")
	if len(got) != len(want) {
		t.Fatalf("lake has %d rows, PostgreSQL %d", len(got), len(want))
	}
	checked := 0
	for i := range want {
		for j, c := range matrixCols {
			w, g := want[i][j+1], got[i][j+1]
			if g != nil && c.goDuck != nil {
				g = c.goDuck(g)
			}
			ws, gs := fmt.Sprint(w), fmt.Sprint(g)
			if w == nil {
				ws = "NULL"
			}
			if g == nil {
				gs = "NULL"
			}
			if strings.HasPrefix(c.duck, "CAST(to_json") && w != nil && g != nil {
				// Lists: compare as JSON, numbers by value (DECIMAL(5,2)
				// 1.50 prints as 1.5).
				var err1, err2 error
				ws, err1 = jsonCanon(ws)
				gs, err2 = jsonCanon(gs)
				if err1 != nil || err2 != nil {
					t.Errorf("row %s %s: JSON: %v, %v", want[i][0], c.name, err1, err2)
				}
			}
			if ws != gs {
				t.Errorf("row %s %s %s:\n lake: %.200s\n   pg: %.200s", want[i][0], c.name, c.typ, gs, ws)
			}
			if w != nil {
				checked++
			}
		}
	}
	t.Logf("%d values of %d columns checked against PostgreSQL", checked, len(matrixCols))
}
