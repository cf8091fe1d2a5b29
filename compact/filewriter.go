package compact

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress/zstd"
)

// Row-group bounds: a group is cut at whichever comes first. Groups of
// about DuckDB's size let readers, and our encoders, work on several at once.
const (
	rowGroupRows  = 128 << 10
	rowGroupBytes = 64 << 20
	// batchRows rows are handed to an encoder at a time.
	batchRows = 512
	// maxEncoding bounds the row groups of one file being encoded or
	// waiting for their turn to be appended to the file.
	maxEncoding = 2
)

// fileWriter writes one Parquet file of one table, one schema version and
// one commit date to a local temporary file.
//
// Rows are converted, encoded and compressed in the background while the
// caller decodes the next ones: batches of text rows are converted by
// GOMAXPROCS converter goroutines in parallel, then written in order by the
// encoder of their row group (one goroutine per row group, at most
// maxEncoding per file), and row groups are appended to the file in order.
// Every open file (every table of a commit) has its own converters and
// encoders, so tables are written in parallel too. Memory is bounded by the
// batches in flight and a few row groups per file, whatever the file's size.
type fileWriter struct {
	ts    *tableSchema
	day   time.Time
	n     int // ordinal among this commit's files of the table and day
	f     *os.File
	w     *parquet.Writer
	rows  int64
	first pglogrepl.LSN
	last  pglogrepl.LSN

	batch   *batch      // rows not yet handed to an encoder
	cur     *rowGroup   // the row group being filled
	groups  []*rowGroup // row groups handed over, in file order, not yet appended
	free    chan *batch
	work    chan *batch // text batches for the converters; nil until needed
	pending int         // bytes in the current row group, roughly
	err     error
}

// batch is a run of rows handed to an encoder: rows built already (write),
// or rows whose table columns are still PostgreSQL text (writeText), which
// the encoder converts.
type batch struct {
	rows []parquet.Row

	meta  []parquet.Value // each text row's metadata values, back to back
	cols  []textCol       // each text row's table columns, len(ts.Columns) per row
	text  []byte          // the text of the columns
	trows []textRow

	// Set by the converter that took the batch, then ready is closed.
	ready chan struct{}
	built []parquet.Row
	vals  []parquet.Value
	err   error
}

type textCol struct {
	off, n uint32
	null   bool
}

type textRow struct {
	meta0, meta1 int32 // its metadata values: meta[meta0:meta1]
	col0         int32 // its first column in cols
	lsn          pglogrepl.LSN
	built        parquet.Row // a large row, converted by writeText already
}

// bigRowBytes: a row with this much text is converted at once and written
// before the next is read, so that a huge value is held as few times as it
// would be without the encoders.
const bigRowBytes = 4 << 20

func (b *batch) len() int { return len(b.rows) + len(b.trows) }

func (b *batch) reset() {
	clear(b.rows)
	b.rows = b.rows[:0]
	clear(b.meta)
	b.meta = b.meta[:0]
	b.cols = b.cols[:0]
	if cap(b.text) > 4<<20 {
		b.text = nil // one huge value: do not keep its memory
	}
	b.text = b.text[:0]
	clear(b.trows)
	b.trows = b.trows[:0]
	clear(b.built)
	b.built = b.built[:0]
	clear(b.vals)
	b.vals = b.vals[:0]
	b.err = nil
}

// rowGroup is one row group, encoded by a goroutine of its own.
type rowGroup struct {
	rg    *parquet.ConcurrentRowGroupWriter
	rows  int
	in    chan *batch    // closed when the group is complete
	done  chan error     // the encoder's outcome, once in is closed and drained
	taken sync.WaitGroup // batches handed over and not yet encoded
}

// newFileWriter creates a file writer. opts apply after the defaults (a
// caller that writes many files passes one shared parquet.Compression codec:
// each codec keeps its own ZSTD encoders, with a window-sized history
// buffer each).
func newFileWriter(tmpDir string, ts *tableSchema, day time.Time, n int, opts ...parquet.WriterOption) (*fileWriter, error) {
	f, err := os.CreateTemp(tmpDir, "part-*.parquet")
	if err != nil {
		return nil, fmt.Errorf("create temporary file: %w", err)
	}
	options := []parquet.WriterOption{
		ts.parquet,
		parquet.Compression(&zstd.Codec{Level: zstd.SpeedDefault}),
		parquet.MaxRowsPerRowGroup(rowGroupRows),
		parquet.CreatedBy("wal-cake", "", ""),
		parquet.KeyValueMetadata("walcake.table", ts.Table),
		parquet.KeyValueMetadata("walcake.schema_version", ts.Version),
	}
	for _, path := range ts.unboundedPaths() { // [issue 4] no whole large values in statistics (tables.go)
		options = append(options, parquet.SkipPageStatistics(path...), parquet.SkipPageBounds(path...))
	}
	w := parquet.NewWriter(f, append(options, opts...)...)
	return &fileWriter{ts: ts, day: day, n: n, f: f, w: w, free: make(chan *batch, 2*maxEncoding+2)}, nil
}

// write adds one row, built. It is written in the caller's goroutine with
// its batch: the caller must not reuse the row's memory before flushBatch or
// finish returns.
func (fw *fileWriter) write(row parquet.Row, commitLSN pglogrepl.LSN, size int) error {
	b, err := fw.open(commitLSN, size, false)
	if err != nil {
		return err
	}
	b.rows = append(b.rows, row)
	return fw.maybeHandOver()
}

// writeText adds one row whose metadata values are built (meta) and whose
// table columns are still text (vals; nil for a row of NULLs, a truncate).
// The encoder converts the text with the columns' converters. Both are
// copied: the caller may reuse them at once.
func (fw *fileWriter) writeText(meta []parquet.Value, vals []colValue, lsn, commitLSN pglogrepl.LSN, size int) error {
	if size >= bigRowBytes {
		return fw.writeBig(meta, vals, lsn, commitLSN, size)
	}
	b, err := fw.open(commitLSN, size, true)
	if err != nil {
		return err
	}
	r := textRow{meta0: int32(len(b.meta)), col0: int32(len(b.cols)), lsn: lsn}
	b.meta = append(b.meta, meta...)
	r.meta1 = int32(len(b.meta))
	for i := range fw.ts.Columns {
		if vals == nil || vals[i].null {
			b.cols = append(b.cols, textCol{null: true})
			continue
		}
		b.cols = append(b.cols, textCol{off: uint32(len(b.text)), n: uint32(len(vals[i].data))})
		b.text = append(b.text, vals[i].data...)
	}
	b.trows = append(b.trows, r)
	return fw.maybeHandOver()
}

// writeBig converts a large row here and has it written before returning:
// a batch of its own, handed over alone.
func (fw *fileWriter) writeBig(meta []parquet.Value, vals []colValue, lsn, commitLSN pglogrepl.LSN, size int) error {
	if err := fw.handOver(); err != nil {
		return err
	}
	row := make(parquet.Row, 0, len(meta)+len(fw.ts.Columns)+1)
	row = append(row, meta...)
	for j, c := range fw.ts.Columns {
		var text []byte
		null := vals == nil || vals[j].null
		if !null {
			text = vals[j].data
		}
		var err error
		if row, err = c.conv.appendText(row, text, null, metaColumns+j); err != nil {
			return fmt.Errorf("table %s column %s at %s: %w", fw.ts.Table, c.Name, lsn, err)
		}
	}
	b, err := fw.open(commitLSN, size, true)
	if err != nil {
		return err
	}
	b.trows = append(b.trows, textRow{lsn: lsn, built: row})
	if fw.cur == nil {
		if err := fw.startGroup(); err != nil {
			return err
		}
	}
	g := fw.cur
	if err := fw.handOver(); err != nil {
		return err
	}
	g.taken.Wait()
	if fw.cur == nil {
		// The row filled its group: append it now rather than hold its
		// pages until the next group starts.
		return fw.drainGroups()
	}
	return fw.err
}

// open counts a row and returns the batch to add it to. A batch holds rows
// of one kind.
func (fw *fileWriter) open(commitLSN pglogrepl.LSN, size int, text bool) (*batch, error) {
	if fw.err != nil {
		return nil, fw.err
	}
	if fw.batch != nil && fw.batch.len() > 0 && (len(fw.batch.trows) > 0) != text {
		if err := fw.handOver(); err != nil {
			return nil, err
		}
	}
	if fw.rows == 0 {
		fw.first = commitLSN
	}
	fw.last = commitLSN
	fw.rows++
	fw.pending += size
	if fw.batch == nil {
		select {
		case fw.batch = <-fw.free:
		default:
			fw.batch = &batch{}
		}
	}
	return fw.batch, nil
}

func (fw *fileWriter) maybeHandOver() error {
	n := fw.batch.len()
	if n >= batchRows || fw.cur != nil && fw.cur.rows+n >= rowGroupRows || fw.pending >= rowGroupBytes {
		return fw.handOver()
	}
	return nil
}

// handOver gives the batch to the current row group's encoder, starting a
// row group when none is open and closing it once it is full.
func (fw *fileWriter) handOver() error {
	if fw.err != nil {
		return fw.err
	}
	if fw.batch == nil || fw.batch.len() == 0 {
		return nil
	}
	if len(fw.batch.rows) > 0 {
		return fw.writeBuilt()
	}
	if fw.cur == nil {
		if err := fw.startGroup(); err != nil {
			return err
		}
	}
	g := fw.cur
	b := fw.batch
	fw.batch = nil
	g.rows += b.len()
	g.taken.Add(1)
	if b.ready == nil {
		b.ready = make(chan struct{}, 1)
	}
	fw.startConverters()
	fw.work <- b
	g.in <- b
	if g.rows >= rowGroupRows || fw.pending >= rowGroupBytes {
		fw.endGroup()
	}
	return fw.appendDone()
}

// appendDone appends to the file, in order, the row groups whose encoders
// have finished, so that their pages leave memory.
func (fw *fileWriter) appendDone() error {
	for len(fw.groups) > 0 && fw.groups[0] != fw.cur {
		g := fw.groups[0]
		select {
		case err := <-g.done:
			g.done <- err // appendOldest takes it
			if err := fw.appendOldest(); err != nil {
				return err
			}
		default:
			return nil
		}
	}
	return nil
}

// writeBuilt writes a batch of built rows in the caller's goroutine, as
// write's callers (backfill, with workers of its own) expect: the rows'
// memory is theirs again once flushBatch returns.
func (fw *fileWriter) writeBuilt() error {
	b := fw.batch
	fw.batch = nil
	if err := fw.drainGroups(); err != nil { // rows written before go first
		return err
	}
	if _, err := fw.w.WriteRows(b.rows); err != nil {
		fw.err = fmt.Errorf("write rows of %s: %w", fw.ts.Table, err)
		return fw.err
	}
	b.reset()
	select {
	case fw.free <- b:
	default:
	}
	if fw.pending >= rowGroupBytes {
		fw.pending = 0
		if err := fw.w.Flush(); err != nil {
			fw.err = fmt.Errorf("write row group of %s: %w", fw.ts.Table, err)
			return fw.err
		}
	}
	return nil
}

// startGroup opens a row group, after appending the oldest to the file when
// maxEncoding are in flight.
func (fw *fileWriter) startGroup() error {
	for len(fw.groups) >= maxEncoding {
		if err := fw.appendOldest(); err != nil {
			return err
		}
	}
	g := &rowGroup{rg: fw.w.BeginRowGroup(), in: make(chan *batch, 4), done: make(chan error, 1)}
	go fw.encode(g)
	fw.cur = g
	fw.groups = append(fw.groups, g)
	return nil
}

// startConverters starts the converter goroutines of the file.
func (fw *fileWriter) startConverters() {
	if fw.work != nil {
		return
	}
	n := runtime.GOMAXPROCS(0)
	work := make(chan *batch, 2*n)
	fw.work = work
	for range n {
		go func() {
			for b := range work {
				b.built, b.vals, b.err = fw.convert(b, b.built[:0], b.vals[:0])
				b.ready <- struct{}{}
			}
		}()
	}
}

// encode writes the converted batches of one row group, in order, into its
// column writers (which encode and compress its pages), then recycles them.
func (fw *fileWriter) encode(g *rowGroup) {
	var err error
	for b := range g.in {
		<-b.ready
		if err == nil {
			err = b.err
		}
		if err == nil {
			if _, werr := g.rg.WriteRows(b.built); werr != nil {
				err = fmt.Errorf("write rows of %s: %w", fw.ts.Table, werr)
			}
		}
		b.reset()
		select {
		case fw.free <- b:
		default:
		}
		g.taken.Done()
	}
	if err == nil {
		if ferr := g.rg.Flush(); ferr != nil {
			err = fmt.Errorf("write row group of %s: %w", fw.ts.Table, ferr)
		}
	}
	g.done <- err
}

// convert builds the rows of a batch of text rows: rows and their values
// are reused from batch to batch (the column writers copy the values). A
// row that outgrows vals moves the rest to a larger array; the rows built
// before keep the old one.
func (fw *fileWriter) convert(b *batch, rows []parquet.Row, vals []parquet.Value) ([]parquet.Row, []parquet.Value, error) {
	cols := fw.ts.Columns
	if need := len(b.trows) * (metaColumns + len(cols) + 1); cap(vals) < need {
		vals = make([]parquet.Value, 0, need)
	}
	row := parquet.Row(vals)
	for _, r := range b.trows {
		if r.built != nil {
			rows = append(rows, r.built)
			continue
		}
		start := len(row)
		row = append(row, b.meta[r.meta0:r.meta1]...)
		for j := range cols {
			tc := b.cols[int(r.col0)+j]
			var text []byte
			if !tc.null {
				text = b.text[tc.off : tc.off+tc.n]
			}
			var err error
			if row, err = cols[j].conv.appendText(row, text, tc.null, metaColumns+j); err != nil {
				return rows, vals, fmt.Errorf("table %s column %s at %s: %w", fw.ts.Table, cols[j].Name, r.lsn, err)
			}
		}
		rows = append(rows, row[start:len(row):len(row)])
	}
	return rows, []parquet.Value(row), nil
}

// endGroup closes the current row group: its encoder finishes it.
func (fw *fileWriter) endGroup() {
	if fw.cur != nil {
		close(fw.cur.in)
		fw.cur = nil
		fw.pending = 0
	}
}

// appendOldest waits for the oldest row group's encoder and appends the
// group to the file.
func (fw *fileWriter) appendOldest() error {
	g := fw.groups[0]
	fw.groups = fw.groups[1:]
	err := <-g.done
	if err == nil {
		if _, cerr := g.rg.Commit(); cerr != nil {
			err = fmt.Errorf("write row group of %s: %w", fw.ts.Table, cerr)
		}
	}
	if err != nil && fw.err == nil {
		fw.err = err
	}
	return fw.err
}

// flushBatch hands over the pending rows and waits until every row written
// so far is encoded, so that the caller may reuse their memory.
func (fw *fileWriter) flushBatch() error {
	if err := fw.handOver(); err != nil {
		return err
	}
	for _, g := range fw.groups {
		g.taken.Wait()
	}
	return fw.err
}

// drain hands over the pending rows, closes the open row group and
// appends every row group in flight.
func (fw *fileWriter) drain() error {
	err := fw.handOver()
	if derr := fw.drainGroups(); err == nil {
		err = derr
	}
	return err
}

// drainGroups closes the open row group and appends every row group in
// flight.
func (fw *fileWriter) drainGroups() error {
	fw.endGroup()
	var err error
	for len(fw.groups) > 0 {
		if aerr := fw.appendOldest(); err == nil {
			err = aerr
		}
	}
	return err
}

// stopConverters ends the converter goroutines, once no batch is in flight.
func (fw *fileWriter) stopConverters() {
	if fw.work != nil {
		close(fw.work)
		fw.work = nil
	}
}

// finish closes the Parquet file and returns its local path and size.
func (fw *fileWriter) finish() (path string, size int64, err error) {
	path = fw.f.Name()
	err = fw.drain()
	fw.stopConverters()
	if err != nil {
		fw.abort()
		return "", 0, err
	}
	if err := fw.w.Close(); err != nil {
		fw.abort()
		return "", 0, fmt.Errorf("close Parquet file of %s: %w", fw.ts.Table, err)
	}
	if err := fw.f.Sync(); err != nil {
		fw.abort()
		return "", 0, fmt.Errorf("sync %s: %w", path, err)
	}
	fi, err := fw.f.Stat()
	if err != nil {
		fw.abort()
		return "", 0, fmt.Errorf("stat %s: %w", path, err)
	}
	if err := fw.f.Close(); err != nil {
		os.Remove(path)
		return "", 0, fmt.Errorf("close %s: %w", path, err)
	}
	return path, fi.Size(), nil
}

// abort stops the encoders and removes the file.
func (fw *fileWriter) abort() {
	fw.endGroup()
	for _, g := range fw.groups {
		<-g.done
	}
	fw.groups = nil
	fw.stopConverters()
	fw.f.Close()
	os.Remove(fw.f.Name())
}

// rowSlab hands out row slices carved from large slabs of values, so that
// building a row costs no allocation of its own. A slab is garbage once no
// row cut from it is referenced.
type rowSlab struct {
	vals []parquet.Value
}

const slabValues = 16 << 10

// row returns an empty row with room for n values; appending more values
// than that moves the row to memory of its own.
func (s *rowSlab) row(n int) parquet.Row {
	if len(s.vals)+n > cap(s.vals) {
		s.vals = make([]parquet.Value, 0, max(slabValues, n))
	}
	start := len(s.vals)
	s.vals = s.vals[:start+n]
	return parquet.Row(s.vals[start : start : start+n])
}

func (fw *fileWriter) key() string {
	return dataKey(fw.ts.Table, fw.day, fw.first, fw.last, fw.n)
}
