package compact

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/parquet-go/parquet-go"

	"github.com/wal-cake/wal-cake/spool"
)

// Operations, as written to _op.
const (
	opInsert   = "I"
	opUpdate   = "U"
	opDelete   = "D"
	opTruncate = "T"
)

var opValues = map[string][]byte{
	opInsert: []byte(opInsert), opUpdate: []byte(opUpdate),
	opDelete: []byte(opDelete), opTruncate: []byte(opTruncate),
}

// txnRows turns the messages of one transaction into rows, handing each to
// emit. It keeps the relation map current.
type decoder struct {
	cat       *catalog
	relations map[uint32]*tableSchema
	values    []*pglogrepl.TupleDataColumn // scratch, per row
}

func newDecoder(cat *catalog) *decoder {
	return &decoder{cat: cat, relations: map[uint32]*tableSchema{}}
}

// relation applies a Relation message.
func (d *decoder) relation(ctx context.Context, msg []byte) error {
	var rel pglogrepl.RelationMessage
	if err := rel.Decode(msg[1:]); err != nil {
		return fmt.Errorf("decode relation: %w", err)
	}
	d.cat.forget(rel.RelationID) // a new Relation message may carry new array dimensions
	ts, err := newTableSchema(ctx, d.cat, &rel)
	if err != nil {
		return err
	}
	if old, ok := d.relations[rel.RelationID]; ok && old.fingerprint == ts.fingerprint && old.Table == ts.Table {
		return nil // unchanged: keep the version already assigned
	}
	d.relations[rel.RelationID] = ts
	return nil
}

// rowMeta is what every row of a transaction shares.
type rowMeta struct {
	txn spool.Txn
	seq int64
}

type emitFunc func(ts *tableSchema, row parquet.Row, op string, size int) error

// change decodes one Insert, Update, Delete or Truncate message and emits
// its rows.
func (d *decoder) change(meta *rowMeta, lsn pglogrepl.LSN, msg []byte, emit emitFunc) error {
	msg = bytes.Clone(msg) // rows reference the values until they are written
	parsed, err := pglogrepl.Parse(msg)
	if err != nil {
		return fmt.Errorf("decode %q message at %s: %w", msg[0], lsn, err)
	}
	switch m := parsed.(type) {
	case *pglogrepl.InsertMessage:
		ts, err := d.table(m.RelationID, lsn)
		if err != nil {
			return err
		}
		return d.emitTuple(meta, lsn, ts, opInsert, m.Tuple, nil, emit)
	case *pglogrepl.UpdateMessage:
		ts, err := d.table(m.RelationID, lsn)
		if err != nil {
			return err
		}
		if m.OldTuple != nil && keyChanged(ts, m.OldTuple, m.NewTuple) {
			// The row's identity changed: the old key is deleted so that
			// the state rule holds per key.
			if err := d.emitTuple(meta, lsn, ts, opDelete, m.OldTuple, nil, emit); err != nil {
				return err
			}
		}
		var old *pglogrepl.TupleData
		if m.OldTupleType == 'O' {
			old = m.OldTuple
		}
		return d.emitTuple(meta, lsn, ts, opUpdate, m.NewTuple, old, emit)
	case *pglogrepl.DeleteMessage:
		ts, err := d.table(m.RelationID, lsn)
		if err != nil {
			return err
		}
		return d.emitTuple(meta, lsn, ts, opDelete, m.OldTuple, nil, emit)
	case *pglogrepl.TruncateMessage:
		for _, relid := range m.RelationIDs {
			ts, err := d.table(relid, lsn)
			if err != nil {
				return err
			}
			if err := d.emitTuple(meta, lsn, ts, opTruncate, nil, nil, emit); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("unexpected message %T at %s", parsed, lsn)
}

func (d *decoder) table(relid uint32, lsn pglogrepl.LSN) (*tableSchema, error) {
	ts, ok := d.relations[relid]
	if !ok {
		return nil, fmt.Errorf("change at %s for relation %d without its Relation message", lsn, relid)
	}
	return ts, nil
}

// keyChanged reports whether an update's old tuple differs from the new one
// in a replica identity column.
func keyChanged(ts *tableSchema, old, new *pglogrepl.TupleData) bool {
	for i, c := range ts.Columns {
		if !c.Key || i >= len(old.Columns) || i >= len(new.Columns) {
			continue
		}
		o, n := old.Columns[i], new.Columns[i]
		if n.DataType == 'u' || o.DataType == 'u' {
			continue // unchanged TOAST: the same value
		}
		if o.DataType != n.DataType || !bytes.Equal(o.Data, n.Data) {
			return true
		}
	}
	return false
}

// emitTuple builds one row. tuple nil writes NULL in every table column (a
// truncate). old, when set, fills unchanged TOAST values of tuple.
func (d *decoder) emitTuple(meta *rowMeta, lsn pglogrepl.LSN, ts *tableSchema, op string, tuple, old *pglogrepl.TupleData, emit emitFunc) error {
	txn := meta.txn
	// The file writer keeps rows until it writes them in a batch, so each
	// row is its own slice.
	row := make(parquet.Row, 0, metaColumns+len(ts.Columns)+1)
	row = append(row,
		parquet.ByteArrayValue(opValues[op]).Level(0, 0, colOp),
		parquet.Int64Value(int64(txn.CommitLSN)).Level(0, 0, colCommitLSN),
		parquet.Int64Value(meta.seq).Level(0, 0, colSeq),
		parquet.Int64Value(int64(lsn)).Level(0, 0, colLSN),
		parquet.Int64Value(int64(txn.Xid)).Level(0, 0, colXid),
		parquet.Int64Value(txn.CommitTime.UnixMicro()).Level(0, 0, colCommitTS),
	)
	meta.seq++

	// Resolve each column's value first: _unchanged comes before the table
	// columns in the file.
	values := d.values[:0]
	nUnchanged := 0
	for i := range ts.Columns {
		var tc *pglogrepl.TupleDataColumn
		if tuple != nil && i < len(tuple.Columns) {
			tc = tuple.Columns[i]
		}
		if tc != nil && tc.DataType == 'u' && old != nil && i < len(old.Columns) && old.Columns[i].DataType == 't' {
			tc = old.Columns[i] // REPLICA IDENTITY FULL sent the old value
		}
		if tc != nil && tc.DataType == 'u' {
			rep := min(nUnchanged, 1)
			row = append(row, parquet.ByteArrayValue([]byte(ts.Columns[i].Name)).Level(rep, 1, colUnchanged))
			nUnchanged++
		}
		values = append(values, tc)
	}
	d.values = values
	if nUnchanged == 0 {
		row = append(row, parquet.NullValue().Level(0, 0, colUnchanged))
	}

	size := 64
	for i, c := range ts.Columns {
		col := metaColumns + i
		tc := values[i]
		var err error
		switch {
		case tc == nil || tc.DataType == 'n' || tc.DataType == 'u':
			row, err = c.conv.appendText(row, nil, true, col)
		case tc.DataType == 't':
			size += len(tc.Data)
			row, err = c.conv.appendText(row, tc.Data, false, col)
		default:
			return fmt.Errorf("table %s column %s at %s: value in format %q, want text", ts.Table, c.Name, lsn, tc.DataType)
		}
		if err != nil {
			return fmt.Errorf("table %s column %s at %s: %w", ts.Table, c.Name, lsn, err)
		}
	}
	return emit(ts, row, op, size)
}

// commitDay is the UTC date of a commit, for the dt= partition.
func commitDay(t time.Time) time.Time {
	y, m, d := t.UTC().Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}
