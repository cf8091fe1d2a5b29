package compact

// Parsers of PostgreSQL's text output format, as pgoutput sends column values
// (the walsender runs with DateStyle=ISO, IntervalStyle=postgres,
// extra_float_digits=3; the parsers do not depend on TimeZone). They take the
// bytes of one value and never retain them. They return errors without
// context; the converters in typemap.go add the type name and the value.

import (
	"errors"
	"math"
	"math/bits"
	"strconv"
	"unsafe"
)

var (
	errSyntax = errors.New("invalid syntax")
	errRange  = errors.New("out of range")

	// errUnrepresentable reports a valid PostgreSQL value that the column's
	// Parquet type cannot hold (numeric NaN in a DECIMAL column, a timestamp
	// past year 294247). Converters write such a value as NULL and count it;
	// docs/types.md lists every case.
	errUnrepresentable = errors.New("not representable in the Parquet type")
)

// parseTextBool parses bool output: "t" or "f" (also "true"/"false").
func parseTextBool(b []byte) (bool, error) {
	switch string(b) {
	case "t", "true":
		return true, nil
	case "f", "false":
		return false, nil
	}
	return false, errSyntax
}

// parseTextInt parses a decimal integer that must fit in bitSize bits.
func parseTextInt(b []byte, bitSize int) (int64, error) {
	neg := false
	if len(b) > 0 && (b[0] == '-' || b[0] == '+') {
		neg = b[0] == '-'
		b = b[1:]
	}
	if len(b) == 0 {
		return 0, errSyntax
	}
	limit := uint64(1) << (bitSize - 1) // |min|; max is limit-1
	var u uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, errSyntax
		}
		if u > (limit+9)/10 {
			return 0, errRange
		}
		u = u*10 + uint64(c-'0')
		if u > limit {
			return 0, errRange
		}
	}
	if neg {
		return -int64(u-1) - 1, nil // -limit without overflowing
	}
	if u == limit {
		return 0, errRange
	}
	return int64(u), nil
}

// parseTextFloat parses float4/float8 output, including "NaN", "Infinity",
// "-Infinity" and "-0".
func parseTextFloat(b []byte, bitSize int) (float64, error) {
	if len(b) == 0 {
		return 0, errSyntax
	}
	// The string does not outlive the call: on error strconv keeps it in a
	// *NumError, which is dropped here.
	f, err := strconv.ParseFloat(unsafe.String(&b[0], len(b)), bitSize)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			return 0, errRange
		}
		return 0, errSyntax
	}
	if f != f {
		// PostgreSQL has one NaN, the default quiet NaN; strconv's has
		// another payload. Converted to float32 it is 0x7fc00000.
		return math.Float64frombits(0x7ff8000000000000), nil
	}
	return f, nil
}

// u128 is an unsigned 128-bit integer.
type u128 struct{ hi, lo uint64 }

func (x u128) mulAdd10(d uint64) u128 {
	hi, lo := bits.Mul64(x.lo, 10)
	hi += x.hi * 10
	lo, c := bits.Add64(lo, d, 0)
	return u128{hi + c, lo}
}

// neg returns the two's complement of x.
func (x u128) neg() u128 {
	lo, b := bits.Sub64(0, x.lo, 0)
	hi, _ := bits.Sub64(0, x.hi, b)
	return u128{hi, lo}
}

// parseTextDecimal parses numeric output ("-12.30") into the unscaled value
// of a DECIMAL(precision, scale): text × 10^scale, which must be an integer
// with at most precision digits (precision ≤ 38). "NaN", "Infinity" and
// "-Infinity" return errUnrepresentable. The result is the magnitude and the
// sign; zero is never negative.
func parseTextDecimal(b []byte, precision, scale int) (mag u128, neg bool, err error) {
	switch string(b) {
	case "NaN", "Infinity", "-Infinity", "+Infinity":
		return u128{}, false, errUnrepresentable
	}
	if len(b) > 0 && (b[0] == '-' || b[0] == '+') {
		neg = b[0] == '-'
		b = b[1:]
	}
	intPart, frac := b, []byte(nil)
	for i, c := range b {
		if c == '.' {
			intPart, frac = b[:i], b[i+1:]
			break
		}
	}
	if len(intPart) == 0 && len(frac) == 0 {
		return u128{}, false, errSyntax
	}
	digits := 0 // significant digits accumulated so far
	add := func(c byte) error {
		if c < '0' || c > '9' {
			return errSyntax
		}
		if digits == 0 && c == '0' {
			return nil
		}
		digits++
		if digits > precision {
			return errRange
		}
		mag = mag.mulAdd10(uint64(c - '0'))
		return nil
	}
	for _, c := range intPart {
		if err := add(c); err != nil {
			return u128{}, false, err
		}
	}
	for i, c := range frac {
		if i >= scale {
			// More fractional digits than the scale: only zeros can go.
			if c != '0' {
				if c < '0' || c > '9' {
					return u128{}, false, errSyntax
				}
				return u128{}, false, errRange
			}
			continue
		}
		if err := add(c); err != nil {
			return u128{}, false, err
		}
	}
	for i := len(frac); i < scale; i++ {
		if err := add('0'); err != nil {
			return u128{}, false, err
		}
	}
	if mag == (u128{}) {
		neg = false
	}
	return mag, neg, nil
}

const (
	usPerSecond = int64(1_000_000)
	usPerDay    = 86_400 * usPerSecond

	// The Parquet encodings of PostgreSQL's infinity and -infinity, the same
	// values DuckDB uses for its own infinities.
	dateInfinity      = int32(math.MaxInt32)
	dateNegInfinity   = -int32(math.MaxInt32)
	timestampInfinity = int64(math.MaxInt64)
	timestampNegInf   = -int64(math.MaxInt64)

	// |days| up to this keep days × usPerDay inside int64.
	maxTimestampDays = math.MaxInt64 / usPerDay
)

// parseTextDate parses date output ("2024-02-29", "0044-03-15 BC",
// "infinity") into days since 1970-01-01.
func parseTextDate(b []byte) (int32, error) {
	switch string(b) {
	case "infinity":
		return dateInfinity, nil
	case "-infinity":
		return dateNegInfinity, nil
	}
	b, bc := cutBC(b)
	days, rest, err := scanDate(b, bc)
	if err != nil {
		return 0, err
	}
	if len(rest) != 0 {
		return 0, errSyntax
	}
	// PostgreSQL dates run from 4713 BC to 5874897 AD, well inside int32.
	if days <= int64(dateNegInfinity) || days >= int64(dateInfinity) {
		return 0, errRange
	}
	return int32(days), nil
}

// parseTextTime parses time output ("13:45:00", "23:59:59.999999",
// "24:00:00") into microseconds since midnight.
func parseTextTime(b []byte) (int64, error) {
	us, rest, err := scanClock(b, true)
	if err != nil {
		return 0, err
	}
	if len(rest) != 0 {
		return 0, errSyntax
	}
	return us, nil
}

// parseTextTimestamp parses timestamp output ("2024-01-02 03:04:05.5",
// "0044-03-15 12:00:00 BC", "infinity") into microseconds since
// 1970-01-01 00:00:00. With zone, it parses timestamptz output, whose UTC
// offset ("+00", "-08", "+05:30", "+05:21:10") it subtracts, so the result is
// UTC whatever the session's TimeZone was. A value past int64 microseconds
// (PostgreSQL allows up to 294276 AD) returns errUnrepresentable.
func parseTextTimestamp(b []byte, zone bool) (int64, error) {
	switch string(b) {
	case "infinity":
		return timestampInfinity, nil
	case "-infinity":
		return timestampNegInf, nil
	}
	b, bc := cutBC(b)
	days, rest, err := scanDate(b, bc)
	if err != nil {
		return 0, err
	}
	if len(rest) == 0 || (rest[0] != ' ' && rest[0] != 'T') {
		return 0, errSyntax
	}
	us, rest, err := scanClock(rest[1:], false)
	if err != nil {
		return 0, err
	}
	var offset int64 // seconds east of UTC
	if zone {
		if offset, rest, err = scanOffset(rest); err != nil {
			return 0, err
		}
	}
	if len(rest) != 0 {
		return 0, errSyntax
	}
	if days > maxTimestampDays || days < -maxTimestampDays {
		return 0, errUnrepresentable
	}
	t, ok := addMicros(days*usPerDay, us)
	if ok {
		t, ok = addMicros(t, -offset*usPerSecond)
	}
	// ±MaxInt64 encode the infinities, so a finite value must lie strictly
	// between them.
	if !ok || t >= timestampInfinity || t <= timestampNegInf {
		return 0, errUnrepresentable
	}
	return t, nil
}

func addMicros(a, b int64) (int64, bool) {
	s := a + b
	return s, (s > a) == (b > 0)
}

// cutBC removes a trailing " BC" era marker.
func cutBC(b []byte) ([]byte, bool) {
	if n := len(b); n >= 3 && string(b[n-3:]) == " BC" {
		return b[:n-3], true
	}
	return b, false
}

// scanDate reads "Y...Y-MM-DD" (a year of one or more digits) and returns
// days since 1970-01-01 in the proleptic Gregorian calendar. With bc, year N
// is N BC, i.e. astronomical year 1-N (1 BC is year 0).
func scanDate(b []byte, bc bool) (int64, []byte, error) {
	year, n := scanDigits(b, 9)
	if n == 0 || n >= len(b) || b[n] != '-' {
		return 0, nil, errSyntax
	}
	b = b[n+1:]
	if len(b) < 5 || b[2] != '-' {
		return 0, nil, errSyntax
	}
	month, n1 := scanDigits(b[:2], 2)
	day, n2 := scanDigits(b[3:5], 2)
	if n1 != 2 || n2 != 2 {
		return 0, nil, errSyntax
	}
	if year == 0 {
		return 0, nil, errRange // PostgreSQL prints 1 BC, never year 0
	}
	if bc {
		year = 1 - year
	}
	if month < 1 || month > 12 || day < 1 || day > daysIn(year, month) {
		return 0, nil, errRange
	}
	return daysFromCivil(year, month, day), b[5:], nil
}

// scanClock reads "HH:MM:SS" with an optional fraction of 1 to 6 digits and
// returns microseconds since midnight. allow24 admits 24:00:00 (a time
// value); timestamps never print it.
func scanClock(b []byte, allow24 bool) (int64, []byte, error) {
	if len(b) < 8 || b[2] != ':' || b[5] != ':' {
		return 0, nil, errSyntax
	}
	h, n1 := scanDigits(b[0:2], 2)
	m, n2 := scanDigits(b[3:5], 2)
	s, n3 := scanDigits(b[6:8], 2)
	if n1 != 2 || n2 != 2 || n3 != 2 {
		return 0, nil, errSyntax
	}
	b = b[8:]
	var frac int64
	if len(b) > 0 && b[0] == '.' {
		f, n := scanDigits(b[1:], 7)
		if n == 0 || n > 6 {
			return 0, nil, errSyntax
		}
		for i := n; i < 6; i++ {
			f *= 10
		}
		frac = f
		b = b[1+n:]
	}
	if m > 59 || s > 59 || h > 24 || (h == 24 && (!allow24 || m != 0 || s != 0 || frac != 0)) {
		return 0, nil, errRange
	}
	return (h*3600+m*60+s)*usPerSecond + frac, b, nil
}

// scanOffset reads a UTC offset "+HH", "+HH:MM" or "+HH:MM:SS" (or "-...")
// and returns it in seconds east of UTC.
func scanOffset(b []byte) (int64, []byte, error) {
	if len(b) < 3 || (b[0] != '+' && b[0] != '-') {
		return 0, nil, errSyntax
	}
	sign := int64(1)
	if b[0] == '-' {
		sign = -1
	}
	b = b[1:]
	var parts [3]int64
	for i := range parts {
		if i > 0 {
			if len(b) == 0 || b[0] != ':' {
				break
			}
			b = b[1:]
		}
		v, n := scanDigits(b, 2)
		if n != 2 {
			return 0, nil, errSyntax
		}
		parts[i] = v
		b = b[2:]
	}
	if parts[1] > 59 || parts[2] > 59 {
		return 0, nil, errRange
	}
	return sign * (parts[0]*3600 + parts[1]*60 + parts[2]), b, nil
}

// scanDigits reads up to max decimal digits and returns their value and
// count.
func scanDigits(b []byte, max int) (int64, int) {
	var v int64
	n := 0
	for n < len(b) && n < max && b[n] >= '0' && b[n] <= '9' {
		v = v*10 + int64(b[n]-'0')
		n++
	}
	return v, n
}

func isLeap(y int64) bool { return y%4 == 0 && (y%100 != 0 || y%400 == 0) }

func daysIn(y, m int64) int64 {
	switch m {
	case 2:
		if isLeap(y) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// daysFromCivil returns days since 1970-01-01 of a proleptic Gregorian date
// with an astronomical year (Howard Hinnant's algorithm).
func daysFromCivil(y, m, d int64) int64 {
	if m <= 2 {
		y--
	}
	era := y
	if era < 0 {
		era -= 399
	}
	era /= 400
	yoe := y - era*400
	mp := (m + 9) % 12 // March = 0
	doy := (153*mp+2)/5 + d - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return era*146097 + doe - 719468
}

// parseTextBytea decodes bytea output: hex format ("\x00ff", what pgoutput
// sends with the default bytea_output) or escape format ("a\000\\b").
// It returns a new slice.
func parseTextBytea(b []byte) ([]byte, error) {
	if len(b) >= 2 && b[0] == '\\' && b[1] == 'x' {
		h := b[2:]
		out := make([]byte, 0, len(h)/2)
		for i := 0; i < len(h); {
			// byteain skips whitespace between digit pairs.
			if c := h[i]; c == ' ' || c == '\t' || c == '\n' || c == '\r' {
				i++
				continue
			}
			if i+1 >= len(h) {
				return nil, errSyntax
			}
			hi, ok1 := unhex(h[i])
			lo, ok2 := unhex(h[i+1])
			if !ok1 || !ok2 {
				return nil, errSyntax
			}
			out = append(out, hi<<4|lo)
			i += 2
		}
		return out, nil
	}
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c != '\\' {
			out = append(out, c)
			continue
		}
		switch {
		case i+1 < len(b) && b[i+1] == '\\':
			out = append(out, '\\')
			i++
		case i+3 < len(b) && isOctal(b[i+1]) && b[i+1] <= '3' && isOctal(b[i+2]) && isOctal(b[i+3]):
			out = append(out, (b[i+1]-'0')<<6|(b[i+2]-'0')<<3|(b[i+3]-'0'))
			i += 3
		default:
			return nil, errSyntax
		}
	}
	return out, nil
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// parseTextUUID parses uuid output ("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
// like uuid_in it also takes upper case, braces and hyphens between any
// groups of four digits.
func parseTextUUID(b []byte) ([16]byte, error) {
	var u [16]byte
	if len(b) >= 2 && b[0] == '{' && b[len(b)-1] == '}' {
		b = b[1 : len(b)-1]
	}
	n := 0 // hex digits read
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c == '-' && n%4 == 0 && n > 0 && n < 32 && i+1 < len(b) && b[i+1] != '-' {
			continue
		}
		v, ok := unhex(c)
		if !ok || n >= 32 {
			return u, errSyntax
		}
		u[n/2] |= v << (4 * (1 - n%2))
		n++
	}
	if n != 32 {
		return u, errSyntax
	}
	return u, nil
}

// arrayScanner reads the text output of a PostgreSQL array: an optional
// dimension decoration ("[0:2]="), then '{' items '}' where an item is a
// nested '{...}' or an element, separated by the element type's delimiter
// (',' for all built-in types but box, whose delimiter is ';'). An element is
// NULL (unquoted, any case), a double-quoted string with backslash escapes,
// or unquoted text.
type arrayScanner struct {
	src   []byte
	pos   int
	delim byte
	buf   []byte // unescaped text of the last quoted element
}

func newArrayScanner(src []byte, delim byte) arrayScanner {
	s := arrayScanner{src: src, delim: delim}
	if len(src) > 0 && src[0] == '[' {
		// Lower bounds are not kept: the elements are.
		for i, c := range src {
			if c == '=' {
				s.pos = i + 1
				break
			}
		}
	}
	return s
}

// depth returns how many '{' open the literal: its number of dimensions (1
// for "{}").
func (s *arrayScanner) depth() int {
	n := 0
	for i := s.pos; i < len(s.src); i++ {
		if s.src[i] == '{' {
			n++
		} else if !isArraySpace(s.src[i]) {
			break
		}
	}
	return n
}

func (s *arrayScanner) skipSpace() {
	for s.pos < len(s.src) && isArraySpace(s.src[s.pos]) {
		s.pos++
	}
}

func isArraySpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

// peek returns the next byte after white space, or 0 at the end.
func (s *arrayScanner) peek() byte {
	s.skipSpace()
	if s.pos >= len(s.src) {
		return 0
	}
	return s.src[s.pos]
}

// element reads one element. The returned text is valid until the next call.
func (s *arrayScanner) element() (text []byte, null bool, err error) {
	s.skipSpace()
	if s.pos < len(s.src) && s.src[s.pos] == '"' {
		s.pos++
		start, plain := s.pos, true
		s.buf = s.buf[:0]
		for s.pos < len(s.src) {
			c := s.src[s.pos]
			switch c {
			case '"':
				s.pos++
				if plain {
					return s.src[start : s.pos-1], false, nil
				}
				return s.buf, false, nil
			case '\\':
				if plain {
					s.buf = append(s.buf, s.src[start:s.pos]...)
					plain = false
				}
				s.pos++
				if s.pos >= len(s.src) {
					return nil, false, errSyntax
				}
				c = s.src[s.pos]
			}
			if !plain {
				s.buf = append(s.buf, c)
			}
			s.pos++
		}
		return nil, false, errSyntax
	}
	start, plain := s.pos, true
	s.buf = s.buf[:0]
	end := start // end of the text without trailing white space
	for s.pos < len(s.src) {
		c := s.src[s.pos]
		if c == s.delim || c == '}' || c == '{' || c == '"' {
			break
		}
		if c == '\\' {
			if plain {
				s.buf = append(s.buf, s.src[start:s.pos]...)
				plain = false
			}
			s.pos++
			if s.pos >= len(s.src) {
				return nil, false, errSyntax
			}
			s.buf = append(s.buf, s.src[s.pos])
			s.pos++
			end = len(s.buf)
			continue
		}
		if !plain {
			s.buf = append(s.buf, c)
		}
		s.pos++
		if !isArraySpace(c) {
			if plain {
				end = s.pos
			} else {
				end = len(s.buf)
			}
		}
	}
	if plain {
		text = s.src[start:end]
		if len(text) == 4 && (text[0]|0x20) == 'n' && (text[1]|0x20) == 'u' && (text[2]|0x20) == 'l' && (text[3]|0x20) == 'l' {
			return nil, true, nil
		}
	} else {
		text = s.buf[:end]
	}
	if len(text) == 0 {
		return nil, false, errSyntax
	}
	return text, false, nil
}

// expect consumes c after white space.
func (s *arrayScanner) expect(c byte) error {
	if s.peek() != c {
		return errSyntax
	}
	s.pos++
	return nil
}

// end reports an error unless only white space is left.
func (s *arrayScanner) end() error {
	if s.peek() != 0 || s.pos < len(s.src) {
		return errSyntax
	}
	return nil
}
