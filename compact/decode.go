package compact

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
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

// decoder turns pgoutput change messages into lake rows, handing each to an
// emitFunc. It keeps the relation map current.
//
// How each change becomes rows (docs/changes.md is the user's version):
//
//   - INSERT: an I row.
//   - UPDATE: a U row. When the old row's replica identity differs from the
//     new one (a primary-key change), a D row carrying the old key comes
//     first; under REPLICA IDENTITY FULL every UPDATE is a D row carrying the
//     whole old row and then the U row, so a table keyed by its whole row
//     stays a correct multiset.
//   - DELETE: a D row with the old key (the whole old row under FULL).
//   - TRUNCATE: a T row, all table columns NULL, for each table truncated.
//   - The first row of a table whose relation OID differs from the one whose
//     rows the lake holds under the same name (dropped and re-created) is
//     preceded by a T row, so the old table's rows leave the state.
//
// An unchanged TOAST value ('u' in pgoutput) is filled from the old tuple
// when PostgreSQL sent it (REPLICA IDENTITY FULL, or a key column of the old
// key), else from the TOAST state store (the newest value wal-cake wrote for
// the key), else left NULL and named in _unchanged.
type decoder struct {
	cat       *catalog
	relations map[uint32]*tableSchema
	toast     *toastStore // nil: no state store

	// lake and lastRel find tables dropped and re-created: lastRel is, per
	// lake table, the relation OID whose rows the lake holds last (from the
	// lake's newest schema version, then from the rows decoded). lake nil
	// turns the check off.
	lake    Store
	lastRel map[string]uint32
	log     *slog.Logger

	// Converters count the values a rule wrote as NULL; reported remembers
	// how many of them takeNulled has handed out.
	schemas  []*tableSchema
	reported map[converter]uint64
	unfilled int64 // unchanged TOAST values left NULL since takeNulled

	// textEmit, when set, receives each row with its table columns still
	// text, in place of emit: the file writer converts them on its
	// encoders. [issue 7]
	textEmit   textEmitFunc
	metaBuf    parquet.Row  // scratch: the metadata values of a text row
	slab       rowSlab      // memory of the rows built
	relChecked *tableSchema // the table of the row before, whose lastRel check is done

	msg      changeMsg  // scratch: the message being decoded
	vals     []colValue // scratch: the row being built
	oldVals  []colValue // scratch: the old row of a key change
	keyBuf   []byte     // scratch: encoded replica identity
	oldKey   []byte     // scratch: encoded old replica identity
	toastEnt toastEntry // scratch: the state store's entry for a key
}

func newDecoder(cat *catalog) *decoder {
	return &decoder{
		cat: cat, relations: map[uint32]*tableSchema{},
		lastRel: map[string]uint32{}, reported: map[converter]uint64{},
		log: slog.New(slog.DiscardHandler),
	}
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
	d.schemas = append(d.schemas, ts)
	if _, known := d.lastRel[ts.Table]; !known && d.lake != nil {
		doc, ok, err := latestSchemaDoc(ctx, d.lake, ts.Table)
		if err != nil {
			return err
		}
		if ok {
			d.lastRel[ts.Table] = doc.RelationOID // 0 when the lake did not record it
		} else {
			d.lastRel[ts.Table] = 0
		}
	}
	return nil
}

// rowMeta is what every row of a transaction shares.
type rowMeta struct {
	txn spool.Txn
	seq int64

	consts *[metaColumns]parquet.Value // values the transaction's rows share, built once [issue 7]
}

// shared returns the metadata values every row of the transaction has:
// _commit_lsn, _xid and _commit_ts (the others are left zero).
func (m *rowMeta) shared() *[metaColumns]parquet.Value {
	if m.consts == nil {
		m.consts = &[metaColumns]parquet.Value{
			colCommitLSN: parquet.Int64Value(int64(m.txn.CommitLSN)).Level(0, 0, colCommitLSN),
			colXid:       parquet.Int64Value(int64(m.txn.Xid)).Level(0, 0, colXid),
			colCommitTS:  parquet.Int64Value(m.txn.CommitTime.UnixMicro()).Level(0, 0, colCommitTS),
		}
	}
	return m.consts
}

// The _op values, leveled: built once, read-only.
var (
	opInsertValue   = parquet.ByteArrayValue([]byte(opInsert)).Level(0, 0, colOp)
	opUpdateValue   = parquet.ByteArrayValue([]byte(opUpdate)).Level(0, 0, colOp)
	opDeleteValue   = parquet.ByteArrayValue([]byte(opDelete)).Level(0, 0, colOp)
	opTruncateValue = parquet.ByteArrayValue([]byte(opTruncate)).Level(0, 0, colOp)
)

func opValue(op string) parquet.Value {
	switch op {
	case opInsert:
		return opInsertValue
	case opUpdate:
		return opUpdateValue
	case opDelete:
		return opDeleteValue
	case opTruncate:
		return opTruncateValue
	}
	return parquet.ByteArrayValue([]byte(op)).Level(0, 0, colOp)
}

type emitFunc func(ts *tableSchema, row parquet.Row, op string, size int) error

// textEmitFunc receives a row as its metadata values (meta) and its table
// columns as text (vals; nil for a truncate, every column NULL). Both are
// valid during the call only.
type textEmitFunc func(ts *tableSchema, meta parquet.Row, vals []colValue, lsn pglogrepl.LSN, op string, size int) error

// change decodes one Insert, Update, Delete or Truncate message and emits
// its rows. msg must stay valid and unchanged during the call only: the rows
// own their values.
func (d *decoder) change(meta *rowMeta, lsn pglogrepl.LSN, msg []byte, emit emitFunc) error {
	m := &d.msg
	if err := m.parse(msg); err != nil {
		return fmt.Errorf("decode %q message at %s: %w", msg[0], lsn, err)
	}
	if m.op == 'T' {
		for _, relid := range m.relids {
			ts, err := d.table(relid, lsn)
			if err != nil {
				return err
			}
			if err := d.emitRow(meta, lsn, ts, opTruncate, nil, emit); err != nil {
				return err
			}
			d.toastDone(d.toast.dropRelation(ts.RelationID))
		}
		return nil
	}
	ts, err := d.table(m.relid, lsn)
	if err != nil {
		return err
	}
	if err := m.checkWidth(ts); err != nil {
		return fmt.Errorf("table %s at %s: %w", ts.Table, lsn, err)
	}
	commit := meta.txn.CommitLSN
	switch m.op {
	case 'I':
		vals := d.resolve(ts, m.new, nil, nil, &d.vals)
		if err := d.emitRow(meta, lsn, ts, opInsert, vals, emit); err != nil {
			return err
		}
		d.remember(ts, vals, nil, false, commit)
		return nil

	case 'U':
		keyed := ts.keyed()
		oldKey := []byte(nil)
		if m.old != nil && (ts.ReplicaIdentity == identityFull || keyChanged(ts, m.old, m.new)) {
			// The row's identity changed (or, under FULL, the row is its
			// identity): the old row leaves the state.
			oldVals := d.resolve(ts, m.old, nil, nil, &d.oldVals)
			if err := d.emitRow(meta, lsn, ts, opDelete, oldVals, emit); err != nil {
				return err
			}
			if keyed {
				d.oldKey = ts.appendKey(d.oldKey[:0], oldVals)
				oldKey = d.oldKey
			}
		}
		var ent *toastEntry
		if keyed && d.toast != nil && hasUnchanged(ts, m.new, m.old) {
			key := oldKey
			if key == nil {
				// The key of the new row, with an unchanged TOASTed key
				// column taken from the old key PostgreSQL sent then.
				key = ts.appendKey(d.keyBuf[:0], d.resolve(ts, m.new, m.old, nil, &d.vals))
				d.keyBuf = key
			}
			found, err := d.toast.get(ts, key, &d.toastEnt)
			d.toastDone(err)
			if found && err == nil {
				ent = &d.toastEnt
			}
		}
		vals := d.resolve(ts, m.new, m.old, ent, &d.vals)
		if err := d.emitRow(meta, lsn, ts, opUpdate, vals, emit); err != nil {
			return err
		}
		if oldKey != nil {
			d.toastDone(d.toast.forget(ts, oldKey))
		}
		d.remember(ts, vals, ent, oldKey == nil, commit)
		return nil

	case 'D':
		vals := d.resolve(ts, m.old, nil, nil, &d.vals)
		if err := d.emitRow(meta, lsn, ts, opDelete, vals, emit); err != nil {
			return err
		}
		if ts.keyed() {
			d.keyBuf = ts.appendKey(d.keyBuf[:0], vals)
			d.toastDone(d.toast.forget(ts, d.keyBuf))
		}
		return nil
	}
	return fmt.Errorf("unexpected message %q at %s", m.op, lsn)
}

// remember records in the state store the values of a row the lake now
// holds, for tables whose updates may need them. prev is the entry the row's
// unchanged values came from; sameKey reports that it is the row's own key's.
func (d *decoder) remember(ts *tableSchema, vals []colValue, prev *toastEntry, sameKey bool, commit pglogrepl.LSN) {
	if d.toast == nil || !ts.keyed() {
		return
	}
	d.keyBuf = ts.appendKey(d.keyBuf[:0], vals)
	d.toastDone(d.toast.remember(ts, d.keyBuf, vals, prev, sameKey, commit))
}

// toastDone handles the outcome of a state store operation. The store is
// a cache of what the lake holds: an error in it (a full disk, a corrupt
// entry) never fails compaction. The store is closed for the rest of the
// run, so nothing more is filled from it, and the next run, finding it out of
// step with the lake, starts an empty one.
func (d *decoder) toastDone(err error) {
	if err == nil || d.toast == nil {
		return
	}
	d.log.Warn("TOAST state store failed; unchanged TOAST values are not filled for the rest of this run", "err", err)
	d.toast.close()
	d.toast = nil
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
func keyChanged(ts *tableSchema, old, new []tupleCol) bool {
	for i, c := range ts.Columns {
		if !c.Key {
			continue
		}
		o, n := old[i], new[i]
		if n.kind == 'u' || o.kind == 'u' {
			continue // unchanged TOAST: the same value
		}
		if o.kind != n.kind || !bytes.Equal(o.data, n.data) {
			return true
		}
	}
	return false
}

// hasUnchanged reports whether tuple has an unchanged TOAST value that old
// cannot fill.
func hasUnchanged(ts *tableSchema, tuple, old []tupleCol) bool {
	for i := range ts.Columns {
		if tuple[i].kind == 'u' && (old == nil || old[i].kind != 't') {
			return true
		}
	}
	return false
}

// colValue is one column's value in a row being built.
type colValue struct {
	data      []byte // the text form; valid while the message (or the store's entry) is
	null      bool
	unchanged bool // unchanged TOAST value that could not be filled
	stored    bool // unchanged TOAST value filled from the state store
}

// resolve fills *buf with the values of tuple: unchanged TOAST values are
// taken from old when it has them, then from ent.
func (d *decoder) resolve(ts *tableSchema, tuple, old []tupleCol, ent *toastEntry, buf *[]colValue) []colValue {
	vals := (*buf)[:0]
	for i := range ts.Columns {
		tc := tuple[i]
		switch tc.kind {
		case 't':
			vals = append(vals, colValue{data: tc.data})
			continue
		case 'n':
			vals = append(vals, colValue{null: true})
			continue
		}
		// 'u': unchanged TOAST.
		if old != nil && old[i].kind == 't' {
			vals = append(vals, colValue{data: old[i].data})
			continue
		}
		if ent != nil {
			if data, ok := ent.value(&ts.Columns[i]); ok {
				vals = append(vals, colValue{data: data, stored: true})
				continue
			}
		}
		vals = append(vals, colValue{null: true, unchanged: true})
	}
	*buf = vals
	return vals
}

// emitRow builds one row and emits it. vals nil writes NULL in every table
// column (a truncate).
func (d *decoder) emitRow(meta *rowMeta, lsn pglogrepl.LSN, ts *tableSchema, op string, vals []colValue, emit emitFunc) error {
	if ts == d.relChecked {
		return d.emitRow1(meta, lsn, ts, op, vals, emit) // checked with the row before [issue 7]
	}
	d.relChecked = ts
	if prev, known := d.lastRel[ts.Table]; !known || prev != ts.RelationID {
		if known && prev != 0 && ts.RelationID != 0 && op != opTruncate {
			// The lake's rows under this name belong to a table that was
			// dropped (or renamed away): they leave the state.
			if err := d.emitRow1(meta, lsn, ts, opTruncate, nil, emit); err != nil {
				return err
			}
			d.toastDone(d.toast.dropRelation(prev))
		}
		d.lastRel[ts.Table] = ts.RelationID
	}
	return d.emitRow1(meta, lsn, ts, op, vals, emit)
}

func (d *decoder) emitRow1(meta *rowMeta, lsn pglogrepl.LSN, ts *tableSchema, op string, vals []colValue, emit emitFunc) error {
	// The file writer keeps rows until it writes them in a batch, so each
	// row is its own slice (carved from a slab: one allocation for many
	// rows, freed once none of them is referenced).
	var row parquet.Row
	if d.textEmit != nil {
		row = d.metaBuf[:0] // the file writer copies it
	} else {
		row = d.slab.row(metaColumns + len(ts.Columns) + 1)
	}
	shared := meta.shared()
	row = append(row,
		opValue(op),
		shared[colCommitLSN],
		parquet.Int64Value(meta.seq).Level(0, 0, colSeq),
		parquet.Int64Value(int64(lsn)).Level(0, 0, colLSN),
		shared[colXid],
		shared[colCommitTS],
	)
	meta.seq++

	// _unchanged comes before the table columns in the file.
	nUnchanged := 0
	for i := range vals {
		if vals[i].unchanged {
			row = append(row, parquet.ByteArrayValue(ts.Columns[i].nameBytes).Level(min(nUnchanged, 1), 1, colUnchanged))
			nUnchanged++
		}
	}
	if nUnchanged == 0 {
		row = append(row, parquet.NullValue().Level(0, 0, colUnchanged))
	}
	d.unfilled += int64(nUnchanged)

	size := 64
	if d.textEmit != nil {
		// The file writer's encoders convert the text, in parallel with
		// decoding. [issue 7]
		d.metaBuf = row
		for i := range vals {
			size += len(vals[i].data)
		}
		return d.textEmit(ts, row, vals, lsn, op, size)
	}
	for i, c := range ts.Columns {
		col := metaColumns + i
		var err error
		if vals == nil || vals[i].null {
			row, err = c.conv.appendText(row, nil, true, col)
		} else {
			size += len(vals[i].data)
			row, err = c.conv.appendText(row, vals[i].data, false, col)
		}
		if err != nil {
			return fmt.Errorf("table %s column %s at %s: %w", ts.Table, c.Name, lsn, err)
		}
	}
	return emit(ts, row, op, size)
}

// takeNulled returns, by table.column, the values written as NULL by a rule
// of the type map since the last call, and how many unchanged TOAST values
// were left unfilled.
func (d *decoder) takeNulled() (nulled map[string]int64, unfilled int64) {
	for _, ts := range d.schemas {
		for _, c := range ts.Columns {
			nc, ok := c.conv.(nullCounter)
			if !ok {
				continue
			}
			n := nc.nulled()
			if delta := n - d.reported[c.conv]; delta > 0 {
				if nulled == nil {
					nulled = map[string]int64{}
				}
				nulled[ts.Table+"."+c.Name] += int64(delta)
				d.reported[c.conv] = n
			}
		}
	}
	unfilled, d.unfilled = d.unfilled, 0
	return nulled, unfilled
}

// pgoutput change messages, protocol version 1, parsed without copying:
// the tuple values point into the message.

var errShortMessage = errors.New("message too short")

// tupleCol is one column of a TupleData.
type tupleCol struct {
	kind byte   // 'n' NULL, 'u' unchanged TOAST, 't' text, 'b' binary
	data []byte // the value, for 't' and 'b'
}

// changeMsg is a decoded Insert, Update, Delete or Truncate message. Its
// slices are reused by the next parse.
type changeMsg struct {
	op      byte // 'I', 'U', 'D' or 'T'
	relid   uint32
	oldKind byte       // 'K' (old key) or 'O' (old row); 0 when there is no old tuple
	old     []tupleCol // nil when there is no old tuple
	new     []tupleCol // nil for Delete
	relids  []uint32   // Truncate
	flags   byte       // Truncate: 1 CASCADE, 2 RESTART IDENTITY

	oldBuf, newBuf []tupleCol
}

func (m *changeMsg) parse(msg []byte) error {
	m.op, m.oldKind, m.old, m.new, m.relids = 0, 0, nil, nil, m.relids[:0]
	if len(msg) < 5 {
		return errShortMessage
	}
	m.op = msg[0]
	if m.op == 'T' {
		n := binary.BigEndian.Uint32(msg[1:5])
		rest := msg[5:]
		if len(rest) < 1 || uint64(len(rest)-1) < 4*uint64(n) {
			return errShortMessage
		}
		m.flags = rest[0]
		rest = rest[1:]
		for i := uint32(0); i < n; i++ {
			m.relids = append(m.relids, binary.BigEndian.Uint32(rest[4*i:]))
		}
		return nil
	}
	m.relid = binary.BigEndian.Uint32(msg[1:5])
	rest := msg[5:]
	var err error
	switch m.op {
	case 'I':
		if len(rest) < 1 || rest[0] != 'N' {
			return errors.New("insert without a new tuple")
		}
		m.newBuf, rest, err = parseTuple(rest[1:], m.newBuf)
		m.new = m.newBuf
	case 'U':
		if len(rest) < 1 {
			return errShortMessage
		}
		if rest[0] == 'K' || rest[0] == 'O' {
			m.oldKind = rest[0]
			if m.oldBuf, rest, err = parseTuple(rest[1:], m.oldBuf); err != nil {
				return err
			}
			m.old = m.oldBuf
		}
		if len(rest) < 1 || rest[0] != 'N' {
			return errors.New("update without a new tuple")
		}
		m.newBuf, rest, err = parseTuple(rest[1:], m.newBuf)
		m.new = m.newBuf
	case 'D':
		if len(rest) < 1 || (rest[0] != 'K' && rest[0] != 'O') {
			return errors.New("delete without an old tuple")
		}
		m.oldKind = rest[0]
		m.oldBuf, rest, err = parseTuple(rest[1:], m.oldBuf)
		m.old = m.oldBuf
	default:
		return fmt.Errorf("not a change message")
	}
	if err != nil {
		return err
	}
	if len(rest) != 0 {
		return fmt.Errorf("%d bytes after the tuple", len(rest))
	}
	return nil
}

// checkWidth makes sure the tuples have one column per column of ts, each
// in text format (or NULL, or unchanged TOAST).
func (m *changeMsg) checkWidth(ts *tableSchema) error {
	for _, tuple := range [][]tupleCol{m.old, m.new} {
		if tuple == nil {
			continue
		}
		if len(tuple) != len(ts.Columns) {
			return fmt.Errorf("tuple of %d columns, the relation has %d", len(tuple), len(ts.Columns))
		}
		for i, tc := range tuple {
			if tc.kind == 'b' {
				return fmt.Errorf("column %s: value in binary format, want text", ts.Columns[i].Name)
			}
		}
	}
	return nil
}

// parseTuple parses a TupleData into dst (reused), returning what follows.
func parseTuple(src []byte, dst []tupleCol) ([]tupleCol, []byte, error) {
	dst = dst[:0]
	if len(src) < 2 {
		return dst, nil, errShortMessage
	}
	n := int(binary.BigEndian.Uint16(src))
	src = src[2:]
	for range n {
		if len(src) < 1 {
			return dst, nil, errShortMessage
		}
		kind := src[0]
		src = src[1:]
		switch kind {
		case 'n', 'u':
			dst = append(dst, tupleCol{kind: kind})
		case 't', 'b':
			if len(src) < 4 {
				return dst, nil, errShortMessage
			}
			l := binary.BigEndian.Uint32(src)
			src = src[4:]
			if uint64(l) > uint64(len(src)) {
				return dst, nil, errShortMessage
			}
			dst = append(dst, tupleCol{kind: kind, data: src[:l:l]})
			src = src[l:]
		default:
			return dst, nil, fmt.Errorf("unknown tuple column kind %q", kind)
		}
	}
	return dst, src, nil
}

// commitDay is the UTC date of a commit, for the dt= partition.
func commitDay(t time.Time) time.Time {
	y, m, d := t.UTC().Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}
