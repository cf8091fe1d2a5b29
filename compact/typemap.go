package compact

// The type map: how one PostgreSQL column becomes one Parquet leaf column.
// docs/types.md is the user-facing version of this file; keep them in step.

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"math/big"
	"sync/atomic"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/parquet-go/parquet-go"
)

// pgType is what compaction knows about a column's type.
type pgType struct {
	OID    uint32 // the column's type OID after resolving domains to their base type
	Typmod int32  // atttypmod (-1 when none); for a domain, the domain's typtypmod if the column has none
	Dims   int    // declared array dimensions (pg_attribute.attndims); for an array type with attndims 0, use 1; 0 for scalars
	Elem   uint32 // array element type OID (after domain resolution); 0 for scalars
	Name   string // the type's name, e.g. "int4", "_text", "mood" (for the schema JSON and errors)
}

// converter turns one column's values, in PostgreSQL's text output format (as
// pgoutput sends them), into Parquet values.
type converter interface {
	node() parquet.Node // the column's Parquet node; always nullable (optional)
	// appendText appends the leaf values of one column value to row, using leaf
	// column index col. null reports SQL NULL (text is then nil).
	appendText(row parquet.Row, text []byte, null bool, col int) (parquet.Row, error)
}

// The converters newConverter returns never retain text: the values they
// append own their bytes, so the caller may reuse its buffer at once. A
// parse failure leaves row as it was and returns an error naming the type and
// the value. Each converter also implements nullCounter.

// nullCounter reports the values a converter wrote as NULL by rule: a valid
// value the Parquet type cannot hold (see errUnrepresentable and
// docs/types.md) is written as NULL and counted, so that compaction can
// report it rather than lose it silently. Safe for concurrent use.
type nullCounter interface {
	// nulled returns how many non-NULL values were written as NULL because
	// the column's Parquet type cannot hold them.
	nulled() uint64
}

// maxArrayDims is PostgreSQL's MAXDIM: no array value has more dimensions.
const maxArrayDims = 6

// newConverter returns the converter for a column of type t. It never fails:
// a type it does not know is kept as its text.
func newConverter(t pgType) converter {
	name := t.Name
	if name == "" {
		name = builtinTypeName(t.OID)
	}
	if t.Dims > 0 || t.Elem != 0 {
		if t.Elem == 0 {
			// An array whose element type is unknown: keep the literal.
			return &scalarConverter{conv: textScalar{}, name: name}
		}
		dims := max(t.Dims, 1)
		dims = min(dims, maxArrayDims)
		elemName := builtinTypeName(t.Elem)
		if len(name) > 1 && name[0] == '_' {
			elemName = name[1:]
		}
		delim := byte(',')
		if t.Elem == pgtype.BoxOID {
			delim = ';'
		}
		return &listConverter{
			elem:     newScalar(t.Elem, t.Typmod),
			dims:     dims,
			delim:    delim,
			name:     name,
			elemName: elemName,
		}
	}
	return &scalarConverter{conv: newScalar(t.OID, t.Typmod), name: name}
}

// scalar converts one non-NULL value of a scalar type.
type scalar interface {
	leaf() parquet.Node // the required leaf node
	// parse returns the value (without levels). It returns
	// errUnrepresentable for a valid value the leaf type cannot hold.
	parse(text []byte) (parquet.Value, error)
}

func newScalar(oid uint32, typmod int32) scalar {
	switch oid {
	case pgtype.BoolOID:
		return boolScalar{}
	case pgtype.Int2OID:
		return intScalar{bits: 16}
	case pgtype.Int4OID:
		return intScalar{bits: 32}
	case pgtype.Int8OID:
		return intScalar{bits: 64}
	case pgtype.OIDOID:
		return oidScalar{}
	case pgtype.Float4OID:
		return floatScalar{bits: 32}
	case pgtype.Float8OID:
		return floatScalar{bits: 64}
	case pgtype.NumericOID:
		if p, s, ok := decimalOf(typmod); ok {
			return newDecimalScalar(p, s)
		}
		return textScalar{} // unbounded numeric (or p > 38): exact text
	case pgtype.ByteaOID:
		return byteaScalar{}
	case pgtype.UUIDOID:
		return uuidScalar{}
	case pgtype.JSONOID, pgtype.JSONBOID:
		return jsonScalar{}
	case pgtype.DateOID:
		return dateScalar{}
	case pgtype.TimeOID:
		return timeScalar{}
	case pgtype.TimestampOID:
		return timestampScalar{utc: false}
	case pgtype.TimestamptzOID:
		return timestampScalar{utc: true}
	}
	// text, varchar, bpchar, name, "char", citext, enums, and everything
	// without a typed mapping: its text form.
	return textScalar{}
}

// decimalOf returns the DECIMAL(precision, scale) that holds every value of
// numeric(typmod) exactly, or ok false when there is none (unbounded numeric,
// or more than 38 digits). PostgreSQL 15 allows a negative scale
// (numeric(2,-3) holds 12000) and a scale above the precision (numeric(3,5)
// holds 0.00123); those widen to DECIMAL(p-s, 0) and DECIMAL(s, s).
func decimalOf(typmod int32) (precision, scale int, ok bool) {
	const varhdrsz = 4
	if typmod < varhdrsz {
		return 0, 0, false
	}
	t := typmod - varhdrsz
	p := int((t >> 16) & 0xffff)
	s := int(((t & 0x7ff) ^ 1024) - 1024)
	switch {
	case s < 0:
		p, s = p-s, 0
	case s > p:
		p = s
	}
	if p < 1 || p > 38 {
		return 0, 0, false
	}
	return p, s, true
}

// scalarConverter is a converter for a non-array column: an optional leaf.
type scalarConverter struct {
	conv  scalar
	name  string
	nulls atomic.Uint64
}

func (c *scalarConverter) node() parquet.Node { return parquet.Optional(c.conv.leaf()) }

func (c *scalarConverter) nulled() uint64 { return c.nulls.Load() }

func (c *scalarConverter) appendText(row parquet.Row, text []byte, null bool, col int) (parquet.Row, error) {
	if null {
		return append(row, parquet.NullValue().Level(0, 0, col)), nil
	}
	v, err := c.conv.parse(text)
	if errors.Is(err, errUnrepresentable) {
		c.nulls.Add(1)
		return append(row, parquet.NullValue().Level(0, 0, col)), nil
	}
	if err != nil {
		return row, valueError(c.name, text, err)
	}
	return append(row, v.Level(0, 1, col)), nil
}

// listConverter is a converter for an array column with dims declared
// dimensions: dims nested 3-level LISTs, every level optional:
//
//	optional group a (LIST)            def 1  rep -
//	  repeated group list              def 2  rep 1
//	    optional group element (LIST)  def 3        (dims ≥ 2, and so on)
//	      ...
//	        optional <leaf> element    def 2·dims+1
//
// so for the list at depth k (1-based): def 2k-1 means "present but empty",
// 2k "has an item that is NULL", and an item begins a new repetition at
// level k.
//
// An array value whose nesting differs from the declared dimensions
// (PostgreSQL does not enforce attndims) keeps all its elements, in order: a
// shallower value is wrapped in single-item outer lists ({1,2} in an int[][]
// column is [[1,2]]), and a deeper value has its innermost dimensions merged
// into the column's last one ({{1,2},{3,4}} in an int[] column is
// [1,2,3,4]). Lower bounds ("[0:2]={...}") are dropped. "{}" is an empty
// list at any depth.
type listConverter struct {
	elem     scalar
	dims     int
	delim    byte
	name     string // the array type, for errors
	elemName string
	nulls    atomic.Uint64
}

func (c *listConverter) node() parquet.Node {
	n := parquet.Optional(c.elem.leaf())
	for range c.dims {
		n = parquet.Optional(parquet.List(n))
	}
	return n
}

func (c *listConverter) nulled() uint64 { return c.nulls.Load() }

func (c *listConverter) appendText(row parquet.Row, text []byte, null bool, col int) (parquet.Row, error) {
	if null {
		return append(row, parquet.NullValue().Level(0, 0, col)), nil
	}
	e := arrayEmitter{
		c:       c,
		s:       newArrayScanner(text, c.delim),
		row:     row,
		col:     col,
		pending: 0,
	}
	start := len(row)
	if err := e.emit(); err != nil {
		return row[:start], valueError(c.name, text, err)
	}
	return e.row, nil
}

// arrayEmitter walks one array literal and appends its leaf values.
type arrayEmitter struct {
	c       *listConverter
	s       arrayScanner
	row     parquet.Row
	col     int
	pending int // repetition level of the next value; -1 until an item starts
	items   [maxArrayDims + 2]int
}

func (e *arrayEmitter) emit() error {
	depth := e.s.depth()
	if depth == 0 {
		return errSyntax
	}
	if isEmptyArray(e.s.src[e.s.pos:]) {
		// "{}": an empty list, whatever the declared dimensions.
		e.row = append(e.row, parquet.NullValue().Level(0, 1, e.col))
		return nil
	}
	// A value shallower than declared starts below single-item outer lists.
	k := max(e.c.dims-depth+1, 1)
	if err := e.list(k, 1); err != nil {
		return err
	}
	return e.s.end()
}

func isEmptyArray(b []byte) bool {
	if len(b) < 2 || b[1] != '}' && !isArraySpace(b[1]) {
		return false
	}
	b = bytes.TrimFunc(b, func(r rune) bool { return r < utf8.RuneSelf && isArraySpace(byte(r)) })
	return string(b) == "{}"
}

// list reads a '{...}' that is a new list at declared depth k (nesting is the
// literal's own depth, for the recursion limit).
func (e *arrayEmitter) list(k, nesting int) error {
	e.items[k] = 0
	if err := e.listItems(k, nesting); err != nil {
		return err
	}
	if e.items[k] == 0 {
		e.value(parquet.NullValue(), 2*k-1)
	}
	return nil
}

// listItems reads a '{...}' whose items belong to the list at depth k.
func (e *arrayEmitter) listItems(k, nesting int) error {
	if nesting > maxArrayDims {
		return errSyntax
	}
	if err := e.s.expect('{'); err != nil {
		return err
	}
	if e.s.peek() == '}' {
		e.s.pos++
		return nil
	}
	for {
		if e.s.peek() == '{' {
			if k < e.c.dims {
				e.newItem(k)
				if err := e.list(k+1, nesting+1); err != nil {
					return err
				}
			} else if err := e.listItems(k, nesting+1); err != nil {
				// Deeper than declared: merge into this list.
				return err
			}
		} else {
			if k < e.c.dims {
				return errSyntax // mixed nesting: not an array PostgreSQL prints
			}
			text, null, err := e.s.element()
			if err != nil {
				return err
			}
			e.newItem(k)
			if null {
				e.value(parquet.NullValue(), 2*k)
			} else {
				v, err := e.c.elem.parse(text)
				switch {
				case errors.Is(err, errUnrepresentable):
					e.c.nulls.Add(1)
					e.value(parquet.NullValue(), 2*k)
				case err != nil:
					return fmt.Errorf("%s element %q: %w", e.c.elemName, shortValue(text), err)
				default:
					e.value(v, 2*k+1)
				}
			}
		}
		switch e.s.peek() {
		case e.c.delim:
			e.s.pos++
		case '}':
			e.s.pos++
			return nil
		default:
			return errSyntax
		}
	}
}

// newItem notes that an item begins in the list at depth k.
func (e *arrayEmitter) newItem(k int) {
	if e.items[k] > 0 && e.pending < 0 {
		e.pending = k
	}
	e.items[k]++
}

func (e *arrayEmitter) value(v parquet.Value, def int) {
	e.row = append(e.row, v.Level(max(e.pending, 0), def, e.col))
	e.pending = -1
}

// valueError is the error for a value that cannot be converted: it names the
// type and a shortened value.
func valueError(typeName string, text []byte, err error) error {
	return fmt.Errorf("compact: convert %s value %q: %w", typeName, shortValue(text), err)
}

// shortValue returns text cut to at most 64 bytes for error messages.
func shortValue(text []byte) string {
	const n = 64
	if len(text) <= n {
		return string(text)
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(text[cut]) {
		cut--
	}
	return string(text[:cut]) + "…"
}

// builtinTypeName names the built-in types this file maps, for errors when
// pgType.Name is empty.
func builtinTypeName(oid uint32) string {
	switch oid {
	case pgtype.BoolOID:
		return "bool"
	case pgtype.Int2OID:
		return "int2"
	case pgtype.Int4OID:
		return "int4"
	case pgtype.Int8OID:
		return "int8"
	case pgtype.OIDOID:
		return "oid"
	case pgtype.Float4OID:
		return "float4"
	case pgtype.Float8OID:
		return "float8"
	case pgtype.NumericOID:
		return "numeric"
	case pgtype.ByteaOID:
		return "bytea"
	case pgtype.UUIDOID:
		return "uuid"
	case pgtype.JSONOID:
		return "json"
	case pgtype.JSONBOID:
		return "jsonb"
	case pgtype.DateOID:
		return "date"
	case pgtype.TimeOID:
		return "time"
	case pgtype.TimestampOID:
		return "timestamp"
	case pgtype.TimestamptzOID:
		return "timestamptz"
	}
	return fmt.Sprintf("oid %d", oid)
}

// The scalars.

type boolScalar struct{}

func (boolScalar) leaf() parquet.Node { return parquet.Leaf(parquet.BooleanType) }
func (boolScalar) parse(b []byte) (parquet.Value, error) {
	v, err := parseTextBool(b)
	return parquet.BooleanValue(v), err
}

// intScalar is int2 (INT32 annotated INT(16, signed), which readers show as
// a 16-bit integer), int4 (INT32) or int8 (INT64).
type intScalar struct{ bits int }

func (s intScalar) leaf() parquet.Node {
	switch s.bits {
	case 16:
		return parquet.Int(16)
	case 32:
		return parquet.Leaf(parquet.Int32Type)
	}
	return parquet.Leaf(parquet.Int64Type)
}

func (s intScalar) parse(b []byte) (parquet.Value, error) {
	v, err := parseTextInt(b, s.bits)
	if err != nil {
		return parquet.Value{}, err
	}
	if s.bits == 64 {
		return parquet.Int64Value(v), nil
	}
	return parquet.Int32Value(int32(v)), nil
}

// oidScalar is oid as INT64: every reader has a signed 64-bit integer, not
// every one reads Parquet's UINT(32).
type oidScalar struct{}

func (oidScalar) leaf() parquet.Node { return parquet.Leaf(parquet.Int64Type) }
func (oidScalar) parse(b []byte) (parquet.Value, error) {
	v, err := parseTextInt(b, 64)
	if err == nil && (v < 0 || v > math.MaxUint32) {
		err = errRange
	}
	return parquet.Int64Value(v), err
}

type floatScalar struct{ bits int }

func (s floatScalar) leaf() parquet.Node {
	if s.bits == 32 {
		return parquet.Leaf(parquet.FloatType)
	}
	return parquet.Leaf(parquet.DoubleType)
}

func (s floatScalar) parse(b []byte) (parquet.Value, error) {
	f, err := parseTextFloat(b, s.bits)
	if err != nil {
		return parquet.Value{}, err
	}
	if s.bits == 32 {
		return parquet.FloatValue(float32(f)), nil
	}
	return parquet.DoubleValue(f), nil
}

// decimalScalar is numeric(p,s) as DECIMAL(p,s): INT32 up to 9 digits, INT64
// up to 18, else a FIXED_LEN_BYTE_ARRAY of the fewest bytes that hold
// 10^p-1, big-endian two's complement.
type decimalScalar struct {
	precision, scale int
	size             int // FIXED_LEN_BYTE_ARRAY length when precision > 18
}

func newDecimalScalar(p, s int) decimalScalar {
	d := decimalScalar{precision: p, scale: s}
	if p > 18 {
		d.size = decimalBytes(p)
	}
	return d
}

// decimalBytes returns the fewest bytes whose two's complement holds 10^p-1.
func decimalBytes(p int) int {
	maxUnscaled := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(p)), nil)
	maxUnscaled.Sub(maxUnscaled, big.NewInt(1))
	return maxUnscaled.BitLen()/8 + 1 // BitLen bits plus a sign bit
}

func (d decimalScalar) leaf() parquet.Node {
	switch {
	case d.precision <= 9:
		return parquet.Decimal(d.scale, d.precision, parquet.Int32Type)
	case d.precision <= 18:
		return parquet.Decimal(d.scale, d.precision, parquet.Int64Type)
	}
	return parquet.Decimal(d.scale, d.precision, parquet.FixedLenByteArrayType(d.size))
}

func (d decimalScalar) parse(b []byte) (parquet.Value, error) {
	mag, neg, err := parseTextDecimal(b, d.precision, d.scale)
	if err != nil {
		return parquet.Value{}, err
	}
	if neg {
		mag = mag.neg()
	}
	switch {
	case d.precision <= 9:
		return parquet.Int32Value(int32(mag.lo)), nil
	case d.precision <= 18:
		return parquet.Int64Value(int64(mag.lo)), nil
	}
	var full [16]byte
	for i := range 8 {
		full[7-i] = byte(mag.hi >> (8 * i))
		full[15-i] = byte(mag.lo >> (8 * i))
	}
	out := make([]byte, d.size)
	copy(out, full[16-d.size:])
	return parquet.FixedLenByteArrayValue(out), nil
}

// textScalar keeps the text exactly as PostgreSQL sent it (bpchar padding
// included).
type textScalar struct{}

func (textScalar) leaf() parquet.Node { return parquet.String() }
func (textScalar) parse(b []byte) (parquet.Value, error) {
	return parquet.ByteArrayValue(bytes.Clone(b)), nil
}

type byteaScalar struct{}

func (byteaScalar) leaf() parquet.Node { return parquet.Leaf(parquet.ByteArrayType) }
func (byteaScalar) parse(b []byte) (parquet.Value, error) {
	v, err := parseTextBytea(b)
	return parquet.ByteArrayValue(v), err
}

type uuidScalar struct{}

func (uuidScalar) leaf() parquet.Node { return parquet.UUID() }
func (uuidScalar) parse(b []byte) (parquet.Value, error) {
	u, err := parseTextUUID(b)
	if err != nil {
		return parquet.Value{}, err
	}
	return parquet.FixedLenByteArrayValue(u[:]), nil
}

// jsonScalar is json and jsonb as JSON: the bytes as sent (json keeps its
// white space and key order; jsonb arrives normalized).
type jsonScalar struct{}

func (jsonScalar) leaf() parquet.Node { return parquet.JSON() }
func (jsonScalar) parse(b []byte) (parquet.Value, error) {
	return parquet.ByteArrayValue(bytes.Clone(b)), nil
}

type dateScalar struct{}

func (dateScalar) leaf() parquet.Node { return parquet.Date() }
func (dateScalar) parse(b []byte) (parquet.Value, error) {
	d, err := parseTextDate(b)
	return parquet.Int32Value(d), err
}

// timeScalar is time as TIME(MICROS, isAdjustedToUTC=false): a wall-clock
// time (parquet.Time would mark it UTC-adjusted).
type timeScalar struct{}

func (timeScalar) leaf() parquet.Node { return parquet.TimeAdjusted(parquet.Microsecond, false) }
func (timeScalar) parse(b []byte) (parquet.Value, error) {
	t, err := parseTextTime(b)
	return parquet.Int64Value(t), err
}

// timestampScalar is timestamp as TIMESTAMP(MICROS, isAdjustedToUTC=false)
// and timestamptz as TIMESTAMP(MICROS, isAdjustedToUTC=true).
type timestampScalar struct{ utc bool }

func (s timestampScalar) leaf() parquet.Node {
	return parquet.TimestampAdjusted(parquet.Microsecond, s.utc)
}

func (s timestampScalar) parse(b []byte) (parquet.Value, error) {
	t, err := parseTextTimestamp(b, s.utc)
	return parquet.Int64Value(t), err
}
