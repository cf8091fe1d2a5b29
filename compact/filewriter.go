package compact

import (
	"fmt"
	"os"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress/zstd"
)

// Row-group bounds: a group is flushed at whichever comes first.
const (
	rowGroupRows  = 256 << 10
	rowGroupBytes = 64 << 20
)

// fileWriter writes one Parquet file of one table, one schema version and
// one commit date to a local temporary file.
type fileWriter struct {
	ts      *tableSchema
	day     time.Time
	n       int // ordinal among this commit's files of the table and day
	f       *os.File
	w       *parquet.Writer
	rows    int64
	first   pglogrepl.LSN
	last    pglogrepl.LSN
	pending int // bytes in the unflushed row group, roughly
	batch   []parquet.Row
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
	return &fileWriter{ts: ts, day: day, n: n, f: f, w: w}, nil
}

// write adds one row; row is copied by the writer.
func (fw *fileWriter) write(row parquet.Row, commitLSN pglogrepl.LSN, size int) error {
	if fw.rows == 0 {
		fw.first = commitLSN
	}
	fw.last = commitLSN
	fw.rows++
	fw.batch = append(fw.batch, row)
	fw.pending += size
	if len(fw.batch) >= 256 {
		if err := fw.flushBatch(); err != nil {
			return err
		}
	}
	if fw.pending >= rowGroupBytes {
		if err := fw.flushBatch(); err != nil {
			return err
		}
		fw.pending = 0
		if err := fw.w.Flush(); err != nil {
			return fmt.Errorf("write row group of %s: %w", fw.ts.Table, err)
		}
	}
	return nil
}

func (fw *fileWriter) flushBatch() error {
	if len(fw.batch) == 0 {
		return nil
	}
	if _, err := fw.w.WriteRows(fw.batch); err != nil {
		return fmt.Errorf("write rows of %s: %w", fw.ts.Table, err)
	}
	clear(fw.batch)
	fw.batch = fw.batch[:0]
	return nil
}

// finish closes the Parquet file and returns its local path and size.
func (fw *fileWriter) finish() (path string, size int64, err error) {
	path = fw.f.Name()
	if err := fw.flushBatch(); err != nil {
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

func (fw *fileWriter) abort() {
	fw.f.Close()
	os.Remove(fw.f.Name())
}

func (fw *fileWriter) key() string {
	return dataKey(fw.ts.Table, fw.day, fw.first, fw.last, fw.n)
}
