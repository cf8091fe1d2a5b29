package compact

import (
	"bytes"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	_ "github.com/duckdb/duckdb-go/v2"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress/zstd"
)

// openTypemapDuckDB opens an in-memory DuckDB that writes nothing outside
// the test's temporary directory.
func openTypemapDuckDB(t *testing.T) *sql.DB {
	t.Helper()
	db, err := sql.Open("duckdb", "")
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1) // the settings below are per connection
	t.Cleanup(func() { db.Close() })
	for _, q := range []string{
		"SET home_directory='" + t.TempDir() + "'",
		"SET autoinstall_known_extensions=false",
		"SET autoload_known_extensions=false",
		"SET TimeZone='UTC'",
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	return db
}

// roundTripColumn is one column of the round-trip file: PostgreSQL text
// values (nil is NULL), the type DuckDB must see, the SQL expression (over
// the column "c") that renders a value as text, and the text wanted for each
// value ("NULL" for SQL NULL).
type roundTripColumn struct {
	name  string
	typ   pgType
	in    []*string
	duck  string
	expr  string
	wants []string
}

func textPtr(s string) *string { return &s }

func pgTexts(in ...string) []*string {
	out := make([]*string, len(in))
	for i, s := range in {
		if s != "\x00NULL" {
			out[i] = textPtr(s)
		}
	}
	return out
}

const pgNullText = "\x00NULL" // marks SQL NULL in pgTexts

// TestDuckDBRoundTrip writes every mapped type through the converters into a
// ZSTD Parquet file and reads it back with DuckDB, checking the types DuckDB
// sees and each value against what PostgreSQL holds.
func TestDuckDBRoundTrip(t *testing.T) {
	t.Parallel()
	arr := func(oid, elem uint32, typmod int32, dims int, name string) pgType {
		return pgType{OID: oid, Typmod: typmod, Dims: dims, Elem: elem, Name: name}
	}
	scalar := func(oid uint32, typmod int32, name string) pgType {
		return pgType{OID: oid, Typmod: typmod, Name: name}
	}
	const (
		str    = "CAST(c AS VARCHAR)"
		toJSON = "CAST(to_json(c) AS VARCHAR)"
	)
	cols := []roundTripColumn{
		{"c_bool", scalar(pgtype.BoolOID, -1, "bool"), pgTexts("t", "f", pgNullText), "BOOLEAN", str,
			[]string{"true", "false", "NULL"}},
		{"c_int2", scalar(pgtype.Int2OID, -1, "int2"), pgTexts("-32768", "32767", "0", pgNullText), "SMALLINT", str,
			[]string{"-32768", "32767", "0", "NULL"}},
		{"c_int4", scalar(pgtype.Int4OID, -1, "int4"), pgTexts("-2147483648", "2147483647", pgNullText), "INTEGER", str,
			[]string{"-2147483648", "2147483647", "NULL"}},
		{"c_int8", scalar(pgtype.Int8OID, -1, "int8"), pgTexts("-9223372036854775808", "9223372036854775807", pgNullText), "BIGINT", str,
			[]string{"-9223372036854775808", "9223372036854775807", "NULL"}},
		{"c_oid", scalar(pgtype.OIDOID, -1, "oid"), pgTexts("4294967295", "0"), "BIGINT", str,
			[]string{"4294967295", "0"}},
		// Floats: the exact bits, and NaN / infinities / -0 by name.
		{"c_float4", scalar(pgtype.Float4OID, -1, "float4"), pgTexts("NaN", "Infinity", "-Infinity", "-0", "3.4028235e+38", "1.1", "1e-45", pgNullText), "FLOAT",
			"CASE WHEN isnan(c) THEN 'NaN' WHEN c = 0 THEN CASE WHEN signbit(c) THEN '-0' ELSE '0' END ELSE CAST(c AS VARCHAR) END",
			[]string{"NaN", "inf", "-inf", "-0", "3.4028235e+38", "1.1", "1e-45", "NULL"}},
		{"c_float8", scalar(pgtype.Float8OID, -1, "float8"), pgTexts("NaN", "Infinity", "-Infinity", "-0", "1.7976931348623157e+308", "0.30000000000000004", "5e-324", pgNullText), "DOUBLE",
			"CASE WHEN isnan(c) THEN 'NaN' WHEN c = 0 THEN CASE WHEN signbit(c) THEN '-0' ELSE '0' END ELSE CAST(c AS VARCHAR) END",
			[]string{"NaN", "inf", "-inf", "-0", "1.7976931348623157e+308", "0.30000000000000004", "5e-324", "NULL"}},
		{"c_num_5_2", scalar(pgtype.NumericOID, numericTypmod(5, 2), "numeric"), pgTexts("-0.01", "999.99", "-999.99", "0.00", "NaN", pgNullText), "DECIMAL(5,2)", str,
			[]string{"-0.01", "999.99", "-999.99", "0.00", "NULL", "NULL"}},
		{"c_num_18_4", scalar(pgtype.NumericOID, numericTypmod(18, 4), "numeric"), pgTexts("-99999999999999.9999", "12.5000"), "DECIMAL(18,4)", str,
			[]string{"-99999999999999.9999", "12.5000"}},
		{"c_num_20_5", scalar(pgtype.NumericOID, numericTypmod(20, 5), "numeric"), pgTexts("-0.00001", "999999999999999.99999", "-999999999999999.99999"), "DECIMAL(20,5)", str,
			[]string{"-0.00001", "999999999999999.99999", "-999999999999999.99999"}},
		{"c_num_38_0", scalar(pgtype.NumericOID, numericTypmod(38, 0), "numeric"),
			pgTexts("99999999999999999999999999999999999999", "-99999999999999999999999999999999999999", "0"), "DECIMAL(38,0)", str,
			[]string{"99999999999999999999999999999999999999", "-99999999999999999999999999999999999999", "0"}},
		// DuckDB prints DECIMAL(38,38) without the leading zero.
		{"c_num_38_38", scalar(pgtype.NumericOID, numericTypmod(38, 38), "numeric"),
			pgTexts("0.99999999999999999999999999999999999999", "-0.00000000000000000000000000000000000001"), "DECIMAL(38,38)", str,
			[]string{".99999999999999999999999999999999999999", "-.00000000000000000000000000000000000001"}},
		{"c_num_neg_scale", scalar(pgtype.NumericOID, numericTypmod(2, -3), "numeric"), pgTexts("-99000", "12000"), "DECIMAL(5,0)", str,
			[]string{"-99000", "12000"}},
		{"c_numeric", scalar(pgtype.NumericOID, -1, "numeric"), pgTexts("123.4500", "NaN", "-Infinity", "1e-1000"), "VARCHAR", str,
			[]string{"123.4500", "NaN", "-Infinity", "1e-1000"}},
		{"c_text", scalar(pgtype.TextOID, -1, "text"), pgTexts("héllo, \"world\"", "", pgNullText), "VARCHAR", str,
			[]string{"héllo, \"world\"", "", "NULL"}},
		{"c_bpchar", scalar(pgtype.BPCharOID, 9, "bpchar"), pgTexts("ab   "), "VARCHAR", str, []string{"ab   "}},
		{"c_enum", scalar(70001, -1, "mood"), pgTexts("happy"), "VARCHAR", str, []string{"happy"}},
		{"c_interval", scalar(pgtype.IntervalOID, -1, "interval"), pgTexts("1 year 2 mons -3 days 04:05:06.7"), "VARCHAR", str,
			[]string{"1 year 2 mons -3 days 04:05:06.7"}},
		{"c_bytea", scalar(pgtype.ByteaOID, -1, "bytea"), pgTexts(`\x00ff00`, `\x`, `a\000\\b`, pgNullText), "BLOB", "hex(c)",
			[]string{"00FF00", "", "61005C62", "NULL"}},
		{"c_uuid", scalar(pgtype.UUIDOID, -1, "uuid"), pgTexts("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "00000000-0000-0000-0000-000000000000"), "UUID", str,
			[]string{"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "00000000-0000-0000-0000-000000000000"}},
		{"c_json", scalar(pgtype.JSONOID, -1, "json"), pgTexts(`{"b": 1,  "a": [true, null]}`, `"x"`, `null`, pgNullText), "JSON", str,
			[]string{`{"b": 1,  "a": [true, null]}`, `"x"`, `null`, "NULL"}},
		{"c_jsonb", scalar(pgtype.JSONBOID, -1, "jsonb"), pgTexts(`{"a": [1, 2.50]}`), "JSON", str, []string{`{"a": [1, 2.50]}`}},
		{"c_date", scalar(pgtype.DateOID, -1, "date"),
			pgTexts("2024-02-29", "0044-03-15 BC", "0001-01-01 BC", "4714-11-24 BC", "9999-12-31", "5874897-12-31", "infinity", "-infinity", pgNullText), "DATE",
			"CAST(c AS VARCHAR) || CASE WHEN isinf(c) THEN ' inf' ELSE '' END",
			[]string{"2024-02-29", "0044-03-15 (BC)", "0001-01-01 (BC)", "4714-11-24 (BC)", "9999-12-31", "5874897-12-31", "infinity inf", "-infinity inf", "NULL"}},
		{"c_time", scalar(pgtype.TimeOID, -1, "time"), pgTexts("00:00:00", "13:45:06.5", "23:59:59.999999", "24:00:00"), "TIME", str,
			[]string{"00:00:00", "13:45:06.5", "23:59:59.999999", "24:00:00"}},
		{"c_timestamp", scalar(pgtype.TimestampOID, -1, "timestamp"),
			pgTexts("2024-02-29 12:34:56.123456", "0044-03-15 12:00:00 BC", "9999-12-31 23:59:59.999999", "1969-12-31 23:59:59.9", "infinity", "-infinity", "294276-12-31 23:59:59"), "TIMESTAMP",
			"CAST(c AS VARCHAR) || CASE WHEN isinf(c) THEN ' inf' ELSE '' END",
			[]string{"2024-02-29 12:34:56.123456", "0044-03-15 (BC) 12:00:00", "9999-12-31 23:59:59.999999", "1969-12-31 23:59:59.9", "infinity inf", "-infinity inf", "NULL"}},
		{"c_timestamptz", scalar(pgtype.TimestamptzOID, -1, "timestamptz"),
			pgTexts("2024-01-01 05:30:00.25+05:30", "1900-01-01 05:21:10+05:21:10", "2023-12-31 16:00:00-08", "0044-03-15 12:19:32+00:19:32 BC", "infinity", "-infinity"), "TIMESTAMP WITH TIME ZONE",
			"CAST(c AS VARCHAR) || CASE WHEN isinf(c) THEN ' inf' ELSE '' END",
			[]string{"2024-01-01 00:00:00.25+00", "1900-01-01 00:00:00+00", "2024-01-01 00:00:00+00", "0044-03-15 (BC) 12:00:00+00", "infinity inf", "-infinity inf"}},
		{"c_int4_arr", arr(pgtype.Int4ArrayOID, pgtype.Int4OID, -1, 1, "_int4"),
			pgTexts("{1,NULL,3}", "{}", "[0:2]={7,8,9}", "{{1,2},{3,4}}", pgNullText), "INTEGER[]", toJSON,
			[]string{"[1,null,3]", "[]", "[7,8,9]", "[1,2,3,4]", "NULL"}},
		{"c_text_arr", arr(pgtype.TextArrayOID, pgtype.TextOID, -1, 1, "_text"),
			pgTexts(`{"a,b","c\"d","e\\f",NULL,"NULL",""}`, `{}`), "VARCHAR[]", toJSON,
			[]string{`["a,b","c\"d","e\\f",null,"NULL",""]`, "[]"}},
		{"c_text_2d", arr(pgtype.TextArrayOID, pgtype.TextOID, -1, 2, "_text"),
			pgTexts("{{a,b},{c,NULL}}", "{}", "{x,y}", pgNullText), "VARCHAR[][]", toJSON,
			[]string{`[["a","b"],["c",null]]`, "[]", `[["x","y"]]`, "NULL"}},
		{"c_num_arr", arr(pgtype.NumericArrayOID, pgtype.NumericOID, numericTypmod(5, 2), 1, "_numeric"),
			pgTexts("{1.50,-0.01,NaN}"), "DECIMAL(5,2)[]", str, []string{"[1.50, -0.01, NULL]"}},
		{"c_numeric_arr", arr(pgtype.NumericArrayOID, pgtype.NumericOID, -1, 1, "_numeric"),
			pgTexts("{1.50,NaN}"), "VARCHAR[]", toJSON, []string{`["1.50","NaN"]`}},
		{"c_tstz_arr", arr(pgtype.TimestamptzArrayOID, pgtype.TimestamptzOID, -1, 1, "_timestamptz"),
			pgTexts(`{"2024-01-01 00:00:00+00",NULL,infinity}`), "TIMESTAMP WITH TIME ZONE[]", str,
			[]string{"['2024-01-01 00:00:00+00', NULL, infinity]"}},
		{"c_uuid_arr", arr(pgtype.UUIDArrayOID, pgtype.UUIDOID, -1, 1, "_uuid"),
			pgTexts(`{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}`), "UUID[]", toJSON, []string{`["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]`}},
		{"c_bytea_arr", arr(pgtype.ByteaArrayOID, pgtype.ByteaOID, -1, 1, "_bytea"),
			pgTexts(`{"\\x00ff",NULL}`), "BLOB[]", "CAST(list_transform(c, x -> hex(x)) AS VARCHAR)", []string{"[00FF, NULL]"}},
		{"c_date_arr_3d", arr(pgtype.DateArrayOID, pgtype.DateOID, -1, 3, "_date"),
			pgTexts("{{{2024-01-01}},{{-infinity}}}"), "DATE[][][]", str, []string{"[[[2024-01-01]], [[-infinity]]]"}},
	}

	fields := orderedGroup{{"id", parquet.Leaf(parquet.Int32Type)}}
	convs := make([]converter, len(cols))
	nrows := 0
	for i, c := range cols {
		convs[i] = newConverter(c.typ)
		fields = append(fields, field{c.name, convs[i].node()})
		nrows = max(nrows, len(c.in))
	}
	schema := parquet.NewSchema("t", fields)
	var buf bytes.Buffer
	w := parquet.NewWriter(&buf, schema, parquet.Compression(&zstd.Codec{}))
	for r := range nrows {
		row := parquet.Row{parquet.Int32Value(int32(r)).Level(0, 0, 0)}
		for i, c := range cols {
			var text []byte
			null := r >= len(c.in) || c.in[r] == nil
			if !null {
				text = []byte(*c.in[r])
			}
			var err error
			row, err = convs[i].appendText(row, text, null, i+1)
			if err != nil {
				t.Fatalf("%s row %d: %v", c.name, r, err)
			}
		}
		if _, err := w.WriteRows([]parquet.Row{row}); err != nil {
			t.Fatalf("write row %d: %v", r, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "types.parquet")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}

	db := openTypemapDuckDB(t)
	src := fmt.Sprintf("read_parquet('%s')", path)

	// The types DuckDB sees.
	rows, err := db.Query("SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM " + src + ")")
	if err != nil {
		t.Fatal(err)
	}
	types := map[string]string{}
	for rows.Next() {
		var name, typ string
		if err := rows.Scan(&name, &typ); err != nil {
			t.Fatal(err)
		}
		types[name] = typ
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for _, c := range cols {
		if got := types[c.name]; got != c.duck {
			t.Errorf("%s: DuckDB type %s, want %s", c.name, got, c.duck)
		}
	}

	// The values, row by row.
	for _, c := range cols {
		q := fmt.Sprintf("SELECT coalesce(%s, 'NULL') FROM (SELECT %s AS c, id FROM %s) ORDER BY id",
			c.expr, c.name, src)
		rows, err := db.Query(q)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		var got []string
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			got = append(got, s)
		}
		if err := rows.Err(); err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		want := append([]string(nil), c.wants...)
		for len(want) < nrows {
			want = append(want, "NULL")
		}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("%s:\n got  %q\n want %q", c.name, got, want)
		}
	}

	// NaN in numeric(5,2) and the timestamp past year 294247 were counted.
	for i, c := range cols {
		want := uint64(0)
		switch c.name {
		case "c_num_5_2", "c_num_arr", "c_timestamp":
			want = 1
		}
		if got := convs[i].(nullCounter).nulled(); got != want {
			t.Errorf("%s: nulled() = %d, want %d", c.name, got, want)
		}
	}
}
