package compact

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress/zstd"
)

// numericTypmod is atttypmod of numeric(p,s).
func numericTypmod(p, s int) int32 { return int32(p<<16|(s&0x7ff)) + 4 }

func civilMicros(year int, month time.Month, day, h, m, s, us int) int64 {
	return time.Date(year, month, day, h, m, s, us*1000, time.UTC).UnixMicro()
}

func civilDays(year int, month time.Month, day int) int32 {
	return int32(time.Date(year, month, day, 0, 0, 0, 0, time.UTC).Unix() / 86400)
}

// twosComplementBE returns the big-endian two's complement of v in n bytes.
func twosComplementBE(v int64, n int) []byte {
	b := make([]byte, n)
	for i := n - 1; i >= 0; i-- {
		b[i] = byte(v)
		v >>= 8
	}
	return b
}

func TestScalarConverters(t *testing.T) {
	t.Parallel()
	var (
		int2   = pgType{OID: pgtype.Int2OID, Typmod: -1, Name: "int2"}
		int4   = pgType{OID: pgtype.Int4OID, Typmod: -1, Name: "int4"}
		int8   = pgType{OID: pgtype.Int8OID, Typmod: -1, Name: "int8"}
		float4 = pgType{OID: pgtype.Float4OID, Typmod: -1, Name: "float4"}
		float8 = pgType{OID: pgtype.Float8OID, Typmod: -1, Name: "float8"}
		num    = func(p, s int) pgType {
			return pgType{OID: pgtype.NumericOID, Typmod: numericTypmod(p, s), Name: "numeric"}
		}
		numeric = pgType{OID: pgtype.NumericOID, Typmod: -1, Name: "numeric"}
		date    = pgType{OID: pgtype.DateOID, Typmod: -1, Name: "date"}
		tm      = pgType{OID: pgtype.TimeOID, Typmod: -1, Name: "time"}
		ts      = pgType{OID: pgtype.TimestampOID, Typmod: -1, Name: "timestamp"}
		tstz    = pgType{OID: pgtype.TimestamptzOID, Typmod: -1, Name: "timestamptz"}
		text    = pgType{OID: pgtype.TextOID, Typmod: -1, Name: "text"}
		bytea   = pgType{OID: pgtype.ByteaOID, Typmod: -1, Name: "bytea"}
	)
	i32 := parquet.Int32Value
	i64 := parquet.Int64Value
	str := func(s string) parquet.Value { return parquet.ByteArrayValue([]byte(s)) }
	null := parquet.NullValue()
	ninf := parquet.DoubleValue(math.Inf(-1))

	tests := []struct {
		typ  pgType
		text string
		want parquet.Value // NullValue: written as NULL (and counted)
		err  string        // substring of the error, when one is wanted
	}{
		{pgType{OID: pgtype.BoolOID, Typmod: -1}, "t", parquet.BooleanValue(true), ""},
		{pgType{OID: pgtype.BoolOID, Typmod: -1}, "f", parquet.BooleanValue(false), ""},
		{pgType{OID: pgtype.BoolOID, Typmod: -1}, "yes", null, `convert bool value "yes"`},

		{int2, "-32768", i32(-32768), ""},
		{int2, "32767", i32(32767), ""},
		{int2, "32768", null, "out of range"},
		{int2, "-32769", null, "out of range"},
		{int4, "-2147483648", i32(math.MinInt32), ""},
		{int4, "2147483647", i32(math.MaxInt32), ""},
		{int4, "0", i32(0), ""},
		{int4, "2147483648", null, "out of range"},
		{int4, "12a", null, `convert int4 value "12a": invalid syntax`},
		{int4, "", null, "invalid syntax"},
		{int8, "-9223372036854775808", i64(math.MinInt64), ""},
		{int8, "9223372036854775807", i64(math.MaxInt64), ""},
		{int8, "9223372036854775808", null, "out of range"},
		{int8, "-9223372036854775809", null, "out of range"},
		{int8, "99999999999999999999999", null, "out of range"},
		{pgType{OID: pgtype.OIDOID, Typmod: -1}, "4294967295", i64(math.MaxUint32), ""},
		{pgType{OID: pgtype.OIDOID, Typmod: -1}, "4294967296", null, "out of range"},

		{float4, "NaN", parquet.FloatValue(math.Float32frombits(0x7fc00000)), ""},
		{float4, "Infinity", parquet.FloatValue(float32(math.Inf(1))), ""},
		{float4, "-Infinity", parquet.FloatValue(float32(math.Inf(-1))), ""},
		{float4, "-0", parquet.FloatValue(float32(math.Copysign(0, -1))), ""},
		{float4, "3.4028235e+38", parquet.FloatValue(math.MaxFloat32), ""},
		{float4, "1e-45", parquet.FloatValue(math.SmallestNonzeroFloat32), ""},
		{float4, "1.1", parquet.FloatValue(1.1), ""},
		{float8, "NaN", parquet.DoubleValue(math.Float64frombits(0x7ff8000000000000)), ""},
		{float8, "-Infinity", ninf, ""},
		{float8, "-0", parquet.DoubleValue(math.Copysign(0, -1)), ""},
		{float8, "1.7976931348623157e+308", parquet.DoubleValue(math.MaxFloat64), ""},
		{float8, "5e-324", parquet.DoubleValue(math.SmallestNonzeroFloat64), ""},
		{float8, "0.30000000000000004", parquet.DoubleValue(math.Nextafter(0.3, 1)), ""},
		{float8, "1e309", null, "out of range"},

		{num(5, 2), "-0.01", i32(-1), ""},
		{num(5, 2), "0.00", i32(0), ""},
		{num(5, 2), "999.99", i32(99999), ""},
		{num(5, 2), "-999.99", i32(-99999), ""},
		{num(5, 2), "1.5", i32(150), ""},
		{num(5, 2), "1000.00", null, "out of range"},
		{num(5, 2), "1.234", null, "out of range"},
		{num(5, 2), "1.230", i32(123), ""},
		{num(5, 2), "1.2.3", null, "invalid syntax"},
		{num(5, 2), "NaN", null, ""},
		{num(9, 0), "999999999", i32(999999999), ""},
		{num(18, 4), "-99999999999999.9999", i64(-999999999999999999), ""},
		{num(18, 4), "12.5000", i64(125000), ""},
		{num(20, 5), "-0.00001", parquet.FixedLenByteArrayValue(twosComplementBE(-1, 9)), ""},
		{num(20, 5), "123.45678", parquet.FixedLenByteArrayValue(twosComplementBE(12345678, 9)), ""},
		{num(38, 0), "99999999999999999999999999999999999999",
			parquet.FixedLenByteArrayValue([]byte{0x4b, 0x3b, 0x4c, 0xa8, 0x5a, 0x86, 0xc4, 0x7a, 0x09, 0x8a, 0x22, 0x3f, 0xff, 0xff, 0xff, 0xff}), ""},
		{num(38, 0), "-99999999999999999999999999999999999999",
			parquet.FixedLenByteArrayValue([]byte{0xb4, 0xc4, 0xb3, 0x57, 0xa5, 0x79, 0x3b, 0x85, 0xf6, 0x75, 0xdd, 0xc0, 0x00, 0x00, 0x00, 0x01}), ""},
		{num(38, 38), "-0.00000000000000000000000000000000000001", parquet.FixedLenByteArrayValue(twosComplementBE(-1, 16)), ""},
		{num(38, 0), "100000000000000000000000000000000000000", null, "out of range"},
		{num(38, 10), "Infinity", null, ""},
		{num(2, -3), "12000", i32(12000), ""}, // PostgreSQL 15 negative scale: DECIMAL(5,0)
		{num(3, 5), "0.00123", i32(123), ""},  // scale above precision: DECIMAL(5,5)
		{num(39, 2), "1.50", str("1.50"), ""}, // beyond DECIMAL(38): text
		{numeric, "123.4500", str("123.4500"), ""},
		{numeric, "NaN", str("NaN"), ""},
		{numeric, "-Infinity", str("-Infinity"), ""},

		{text, "hello, world", str("hello, world"), ""},
		{text, "", str(""), ""},
		{pgType{OID: pgtype.BPCharOID, Typmod: 9}, "ab   ", str("ab   "), ""},
		{pgType{OID: 16999, Typmod: -1, Name: "mood"}, "happy", str("happy"), ""},
		{pgType{OID: pgtype.IntervalOID, Typmod: -1}, "1 year 2 mons -3 days 04:05:06.7", str("1 year 2 mons -3 days 04:05:06.7"), ""},
		{pgType{OID: pgtype.TimetzOID, Typmod: -1}, "12:00:00+05:30", str("12:00:00+05:30"), ""},
		{pgType{OID: pgtype.JSONBOID, Typmod: -1}, `{"a": [1, null]}`, str(`{"a": [1, null]}`), ""},

		{bytea, `\x00ff00`, str("\x00\xff\x00"), ""},
		{bytea, `\x`, str(""), ""},
		{bytea, `\xDEADbeef`, str("\xde\xad\xbe\xef"), ""},
		{bytea, `a\000\\b\377`, str("a\x00\\b\xff"), ""},
		{bytea, `\x0`, null, "invalid syntax"},
		{bytea, `\xzz`, null, "invalid syntax"},
		{bytea, `a\9`, null, "invalid syntax"},

		{pgType{OID: pgtype.UUIDOID, Typmod: -1}, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
			parquet.FixedLenByteArrayValue([]byte{0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a, 0x11}), ""},
		{pgType{OID: pgtype.UUIDOID, Typmod: -1}, "{A0EEBC999C0B4EF8BB6D6BB9BD380A11}",
			parquet.FixedLenByteArrayValue([]byte{0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a, 0x11}), ""},
		{pgType{OID: pgtype.UUIDOID, Typmod: -1}, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1", null, "invalid syntax"},

		{date, "1970-01-01", i32(0), ""},
		{date, "2000-02-29", i32(civilDays(2000, 2, 29)), ""},
		{date, "9999-12-31", i32(civilDays(9999, 12, 31)), ""},
		{date, "0044-03-15 BC", i32(civilDays(-43, 3, 15)), ""},
		{date, "0001-01-01 BC", i32(civilDays(0, 1, 1)), ""},
		{date, "0001-02-29 BC", i32(civilDays(0, 2, 29)), ""}, // 1 BC is a leap year
		{date, "4714-11-24 BC", i32(-2440588), ""},            // PostgreSQL's first date (Julian day 0)
		{date, "5874897-12-31", i32(2145042905), ""},          // and its last
		{date, "infinity", i32(math.MaxInt32), ""},
		{date, "-infinity", i32(-math.MaxInt32), ""},
		{date, "2023-02-29", null, "out of range"},
		{date, "0000-01-01", null, "out of range"},
		{date, "2023-1-01", null, "invalid syntax"},

		{tm, "00:00:00", i64(0), ""},
		{tm, "13:45:06.5", i64((13*3600+45*60+6)*1e6 + 500000), ""},
		{tm, "23:59:59.999999", i64(86400e6 - 1), ""},
		{tm, "24:00:00", i64(86400e6), ""},
		{tm, "24:00:00.000001", null, "out of range"},
		{tm, "12:60:00", null, "out of range"},
		{tm, "12:00:00.1234567", null, "invalid syntax"},

		{ts, "1970-01-01 00:00:00", i64(0), ""},
		{ts, "2024-02-29 12:34:56.123456", i64(civilMicros(2024, 2, 29, 12, 34, 56, 123456)), ""},
		{ts, "2024-02-29 12:34:56.1", i64(civilMicros(2024, 2, 29, 12, 34, 56, 100000)), ""},
		{ts, "1969-12-31 23:59:59.999999", i64(-1), ""},
		{ts, "0044-03-15 12:00:00 BC", i64(civilMicros(-43, 3, 15, 12, 0, 0, 0)), ""},
		{ts, "4714-11-24 00:00:00 BC", i64(-2440588 * 86400e6), ""},
		{ts, "9999-12-31 23:59:59.999999", i64(civilMicros(9999, 12, 31, 23, 59, 59, 999999)), ""},
		{ts, "294247-01-10 04:00:54.775806", i64(math.MaxInt64 - 1), ""},
		{ts, "294247-01-10 04:00:54.775807", null, ""}, // would be +infinity's encoding
		{ts, "294276-12-31 23:59:59.999999", null, ""}, // PostgreSQL's last timestamp
		{ts, "infinity", i64(math.MaxInt64), ""},
		{ts, "-infinity", i64(-math.MaxInt64), ""},
		{ts, "2024-01-01 24:00:00", null, "out of range"},
		{ts, "2024-01-01", null, "invalid syntax"},
		{ts, "2024-01-01 00:00:00+00", null, "invalid syntax"},

		{tstz, "2024-01-01 00:00:00+00", i64(civilMicros(2024, 1, 1, 0, 0, 0, 0)), ""},
		{tstz, "2024-01-01 05:30:00.25+05:30", i64(civilMicros(2024, 1, 1, 0, 0, 0, 250000)), ""},
		{tstz, "2023-12-31 16:00:00-08", i64(civilMicros(2024, 1, 1, 0, 0, 0, 0)), ""},
		{tstz, "1900-01-01 05:21:10+05:21:10", i64(civilMicros(1900, 1, 1, 0, 0, 0, 0)), ""},
		{tstz, "1800-01-01 00:00:00-04:56:02", i64(civilMicros(1800, 1, 1, 4, 56, 2, 0)), ""},
		{tstz, "0044-03-15 12:19:32+00:19:32 BC", i64(civilMicros(-43, 3, 15, 12, 0, 0, 0)), ""},
		{tstz, "infinity", i64(math.MaxInt64), ""},
		{tstz, "-infinity", i64(-math.MaxInt64), ""},
		{tstz, "2024-01-01 00:00:00", null, "invalid syntax"},
		{tstz, "2024-01-01 00:00:00+5", null, "invalid syntax"},
	}
	for _, tt := range tests {
		c := newConverter(tt.typ)
		row, err := c.appendText(parquet.Row{parquet.Int32Value(7).Level(0, 0, 0)}, []byte(tt.text), false, 3)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%s %q: got error %v, want one containing %q", tt.typ.Name, tt.text, err, tt.err)
			}
			if len(row) != 1 {
				t.Errorf("%s %q: failed conversion left %d values in the row", tt.typ.Name, tt.text, len(row)-1)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s %q: %v", tt.typ.Name, tt.text, err)
			continue
		}
		if len(row) != 2 {
			t.Errorf("%s %q: appended %d values, want 1", tt.typ.Name, tt.text, len(row)-1)
			continue
		}
		got := row[1]
		wantDef := 1
		if tt.want.IsNull() {
			wantDef = 0
			if n := c.(nullCounter).nulled(); n != 1 {
				t.Errorf("%s %q: nulled() = %d, want 1", tt.typ.Name, tt.text, n)
			}
		}
		if got.Column() != 3 || got.RepetitionLevel() != 0 || got.DefinitionLevel() != wantDef {
			t.Errorf("%s %q: levels (col %d, rep %d, def %d), want (3, 0, %d)", tt.typ.Name, tt.text,
				got.Column(), got.RepetitionLevel(), got.DefinitionLevel(), wantDef)
		}
		if !sameParquetValue(got, tt.want) {
			t.Errorf("%s %q: got %v (%v), want %v (%v)", tt.typ.Name, tt.text, got, got.Kind(), tt.want, tt.want.Kind())
		}
	}
}

// sameParquetValue compares kind and bits (so NaN equals NaN and -0 differs from 0).
func sameParquetValue(a, b parquet.Value) bool {
	if a.IsNull() || b.IsNull() {
		return a.IsNull() && b.IsNull()
	}
	if a.Kind() != b.Kind() {
		return false
	}
	switch a.Kind() {
	case parquet.Float:
		return math.Float32bits(a.Float()) == math.Float32bits(b.Float())
	case parquet.Double:
		return math.Float64bits(a.Double()) == math.Float64bits(b.Double())
	}
	return parquet.Equal(a, b)
}

func TestConverterNull(t *testing.T) {
	t.Parallel()
	for _, typ := range []pgType{
		{OID: pgtype.Int4OID, Typmod: -1},
		{OID: pgtype.TextOID, Typmod: -1},
		{OID: pgtype.Int4ArrayOID, Typmod: -1, Dims: 1, Elem: pgtype.Int4OID},
		{OID: pgtype.TextArrayOID, Typmod: -1, Dims: 2, Elem: pgtype.TextOID},
	} {
		row, err := newConverter(typ).appendText(nil, nil, true, 5)
		if err != nil {
			t.Fatal(err)
		}
		if len(row) != 1 || !row[0].IsNull() || row[0].Column() != 5 || row[0].DefinitionLevel() != 0 || row[0].RepetitionLevel() != 0 {
			t.Errorf("%d: NULL gave %v", typ.OID, row)
		}
	}
}

// leveledValue is a value with its levels, for comparing rows.
type leveledValue struct {
	v        parquet.Value
	rep, def int
}

func TestListConverter(t *testing.T) {
	t.Parallel()
	arr := func(elem uint32, dims int) pgType {
		return pgType{OID: 1, Typmod: -1, Dims: dims, Elem: elem, Name: "_" + builtinTypeName(elem)}
	}
	i32 := func(v int32, rep, def int) leveledValue { return leveledValue{parquet.Int32Value(v), rep, def} }
	s := func(v string, rep, def int) leveledValue {
		return leveledValue{parquet.ByteArrayValue([]byte(v)), rep, def}
	}
	null := func(rep, def int) leveledValue { return leveledValue{parquet.NullValue(), rep, def} }

	tests := []struct {
		name string
		typ  pgType
		text string
		want []leveledValue
	}{
		{"empty", arr(pgtype.Int4OID, 1), "{}", []leveledValue{null(0, 1)}},
		{"empty 2-D", arr(pgtype.Int4OID, 2), "{}", []leveledValue{null(0, 1)}},
		{"one", arr(pgtype.Int4OID, 1), "{42}", []leveledValue{i32(42, 0, 3)}},
		{"null elements", arr(pgtype.Int4OID, 1), "{1,NULL,3,null}",
			[]leveledValue{i32(1, 0, 3), null(1, 2), i32(3, 1, 3), null(1, 2)}},
		{"only null", arr(pgtype.Int4OID, 1), "{NULL}", []leveledValue{null(0, 2)}},
		{"lower bound", arr(pgtype.Int4OID, 1), "[0:2]={1,2,3}",
			[]leveledValue{i32(1, 0, 3), i32(2, 1, 3), i32(3, 1, 3)}},
		{"quoted text", arr(pgtype.TextOID, 1), `{"a,b","c\"d","e\\f",NULL,"NULL","",plain,"{x}"," sp "}`,
			[]leveledValue{s("a,b", 0, 3), s(`c"d`, 1, 3), s(`e\f`, 1, 3), null(1, 2), s("NULL", 1, 3),
				s("", 1, 3), s("plain", 1, 3), s("{x}", 1, 3), s(" sp ", 1, 3)}},
		{"2-D", arr(pgtype.TextOID, 2), "{{a,b},{c,d}}",
			[]leveledValue{s("a", 0, 5), s("b", 2, 5), s("c", 1, 5), s("d", 2, 5)}},
		{"2-D nulls and bounds", arr(pgtype.Int4OID, 2), "[1:2][-1:0]={{1,NULL},{NULL,4}}",
			[]leveledValue{i32(1, 0, 5), null(2, 4), null(1, 4), i32(4, 2, 5)}},
		{"3-D", arr(pgtype.Int4OID, 3), "{{{1,2}},{{3,4}}}",
			[]leveledValue{i32(1, 0, 7), i32(2, 3, 7), i32(3, 1, 7), i32(4, 3, 7)}},
		{"deeper than declared", arr(pgtype.Int4OID, 1), "{{1,2},{3,4}}",
			[]leveledValue{i32(1, 0, 3), i32(2, 1, 3), i32(3, 1, 3), i32(4, 1, 3)}},
		{"much deeper than declared", arr(pgtype.Int4OID, 2), "{{{1,2},{3,4}},{{5,6},{7,8}}}",
			[]leveledValue{i32(1, 0, 5), i32(2, 2, 5), i32(3, 2, 5), i32(4, 2, 5),
				i32(5, 1, 5), i32(6, 2, 5), i32(7, 2, 5), i32(8, 2, 5)}},
		{"shallower than declared", arr(pgtype.Int4OID, 2), "{1,2}",
			[]leveledValue{i32(1, 0, 5), i32(2, 2, 5)}},
		{"shallower, null", arr(pgtype.Int4OID, 3), "{NULL}", []leveledValue{null(0, 6)}},
		{"numeric with NaN", pgType{OID: pgtype.NumericArrayOID, Typmod: numericTypmod(5, 2), Dims: 1, Elem: pgtype.NumericOID, Name: "_numeric"},
			"{1.50,-0.01,NaN}", []leveledValue{i32(150, 0, 3), i32(-1, 1, 3), null(1, 2)}},
		{"unbounded numeric", pgType{OID: pgtype.NumericArrayOID, Typmod: -1, Dims: 1, Elem: pgtype.NumericOID, Name: "_numeric"},
			"{1.50,NaN,-Infinity}", []leveledValue{s("1.50", 0, 3), s("NaN", 1, 3), s("-Infinity", 1, 3)}},
		{"box", arr(pgtype.BoxOID, 1), "{(1,1),(0,0);(2,2),(1,1)}",
			[]leveledValue{s("(1,1),(0,0)", 0, 3), s("(2,2),(1,1)", 1, 3)}},
		{"timestamptz", arr(pgtype.TimestamptzOID, 1), `{"1970-01-01 00:00:01+00",infinity}`,
			[]leveledValue{{parquet.Int64Value(1e6), 0, 3}, {parquet.Int64Value(math.MaxInt64), 1, 3}}},
		{"bytea", arr(pgtype.ByteaOID, 1), `{"\\x00ff",NULL}`,
			[]leveledValue{s("\x00\xff", 0, 3), null(1, 2)}},
		{"white space", arr(pgtype.Int4OID, 2), " { { 1 , 2 } , { 3 , 4 } } ",
			[]leveledValue{i32(1, 0, 5), i32(2, 2, 5), i32(3, 1, 5), i32(4, 2, 5)}},
		{"unquoted escapes", arr(pgtype.TextOID, 1), `{a\,b,c\\}`, []leveledValue{s("a,b", 0, 3), s(`c\`, 1, 3)}},
		{"unknown element type", arr(70000, 1), `{"(1,\"x y\")",NULL}`,
			[]leveledValue{s(`(1,"x y")`, 0, 3), null(1, 2)}},
	}
	for _, tt := range tests {
		c := newConverter(tt.typ)
		row, err := c.appendText(nil, []byte(tt.text), false, 2)
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if len(row) != len(tt.want) {
			t.Errorf("%s: got %d values %v, want %d", tt.name, len(row), row, len(tt.want))
			continue
		}
		for i, w := range tt.want {
			g := row[i]
			if g.Column() != 2 || g.RepetitionLevel() != w.rep || g.DefinitionLevel() != w.def || !sameParquetValue(g, w.v) {
				t.Errorf("%s: value %d: got %v (col %d, rep %d, def %d), want %v (rep %d, def %d)",
					tt.name, i, g, g.Column(), g.RepetitionLevel(), g.DefinitionLevel(), w.v, w.rep, w.def)
			}
		}
	}
}

func TestListConverterErrors(t *testing.T) {
	t.Parallel()
	typ := pgType{OID: pgtype.Int4ArrayOID, Typmod: -1, Dims: 1, Elem: pgtype.Int4OID, Name: "_int4"}
	for _, text := range []string{
		"", "{", "{1,2", "{1,,2}", "{1,2}}", "{1,2}x", `{"1}`, "1,2", "{1,x}",
		"{{{{{{{{1}}}}}}}}", "{1,2147483648}", `{"\`,
	} {
		c := newConverter(typ)
		row, err := c.appendText(parquet.Row{}, []byte(text), false, 0)
		if err == nil {
			t.Errorf("%q: no error, got %v", text, row)
			continue
		}
		if len(row) != 0 {
			t.Errorf("%q: error left %d values in the row", text, len(row))
		}
		if !strings.Contains(err.Error(), "_int4") {
			t.Errorf("%q: error %q does not name the type", text, err)
		}
	}
	_, err := newConverter(typ).appendText(nil, []byte("{1,x}"), false, 0)
	if want := `compact: convert _int4 value "{1,x}": int4 element "x": invalid syntax`; err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
	if !errors.Is(err, errSyntax) {
		t.Errorf("error %v does not wrap errSyntax", err)
	}
}

func TestErrorShortensValue(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("é", 100)
	_, err := newConverter(pgType{OID: pgtype.Int4OID, Typmod: -1, Name: "int4"}).appendText(nil, []byte(long), false, 0)
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	if len(msg) > 120 || !strings.Contains(msg, "…") || !strings.Contains(msg, "int4") {
		t.Errorf("error not shortened: %s", msg)
	}
}

// The levels the converters write must be the ones the node declares.
func TestConverterNodes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		typ               pgType
		leafPath          []string
		maxRep, maxDef    int
		physical, logical string
	}{
		{pgType{OID: pgtype.Int2OID, Typmod: -1}, []string{"c"}, 0, 1, "INT32", "INT(16,true)"},
		{pgType{OID: pgtype.TimeOID, Typmod: -1}, []string{"c"}, 0, 1, "INT64", "TIME(isAdjustedToUTC=false,unit=MICROS)"},
		{pgType{OID: pgtype.TimestampOID, Typmod: -1}, []string{"c"}, 0, 1, "INT64", "TIMESTAMP(isAdjustedToUTC=false,unit=MICROS)"},
		{pgType{OID: pgtype.TimestamptzOID, Typmod: -1}, []string{"c"}, 0, 1, "INT64", "TIMESTAMP(isAdjustedToUTC=true,unit=MICROS)"},
		{pgType{OID: pgtype.NumericOID, Typmod: numericTypmod(38, 6)}, []string{"c"}, 0, 1, "FIXED_LEN_BYTE_ARRAY", "DECIMAL(38,6)"},
		{pgType{OID: pgtype.Int4ArrayOID, Typmod: -1, Dims: 1, Elem: pgtype.Int4OID}, []string{"c", "list", "element"}, 1, 3, "INT32", "INT(32,true)"},
		{pgType{OID: pgtype.TextArrayOID, Typmod: -1, Dims: 2, Elem: pgtype.TextOID}, []string{"c", "list", "element", "list", "element"}, 2, 5, "BYTE_ARRAY", "STRING"},
		{pgType{OID: pgtype.TextArrayOID, Typmod: -1, Dims: 9, Elem: pgtype.TextOID}, nil, 6, 13, "BYTE_ARRAY", "STRING"},
	}
	for _, tt := range tests {
		schema := parquet.NewSchema("t", orderedGroup{{"c", newConverter(tt.typ).node()}})
		cols := schema.Columns()
		if len(cols) != 1 {
			t.Errorf("%d: %d leaf columns, want 1", tt.typ.OID, len(cols))
			continue
		}
		if tt.leafPath != nil && strings.Join(cols[0], ".") != strings.Join(tt.leafPath, ".") {
			t.Errorf("%d: leaf path %v, want %v", tt.typ.OID, cols[0], tt.leafPath)
		}
		leaf, _ := schema.Lookup(cols[0]...)
		if leaf.MaxRepetitionLevel != tt.maxRep || leaf.MaxDefinitionLevel != tt.maxDef {
			t.Errorf("%d: max levels (rep %d, def %d), want (%d, %d)", tt.typ.OID, leaf.MaxRepetitionLevel, leaf.MaxDefinitionLevel, tt.maxRep, tt.maxDef)
		}
		typ := leaf.Node.Type()
		var logical string
		if lt := typ.LogicalType(); lt != nil {
			logical = lt.String()
		} else {
			logical = "<nil>"
		}
		if typ.Kind().String() != tt.physical || logical != tt.logical {
			t.Errorf("%d: leaf %s %s, want %s %s", tt.typ.OID, typ.Kind(), logical, tt.physical, tt.logical)
		}
	}
}

func TestDecimalOf(t *testing.T) {
	t.Parallel()
	tests := []struct {
		typmod int32
		p, s   int
		ok     bool
	}{
		{-1, 0, 0, false},
		{numericTypmod(5, 2), 5, 2, true},
		{numericTypmod(38, 38), 38, 38, true},
		{numericTypmod(38, 0), 38, 0, true},
		{numericTypmod(39, 0), 0, 0, false},
		{numericTypmod(1000, 0), 0, 0, false},
		{numericTypmod(2, -3), 5, 0, true},
		{numericTypmod(3, 5), 5, 5, true},
		{numericTypmod(36, -3), 0, 0, false},
	}
	for _, tt := range tests {
		p, s, ok := decimalOf(tt.typmod)
		if p != tt.p || s != tt.s || ok != tt.ok {
			t.Errorf("decimalOf(%d) = %d, %d, %v; want %d, %d, %v", tt.typmod, p, s, ok, tt.p, tt.s, tt.ok)
		}
	}
	for p, want := range map[int]int{18: 8, 19: 9, 21: 9, 22: 10, 30: 13, 38: 16} {
		if got := decimalBytes(p); got != want {
			t.Errorf("decimalBytes(%d) = %d, want %d", p, got, want)
		}
	}
}

// appendText copies: the values stay right when the caller reuses its buffer.
func TestConverterCopies(t *testing.T) {
	t.Parallel()
	buf := []byte(`{"abc",def}`)
	row, err := newConverter(pgType{OID: pgtype.TextArrayOID, Typmod: -1, Dims: 1, Elem: pgtype.TextOID}).appendText(nil, buf, false, 0)
	if err != nil {
		t.Fatal(err)
	}
	row, err = newConverter(pgType{OID: pgtype.TextOID, Typmod: -1}).appendText(row, buf, false, 1)
	if err != nil {
		t.Fatal(err)
	}
	for i := range buf {
		buf[i] = 'X'
	}
	if got := string(row[0].ByteArray()) + "|" + string(row[1].ByteArray()) + "|" + string(row[2].ByteArray()); got != `abc|def|{"abc",def}` {
		t.Errorf("values alias the input: %s", got)
	}
}

func BenchmarkConverters(b *testing.B) {
	convs := []converter{
		newConverter(pgType{OID: pgtype.Int8OID, Typmod: -1}),
		newConverter(pgType{OID: pgtype.TextOID, Typmod: -1}),
		newConverter(pgType{OID: pgtype.NumericOID, Typmod: numericTypmod(12, 2)}),
		newConverter(pgType{OID: pgtype.TimestamptzOID, Typmod: -1}),
		newConverter(pgType{OID: pgtype.Int4ArrayOID, Typmod: -1, Dims: 1, Elem: pgtype.Int4OID}),
	}
	vals := [][]byte{[]byte("1234567890"), []byte("some text value"), []byte("12345.67"), []byte("2024-05-06 07:08:09.123456+00"), []byte("{1,2,3,NULL}")}
	row := make(parquet.Row, 0, 16)
	b.ReportAllocs()
	for b.Loop() {
		row = row[:0]
		for i, c := range convs {
			var err error
			if row, err = c.appendText(row, vals[i], false, i); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// TestParquetGoRoundTrip writes many rows over many small pages and reads
// them back with parquet-go: every value, with its levels, comes back.
func TestParquetGoRoundTrip(t *testing.T) {
	t.Parallel()
	types := []pgType{
		{OID: pgtype.JSONBOID, Typmod: -1},
		{OID: pgtype.TextArrayOID, Typmod: -1, Dims: 2, Elem: pgtype.TextOID},
		{OID: pgtype.NumericOID, Typmod: numericTypmod(30, 2)},
		{OID: pgtype.UUIDOID, Typmod: -1},
		{OID: pgtype.Float8ArrayOID, Typmod: -1, Dims: 1, Elem: pgtype.Float8OID},
		{OID: pgtype.TimestamptzOID, Typmod: -1},
	}
	text := func(r, i int) string {
		switch i {
		case 0:
			return fmt.Sprintf(`{"a": %d}`, r)
		case 1:
			return []string{"{}", "{{a,NULL},{b,c}}", fmt.Sprintf(`{{"x %d"}}`, r)}[r%3]
		case 2:
			return fmt.Sprintf("-%d.%02d", r, r%100)
		case 3:
			return fmt.Sprintf("a0eebc99-9c0b-4ef8-bb6d-6bb9bd%06d", r)
		case 4:
			return []string{"{}", "{NaN,-0,1.5}", "{NULL}", "{-Infinity}"}[r%4]
		}
		return fmt.Sprintf("2024-01-01 00:00:%02d.%d+01", r%60, r%10)
	}
	fields := orderedGroup{}
	convs := make([]converter, len(types))
	for i, typ := range types {
		convs[i] = newConverter(typ)
		fields = append(fields, field{fmt.Sprint("c", i), convs[i].node()})
	}
	var buf bytes.Buffer
	w := parquet.NewWriter(&buf, parquet.NewSchema("t", fields), parquet.Compression(&zstd.Codec{}), parquet.PageBufferSize(1024))
	const n = 10000
	written := make([]parquet.Row, 0, n)
	for r := range n {
		var row parquet.Row
		for i, c := range convs {
			var err error
			if row, err = c.appendText(row, []byte(text(r, i)), (r+i)%5 == 0, i); err != nil {
				t.Fatal(err)
			}
		}
		written = append(written, row)
	}
	for i := 0; i < n; i += 1000 {
		if _, err := w.WriteRows(written[i : i+1000]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := parquet.OpenFile(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	read := make([]parquet.Row, n+1)
	got, err := parquet.NewReader(f).ReadRows(read)
	if got != n || (err != nil && err != io.EOF) {
		t.Fatalf("read %d rows, %v; want %d", got, err, n)
	}
	for r := range n {
		a, b := read[r], written[r]
		same := len(a) == len(b)
		for i := 0; same && i < len(a); i++ {
			same = sameParquetValue(a[i], b[i]) && a[i].Column() == b[i].Column() &&
				a[i].RepetitionLevel() == b[i].RepetitionLevel() && a[i].DefinitionLevel() == b[i].DefinitionLevel()
		}
		if !same {
			t.Fatalf("row %d: read %v, wrote %v", r, a, b)
		}
	}
}

// FuzzConverters: no input panics, and a failed conversion leaves the row
// as it was.
func FuzzConverters(f *testing.F) {
	for _, s := range []string{"{}", "{{1,2},{3,4}}", `{"a\"b",NULL}`, "[0:1]={1,2}", "2024-01-01 00:00:00+05:21:10 BC",
		"-0.01", `\x00ff`, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "24:00:00", "NaN", "{{{{{{{1}}}}}}}", "{1,{2}}"} {
		f.Add([]byte(s))
	}
	types := []pgType{
		{OID: pgtype.Int4ArrayOID, Typmod: -1, Dims: 1, Elem: pgtype.Int4OID},
		{OID: pgtype.TextArrayOID, Typmod: -1, Dims: 3, Elem: pgtype.TextOID},
		{OID: pgtype.NumericArrayOID, Typmod: numericTypmod(20, 4), Dims: 2, Elem: pgtype.NumericOID},
		{OID: pgtype.BoxArrayOID, Typmod: -1, Dims: 1, Elem: pgtype.BoxOID},
		{OID: pgtype.NumericOID, Typmod: numericTypmod(38, 10)},
		{OID: pgtype.NumericOID, Typmod: numericTypmod(5, 2)},
		{OID: pgtype.TimestamptzOID, Typmod: -1},
		{OID: pgtype.TimestampOID, Typmod: -1},
		{OID: pgtype.DateOID, Typmod: -1},
		{OID: pgtype.TimeOID, Typmod: -1},
		{OID: pgtype.ByteaOID, Typmod: -1},
		{OID: pgtype.UUIDOID, Typmod: -1},
		{OID: pgtype.Int2OID, Typmod: -1},
		{OID: pgtype.Float4OID, Typmod: -1},
	}
	f.Fuzz(func(t *testing.T, text []byte) {
		for _, typ := range types {
			row := parquet.Row{parquet.Int32Value(1).Level(0, 0, 0)}
			got, err := newConverter(typ).appendText(row, text, false, 1)
			if err != nil && len(got) != 1 {
				t.Fatalf("%d %q: error %v left %d values", typ.OID, text, err, len(got)-1)
			}
			if err == nil && len(got) < 2 {
				t.Fatalf("%d %q: no value appended", typ.OID, text)
			}
		}
	})
}
