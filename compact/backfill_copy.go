package compact

import (
	"bytes"
	"errors"
	"fmt"
)

// copyDecoder is an io.Writer that takes the output of COPY ... TO STDOUT in
// PostgreSQL's text format and hands each row to onRow as one field per
// column, unescaped: the values are then exactly the type output functions'
// text, as pgoutput sends it. Rows are '\n'-terminated, fields
// '\t'-separated, \N is NULL, and a backslash escapes the next character
// (\b \f \n \r \t \v, octal \ooo, hex \xhh, or the character itself).
//
// The fields passed to onRow are valid only during the call.
type copyDecoder struct {
	ncols   int
	onRow   func(fields [][]byte, nulls []bool) error
	partial []byte   // an incomplete row carried over to the next Write
	fields  [][]byte // per row
	nulls   []bool
	unesc   [][]byte // per column scratch for unescaped values
	rows    int64
}

var errCopyFormat = errors.New("malformed COPY text row")

func newCopyDecoder(ncols int, onRow func(fields [][]byte, nulls []bool) error) *copyDecoder {
	return &copyDecoder{
		ncols:  ncols,
		onRow:  onRow,
		fields: make([][]byte, ncols),
		nulls:  make([]bool, ncols),
		unesc:  make([][]byte, ncols),
	}
}

// Write decodes every complete row in p. PostgreSQL sends one row per
// CopyData message, but a row split across writes is joined.
func (d *copyDecoder) Write(p []byte) (int, error) {
	n := len(p)
	if len(d.partial) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			d.partial = append(d.partial, p...)
			return n, nil
		}
		d.partial = append(d.partial, p[:i]...)
		if err := d.row(d.partial); err != nil {
			return 0, err
		}
		d.partial = d.partial[:0]
		p = p[i+1:]
	}
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			d.partial = append(d.partial, p...)
			break
		}
		if err := d.row(p[:i]); err != nil {
			return 0, err
		}
		p = p[i+1:]
	}
	return n, nil
}

// Close reports a row left without its terminating newline.
func (d *copyDecoder) Close() error {
	if len(d.partial) > 0 {
		return fmt.Errorf("%w: %d bytes after the last row", errCopyFormat, len(d.partial))
	}
	return nil
}

func (d *copyDecoder) row(line []byte) error {
	d.rows++
	if d.ncols == 0 {
		if len(line) != 0 {
			return fmt.Errorf("%w: row %d has values, want none", errCopyFormat, d.rows)
		}
		return d.onRow(d.fields, d.nulls)
	}
	col := 0
	for {
		i := bytes.IndexByte(line, '\t')
		field := line
		if i >= 0 {
			field = line[:i]
		}
		if col >= d.ncols {
			return fmt.Errorf("%w: row %d has more than %d columns", errCopyFormat, d.rows, d.ncols)
		}
		if err := d.field(col, field); err != nil {
			return fmt.Errorf("row %d column %d: %w", d.rows, col+1, err)
		}
		col++
		if i < 0 {
			break
		}
		line = line[i+1:]
	}
	if col != d.ncols {
		return fmt.Errorf("%w: row %d has %d columns, want %d", errCopyFormat, d.rows, col, d.ncols)
	}
	return d.onRow(d.fields, d.nulls)
}

func (d *copyDecoder) field(col int, f []byte) error {
	if len(f) == 2 && f[0] == '\\' && f[1] == 'N' {
		d.fields[col], d.nulls[col] = nil, true
		return nil
	}
	d.nulls[col] = false
	if bytes.IndexByte(f, '\\') < 0 {
		d.fields[col] = f
		return nil
	}
	out, err := unescapeCopyText(d.unesc[col][:0], f)
	if err != nil {
		return err
	}
	d.unesc[col] = out
	d.fields[col] = out
	return nil
}

// unescapeCopyText appends the unescaped form of one COPY text field to dst.
func unescapeCopyText(dst, f []byte) ([]byte, error) {
	for i := 0; i < len(f); i++ {
		c := f[i]
		if c != '\\' {
			dst = append(dst, c)
			continue
		}
		i++
		if i == len(f) {
			return dst, fmt.Errorf("%w: backslash at the end of a value", errCopyFormat)
		}
		c = f[i]
		switch c {
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'v':
			dst = append(dst, '\v')
		case '0', '1', '2', '3', '4', '5', '6', '7':
			v := c - '0'
			for k := 0; k < 2 && i+1 < len(f) && f[i+1] >= '0' && f[i+1] <= '7'; k++ {
				i++
				v = v<<3 | (f[i] - '0')
			}
			dst = append(dst, v)
		case 'x':
			if i+1 < len(f) && isHexDigit(f[i+1]) {
				i++
				v := hexValue(f[i])
				if i+1 < len(f) && isHexDigit(f[i+1]) {
					i++
					v = v<<4 | hexValue(f[i])
				}
				dst = append(dst, v)
			} else {
				dst = append(dst, 'x')
			}
		default:
			dst = append(dst, c)
		}
	}
	return dst, nil
}

func isHexDigit(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func hexValue(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}
