package compact

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/parquet-go/parquet-go"

	"github.com/wal-cake/wal-cake/spool"
)

// pgoutput message builders (protocol version 1), for tests.

type relCol struct {
	name   string
	oid    uint32
	typmod int32
	key    bool
}

func relationMsg(relid uint32, schema, table string, ident byte, cols ...relCol) []byte {
	b := []byte{'R'}
	b = binary.BigEndian.AppendUint32(b, relid)
	b = append(append(b, schema...), 0)
	b = append(append(b, table...), 0)
	b = append(b, ident)
	b = binary.BigEndian.AppendUint16(b, uint16(len(cols)))
	for _, c := range cols {
		flags := byte(0)
		if c.key {
			flags = 1
		}
		b = append(b, flags)
		b = append(append(b, c.name...), 0)
		b = binary.BigEndian.AppendUint32(b, c.oid)
		b = binary.BigEndian.AppendUint32(b, uint32(c.typmod))
	}
	return b
}

// tv is one tuple value: nil is NULL, unchangedTOAST is 'u'.
type tv = *string

var unchangedTOAST = new(string)

func v(s string) tv { return &s }

func appendTuple(b []byte, vals ...tv) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(vals)))
	for _, x := range vals {
		switch {
		case x == nil:
			b = append(b, 'n')
		case x == unchangedTOAST:
			b = append(b, 'u')
		default:
			b = append(b, 't')
			b = binary.BigEndian.AppendUint32(b, uint32(len(*x)))
			b = append(b, *x...)
		}
	}
	return b
}

func insertMsg(relid uint32, vals ...tv) []byte {
	b := binary.BigEndian.AppendUint32([]byte{'I'}, relid)
	return appendTuple(append(b, 'N'), vals...)
}

// updateMsg builds an Update; oldKind is 0 (no old tuple), 'K' or 'O'.
func updateMsg(relid uint32, oldKind byte, old []tv, vals ...tv) []byte {
	b := binary.BigEndian.AppendUint32([]byte{'U'}, relid)
	if oldKind != 0 {
		b = appendTuple(append(b, oldKind), old...)
	}
	return appendTuple(append(b, 'N'), vals...)
}

func deleteMsg(relid uint32, oldKind byte, old ...tv) []byte {
	b := binary.BigEndian.AppendUint32([]byte{'D'}, relid)
	return appendTuple(append(b, oldKind), old...)
}

func truncateMsg(flags byte, relids ...uint32) []byte {
	b := binary.BigEndian.AppendUint32([]byte{'T'}, uint32(len(relids)))
	b = append(b, flags)
	for _, r := range relids {
		b = binary.BigEndian.AppendUint32(b, r)
	}
	return b
}

var benchCols = []relCol{
	{"id", pgtype.Int8OID, -1, true}, {"name", pgtype.TextOID, -1, false},
	{"balance", pgtype.NumericOID, numericTypmod(12, 2), false}, {"at", pgtype.TimestamptzOID, -1, false},
	{"n", pgtype.Int4OID, -1, false}, {"flag", pgtype.BoolOID, -1, false},
	{"note", pgtype.TextOID, -1, false}, {"tags", pgtype.TextArrayOID, -1, false},
	{"u", pgtype.UUIDOID, -1, false},
}

func benchInsert() []byte {
	return insertMsg(16400, v("1234567"), v("customer 1234567"), v("12345.67"), v("2024-05-06 07:08:09.123456+00"),
		v("42"), v("t"), v("a somewhat longer note about this row"), v("{a,b,c}"), v("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"))
}

func BenchmarkDecodeInsert(b *testing.B) {
	ctx := context.Background()
	d := newDecoder(newCatalog(nil))
	if err := d.relation(ctx, relationMsg(16400, "public", "accounts", 'd', benchCols...)); err != nil {
		b.Fatal(err)
	}
	msg := benchInsert()
	meta := &rowMeta{txn: spool.Txn{Xid: 7, CommitLSN: 100, CommitTime: time.Unix(1700000000, 0)}}
	emit := func(ts *tableSchema, row parquet.Row, op string, size int) error { return nil }
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		if err := d.change(meta, pglogrepl.LSN(100), msg, emit); err != nil {
			b.Fatal(err)
		}
	}
}

// decoded is one emitted row, read back from its Parquet values.
type decoded struct {
	table     string
	op        string
	seq       int64
	unchanged []string
	cols      []string // text of each table column; "NULL" for NULL
}

func (r decoded) String() string {
	return fmt.Sprintf("%s %s seq=%d unchanged=%v %v", r.table, r.op, r.seq, r.unchanged, r.cols)
}

// decodeHarness feeds messages to a decoder and collects its rows. Table
// columns are int8 or text, read back as text.
type decodeHarness struct {
	t    *testing.T
	d    *decoder
	rows []decoded
	meta *rowMeta
}

func newDecodeHarness(t *testing.T, store *toastStore) *decodeHarness {
	h := &decodeHarness{t: t, d: newDecoder(newCatalog(nil))}
	h.d.toast = store
	h.txn(100)
	return h
}

// txn starts a new transaction committing at commit.
func (h *decodeHarness) txn(commit pglogrepl.LSN) {
	h.meta = &rowMeta{txn: spool.Txn{Xid: uint32(commit), CommitLSN: commit, CommitTime: time.Unix(1700000000, 0)}}
}

func (h *decodeHarness) feed(msgs ...[]byte) {
	h.t.Helper()
	for _, msg := range msgs {
		var err error
		if msg[0] == 'R' {
			err = h.d.relation(context.Background(), msg)
		} else {
			err = h.d.change(h.meta, h.meta.txn.CommitLSN, msg, h.emit)
		}
		if err != nil {
			h.t.Fatalf("message %q: %v", msg[0], err)
		}
	}
}

func (h *decodeHarness) emit(ts *tableSchema, row parquet.Row, op string, size int) error {
	r := decoded{table: ts.Table, op: string(row[colOp].ByteArray()), seq: row[colSeq].Int64()}
	if r.op != op {
		h.t.Errorf("emit op %s, row says %s", op, r.op)
	}
	i := colUnchanged
	for ; i < len(row) && row[i].Column() == colUnchanged; i++ {
		if !row[i].IsNull() {
			r.unchanged = append(r.unchanged, string(row[i].ByteArray()))
		}
	}
	for ; i < len(row); i++ {
		v := row[i]
		switch {
		case v.IsNull():
			r.cols = append(r.cols, "NULL")
		case v.Kind() == parquet.Int64:
			r.cols = append(r.cols, strconv.FormatInt(v.Int64(), 10))
		default:
			r.cols = append(r.cols, string(v.ByteArray()))
		}
	}
	h.rows = append(h.rows, r)
	return nil
}

// take returns the rows emitted since the last call, as strings.
func (h *decodeHarness) take() []string {
	out := make([]string, len(h.rows))
	for i, r := range h.rows {
		out[i] = r.String()
	}
	h.rows = nil
	return out
}

func sameStrings(t *testing.T, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s:\n got:\n  %s\n want:\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

var (
	idCol   = relCol{"id", pgtype.Int8OID, -1, true}
	bodyCol = relCol{"body", pgtype.TextOID, -1, false}
	noteCol = relCol{"note", pgtype.TextOID, -1, false}
)

func TestDecodeChanges(t *testing.T) {
	t.Parallel()
	h := newDecodeHarness(t, nil)
	h.feed(relationMsg(1, "public", "pk", identityDefault, idCol, bodyCol, noteCol))
	h.feed(
		insertMsg(1, v("1"), v("a"), nil),
		// An update without a key change: no old tuple.
		updateMsg(1, 0, nil, v("1"), v("b"), v("x")),
		// A key change: the old key, then the new row.
		updateMsg(1, 'K', []tv{v("1"), nil, nil}, v("2"), v("b"), v("x")),
		// Unchanged TOAST with nothing to fill it from.
		updateMsg(1, 0, nil, v("2"), unchangedTOAST, v("y")),
		deleteMsg(1, 'K', v("2"), nil, nil),
		truncateMsg(1|2, 1),
	)
	sameStrings(t, "primary key", h.take(), []string{
		"public.pk I seq=0 unchanged=[] [1 a NULL]",
		"public.pk U seq=1 unchanged=[] [1 b x]",
		"public.pk D seq=2 unchanged=[] [1 NULL NULL]",
		"public.pk U seq=3 unchanged=[] [2 b x]",
		"public.pk U seq=4 unchanged=[body] [2 NULL y]",
		"public.pk D seq=5 unchanged=[] [2 NULL NULL]",
		"public.pk T seq=6 unchanged=[] [NULL NULL NULL]",
	})

	// REPLICA IDENTITY FULL: every update is the old row, then the new one,
	// whose unchanged TOAST values come from the old row.
	h.feed(relationMsg(2, "public", "full", identityFull,
		relCol{"a", pgtype.Int8OID, -1, true}, relCol{"b", pgtype.TextOID, -1, true}))
	h.feed(
		insertMsg(2, v("1"), v("big")),
		updateMsg(2, 'O', []tv{v("1"), v("big")}, v("1"), v("big")), // no change at all
		updateMsg(2, 'O', []tv{v("1"), v("big")}, v("2"), unchangedTOAST),
		deleteMsg(2, 'O', v("2"), v("big")),
	)
	sameStrings(t, "replica identity full", h.take(), []string{
		"public.full I seq=7 unchanged=[] [1 big]",
		"public.full D seq=8 unchanged=[] [1 big]",
		"public.full U seq=9 unchanged=[] [1 big]",
		"public.full D seq=10 unchanged=[] [1 big]",
		"public.full U seq=11 unchanged=[] [2 big]",
		"public.full D seq=12 unchanged=[] [2 big]",
	})

	// A TOASTed key column unchanged in the new row: PostgreSQL sends the
	// old key, which fills it.
	h.feed(updateMsg(1, 'K', []tv{v("3"), nil, nil}, unchangedTOAST, v("c"), nil))
	sameStrings(t, "toasted key", h.take(), []string{
		"public.pk U seq=13 unchanged=[] [3 c NULL]",
	})

	// Several tables in one truncate.
	h.feed(relationMsg(3, "other", "pk", identityDefault, idCol))
	h.feed(truncateMsg(0, 1, 3))
	sameStrings(t, "truncate", h.take(), []string{
		"public.pk T seq=14 unchanged=[] [NULL NULL NULL]",
		"other.pk T seq=15 unchanged=[] [NULL]",
	})
}

func TestDecodeRecreatedTable(t *testing.T) {
	t.Parallel()
	h := newDecodeHarness(t, nil)
	h.d.lastRel["public.t"] = 5 // the lake's rows of public.t belong to relation 5
	h.feed(relationMsg(5, "public", "t", identityDefault, idCol))
	h.feed(insertMsg(5, v("1")))
	h.feed(relationMsg(6, "public", "t", identityDefault, idCol)) // dropped and re-created
	h.feed(insertMsg(6, v("1")), insertMsg(6, v("2")))
	h.feed(relationMsg(7, "public", "u", identityDefault, idCol)) // new to the lake
	h.feed(insertMsg(7, v("1")))
	sameStrings(t, "re-created", h.take(), []string{
		"public.t I seq=0 unchanged=[] [1]",
		"public.t T seq=1 unchanged=[] [NULL]",
		"public.t I seq=2 unchanged=[] [1]",
		"public.t I seq=3 unchanged=[] [2]",
		"public.u I seq=4 unchanged=[] [1]",
	})
}

func TestDecodeErrors(t *testing.T) {
	t.Parallel()
	h := newDecodeHarness(t, nil)
	h.feed(relationMsg(1, "public", "pk", identityDefault, idCol, bodyCol))
	noop := func(*tableSchema, parquet.Row, string, int) error { return nil }
	for _, tt := range []struct {
		name string
		msg  []byte
		want string
	}{
		{"short", []byte{'I', 0, 0}, "too short"},
		{"unknown relation", insertMsg(9, v("1"), v("a")), "without its Relation message"},
		{"narrow tuple", insertMsg(1, v("1")), "tuple of 1 columns"},
		{"binary", append(binary.BigEndian.AppendUint32([]byte{'I'}, 1), 'N', 0, 2, 'b', 0, 0, 0, 1, '1', 'n'), "binary format"},
		{"truncated value", insertMsg(1, v("1"), v("abc"))[:18], "too short"},
		{"trailing bytes", append(insertMsg(1, v("1"), v("a")), 'x'), "after the tuple"},
		{"bad kind", append(binary.BigEndian.AppendUint32([]byte{'I'}, 1), 'N', 0, 1, 'z'), "unknown tuple column kind"},
		{"bad int", insertMsg(1, v("x"), v("a")), `convert int8 value "x"`},
		{"delete without old", append(binary.BigEndian.AppendUint32([]byte{'D'}, 1), 'N'), "without an old tuple"},
		{"truncate too short", []byte{'T', 0, 0, 0, 2, 0, 0, 0, 0, 1}, "too short"},
	} {
		err := h.d.change(h.meta, 1, tt.msg, noop)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
}

func FuzzParseChange(f *testing.F) {
	f.Add(benchInsert())
	f.Add(updateMsg(1, 'K', []tv{v("1"), nil}, v("2"), unchangedTOAST))
	f.Add(deleteMsg(1, 'O', v("1"), v("x")))
	f.Add(truncateMsg(3, 1, 2, 3))
	f.Fuzz(func(t *testing.T, msg []byte) {
		var m changeMsg
		if m.parse(msg) != nil {
			return
		}
		for _, tuple := range [][]tupleCol{m.old, m.new} {
			for _, c := range tuple {
				if (c.kind == 't' || c.kind == 'b') != (c.data != nil) {
					t.Fatalf("column %q with data %v", c.kind, c.data)
				}
			}
		}
	})
}

// TestMetadataNameCollision writes a table whose columns are named like the
// metadata columns and reads the file with DuckDB: each has its own field.
func TestMetadataNameCollision(t *testing.T) {
	t.Parallel()
	h := newDecodeHarness(t, nil)
	h.feed(relationMsg(1, "public", "t", identityDefault, relCol{"_op", pgtype.TextOID, -1, false},
		relCol{"__op", pgtype.TextOID, -1, false}, idCol, relCol{"_seq", pgtype.Int8OID, -1, false}))
	ts := h.d.relations[1]
	ts.Version = "v1"
	fw, err := newFileWriter(t.TempDir(), ts, time.Now(), 0)
	if err != nil {
		t.Fatal(err)
	}
	err = h.d.change(h.meta, 100, updateMsg(1, 0, nil, v("mine"), unchangedTOAST, v("7"), v("-1")),
		func(ts *tableSchema, row parquet.Row, op string, size int) error { return fw.write(row, 100, size) })
	if err != nil {
		t.Fatal(err)
	}
	path, _, err := fw.finish()
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(path)
	db := openTypemapDuckDB(t)
	var got string
	err = db.QueryRow(`SELECT concat_ws('|', _op, _seq, ___op, __op, id, __seq, list_aggregate(_unchanged, 'string_agg', ','))
		FROM read_parquet('` + path + `')`).Scan(&got)
	if err != nil {
		t.Fatal(err)
	}
	if want := "U|0|mine|7|-1|__op"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
	var fields []string
	for _, c := range ts.doc(100).Columns {
		fields = append(fields, c.Name+">"+c.Field)
	}
	if got := strings.Join(fields, " "); got != "_op>___op __op> id> _seq>__seq" {
		t.Errorf("schema document fields: %s", got)
	}
}
