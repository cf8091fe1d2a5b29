package compact

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/parquet-go/parquet-go"
)

// backfillSession fixes the text formats of values, as capture does for
// pgoutput, so that COPY prints every value exactly as the stream does and
// the same converters apply; and it makes key bounds round-trip exactly.
var backfillSession = map[string]string{
	"TimeZone":                    "UTC",
	"DateStyle":                   "ISO, YMD",
	"IntervalStyle":               "postgres",
	"extra_float_digits":          "3",
	"client_encoding":             "UTF8",
	"standard_conforming_strings": "on",
	"application_name":            "walcake-backfill",
}

// backfillConnect opens a connection with the backfill session settings; a
// replication connection (replication=database) speaks only the simple
// query protocol.
func backfillConnect(ctx context.Context, connString string, replication bool) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("parse PG_CONN_STRING: %w", connStringError(err))
	}
	for k, v := range backfillSession {
		cfg.RuntimeParams[k] = v
	}
	what := "connect"
	if replication {
		cfg.RuntimeParams["replication"] = "database"
		cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
		what = "connect for replication"
		// COPY sends a row per message, 8 KiB at a time: read the socket
		// in large pieces when rows queue up, not a syscall per 8 KiB.
		cfg.BuildFrontend = func(r io.Reader, w io.Writer) *pgproto3.Frontend {
			return pgproto3.NewFrontend(bufio.NewReaderSize(r, copyReadBuffer), w)
		}
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return conn, nil
}

// copyReadBuffer is the read buffer of a worker's connection.
const copyReadBuffer = 256 << 10

// snapshotLSN is where the snapshot sits in commit order: every transaction
// whose commit record starts before the consistent point is in it, every
// one at or after it is streamed by the slot. The consistent point itself
// can be a commit record's position, and records start 8-byte aligned, so
// one less orders the snapshot after all it holds and before all it lacks.
func snapshotLSN(consistentPoint pglogrepl.LSN) pglogrepl.LSN { return consistentPoint - 1 }

// createSnapshotSlot creates a temporary logical slot and returns its
// consistent point and, with action "export", the snapshot's name. Action
// "use" makes its snapshot the current transaction's.
func createSnapshotSlot(ctx context.Context, conn *pgconn.PgConn, name, action string) (pglogrepl.LSN, string, error) {
	sql := fmt.Sprintf("CREATE_REPLICATION_SLOT %s TEMPORARY LOGICAL pgoutput (SNAPSHOT '%s')", name, action)
	if major := serverMajor(conn); major > 0 && major < 15 {
		sql = fmt.Sprintf("CREATE_REPLICATION_SLOT %s TEMPORARY LOGICAL pgoutput %s_SNAPSHOT", name, strings.ToUpper(action))
	}
	res, err := pglogrepl.ParseCreateReplicationSlot(conn.Exec(ctx, sql))
	if err != nil {
		return 0, "", fmt.Errorf("create temporary slot for a snapshot: %w", err)
	}
	lsn, err := pglogrepl.ParseLSN(res.ConsistentPoint)
	if err != nil {
		return 0, "", fmt.Errorf("create temporary slot for a snapshot: consistent point %q: %w", res.ConsistentPoint, err)
	}
	return lsn, res.SnapshotName, nil
}

// serverMajor is the server's major version (15 for "15.18 (Debian ...)"),
// or 0 when unknown.
func serverMajor(conn *pgconn.PgConn) int {
	v := conn.ParameterStatus("server_version")
	end := 0
	for end < len(v) && v[end] >= '0' && v[end] <= '9' {
		end++
	}
	major, _ := strconv.Atoi(v[:end])
	return major
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// bfWorker reads chunks, one at a time, on its own replication connection.
type bfWorker struct {
	b     *backfiller
	id    int
	conn  *pgx.Conn
	cat   *catalog
	slots int // temporary slots created, for unique names

	committing chan error // the previous chunk's commit, when in flight
}

func (w *bfWorker) close() {
	if w.conn != nil {
		w.conn.Close(context.Background())
		w.conn, w.cat = nil, nil
	}
}

func (w *bfWorker) exec(ctx context.Context, sql string) error {
	_, err := w.conn.PgConn().Exec(ctx, sql).ReadAll()
	return err
}

// chunkRead is what reading a chunk produced.
type chunkRead struct {
	consistent pglogrepl.LSN
	commit     pglogrepl.LSN
	at         time.Time
	rows       int64
	path       string // local Parquet file; "" when the chunk had no rows
	size       int64
	key        string
	mf         ManifestFile
}

// do reads one chunk, then commits it to the lake in the background while
// the worker reads its next chunk: at most one commit per worker is in
// flight (one local file waiting for its upload), and wait returns its
// error.
func (w *bfWorker) do(ctx context.Context, ch *bfChunk) error {
	t := ch.table
	rd, err := w.read(ctx, ch)
	if !t.keyed() {
		t.readFinished()
	}
	if err != nil {
		w.close() // the session's temporary slot and transaction go with it
		return fmt.Errorf("backfill %s chunk %d: %w", t.name, ch.plan.Chunk, err)
	}
	if err := w.wait(); err != nil {
		if rd.path != "" {
			os.Remove(rd.path)
		}
		return err
	}
	done := make(chan error, 1)
	w.committing = done
	go func() {
		err := w.b.commitChunk(ctx, t, ch, rd)
		if rd.path != "" {
			os.Remove(rd.path)
		}
		if err != nil {
			err = fmt.Errorf("backfill %s chunk %d: %w", t.name, ch.plan.Chunk, err)
		}
		done <- err
	}()
	return nil
}

// wait waits for the worker's commit in flight, if any.
func (w *bfWorker) wait() error {
	if w.committing == nil {
		return nil
	}
	err := <-w.committing
	w.committing = nil
	return err
}

// read takes the chunk's snapshot, copies its rows into a local Parquet
// file and ends the snapshot.
func (w *bfWorker) read(ctx context.Context, ch *bfChunk) (rd chunkRead, err error) {
	t := ch.table
	t.start()
	started := time.Now()
	if w.conn == nil {
		if w.conn, err = backfillConnect(ctx, w.b.cfg.ConnString, true); err != nil {
			return rd, err
		}
		w.cat = newCatalog(w.conn)
	}
	if err := w.exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"); err != nil {
		return rd, fmt.Errorf("begin: %w", err)
	}
	slot := ""
	if t.keyed() {
		w.slots++
		slot = fmt.Sprintf("walcake_bf_%s_%d_%d", w.b.slotTag, w.id, w.slots)
		if rd.consistent, _, err = createSnapshotSlot(ctx, w.conn.PgConn(), slot, "use"); err != nil {
			return rd, err
		}
		var us int64
		if err := w.conn.QueryRow(ctx, "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8").Scan(&us); err != nil {
			return rd, fmt.Errorf("read the snapshot's time: %w", err)
		}
		rd.at = time.UnixMicro(us).UTC()
	} else {
		if err := w.exec(ctx, "SET TRANSACTION SNAPSHOT "+quoteLiteral(t.snapName)); err != nil {
			return rd, fmt.Errorf("import the table's snapshot: %w", err)
		}
		rd.consistent, rd.at = t.snapLSN, t.snapAt
	}
	rd.commit = snapshotLSN(rd.consistent)
	w.b.noteSnapshot(t, rd.commit)
	snapped := time.Now()

	ts, err := w.schema(ctx, t)
	if err != nil {
		return rd, err
	}
	if err := t.version(ctx, w.b.cfg.Store, ts, rd.commit, w.b.log); err != nil {
		return rd, err
	}
	ordinal, err := fileOrdinal(t.run.Run, ch.plan.Chunk)
	if err != nil {
		return rd, err
	}
	fw, err := newFileWriter(w.b.cfg.TempDir, ts, commitDay(rd.at), ordinal, parquet.Compression(w.b.codec))
	if err != nil {
		return rd, err
	}
	ok := false
	defer func() {
		if !ok {
			fw.abort()
		}
	}()

	cols := make([]string, len(ts.Columns))
	for i, c := range ts.Columns {
		cols[i] = pgx.Identifier{c.Name}.Sanitize()
	}
	sql := "COPY (SELECT " + strings.Join(cols, ", ") + " FROM " + t.from() + t.chunkWhere(&ch.plan) + ") TO STDOUT"
	rw := w.rowWriter(t, ts, fw, rd, ordinal)
	dec := newCopyDecoder(len(ts.Columns), rw.row)
	var out io.Writer = dec
	var busy *timedWriter
	if w.b.log.Enabled(ctx, slog.LevelDebug) {
		busy = &timedWriter{w: dec}
		out = busy
	}
	tag, err := w.conn.PgConn().CopyTo(ctx, out, sql)
	if err == nil {
		err = dec.Close()
	}
	if err == nil {
		err = rw.flush()
	}
	if err != nil {
		return rd, fmt.Errorf("copy rows: %w", err)
	}
	copied := time.Now()
	if tag.RowsAffected() != rw.n {
		return rd, fmt.Errorf("copy rows: the server sent %d rows, %d arrived", tag.RowsAffected(), rw.n)
	}
	if err := w.exec(ctx, "COMMIT"); err != nil {
		return rd, fmt.Errorf("commit: %w", err)
	}
	if slot != "" {
		if err := w.exec(ctx, "DROP_REPLICATION_SLOT "+slot); err != nil {
			return rd, fmt.Errorf("drop temporary slot %s: %w", slot, err)
		}
	}
	rd.rows = rw.n
	if rd.rows == 0 {
		return rd, nil // no file: fw is aborted
	}
	rd.path, rd.size, err = fw.finish()
	ok = true
	if err != nil {
		return rd, err
	}
	// Counted by the converters, which have all run once the file is
	// finished.
	if n := nulledValues(ts); n > 0 {
		w.b.log.Warn("values that Parquet cannot hold were written as NULL (see docs/types.md)", "table", t.name, "chunk", ch.plan.Chunk, "values", n)
	}
	w.b.log.Debug("chunk read", "table", t.name, "chunk", ch.plan.Chunk, "rows", rd.rows, "snapshot_lsn", rd.consistent.String(),
		"snapshot_s", roundSeconds(snapped.Sub(started)), "copy_s", roundSeconds(copied.Sub(snapped)),
		"finish_s", roundSeconds(time.Since(copied)), "convert_s", roundSeconds(busy.total()))
	rd.key = fw.key()
	rd.mf = ManifestFile{
		Key: rd.key, Table: t.name, SchemaVersion: ts.Version, Rows: rd.rows, Bytes: rd.size,
		FirstCommitLSN: rd.commit.String(), LastCommitLSN: rd.commit.String(),
	}
	return rd, nil
}

// timedWriter adds up the time spent in its writer: how much of a COPY the
// client spends converting and writing rows, rather than waiting for them.
type timedWriter struct {
	w   io.Writer
	sum time.Duration
}

func (t *timedWriter) Write(p []byte) (int, error) {
	start := time.Now()
	n, err := t.w.Write(p)
	t.sum += time.Since(start)
	return n, err
}

func (t *timedWriter) total() time.Duration {
	if t == nil {
		return 0
	}
	return t.sum
}

func nulledValues(ts *tableSchema) uint64 {
	var n uint64
	for _, c := range ts.Columns {
		if nc, ok := c.conv.(nullCounter); ok {
			n += nc.nulled()
		}
	}
	return n
}

// schema reads t's published columns in the chunk's snapshot, as a Relation
// message would describe them, and resolves their types.
func (w *bfWorker) schema(ctx context.Context, t *bfTable) (*tableSchema, error) {
	rows, err := w.conn.Query(ctx, `
		SELECT c.relreplident::text, a.attname::text, a.atttypid::int8, a.atttypmod,
		       c.relreplident = 'f' OR a.attnum = ANY (coalesce(ident.indkey::int2[], '{}'))
		FROM pg_class c
		JOIN pg_attribute a ON a.attrelid = c.oid
		LEFT JOIN LATERAL (
			SELECT i.indkey FROM pg_index i
			WHERE i.indrelid = c.oid
			  AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))
			LIMIT 1) ident ON true
		WHERE c.oid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
		ORDER BY a.attnum`, t.oid)
	if err != nil {
		return nil, fmt.Errorf("read columns: %w", err)
	}
	rel := &pglogrepl.RelationMessage{RelationID: t.oid, Namespace: t.schema, RelationName: t.rel}
	var (
		ident, name string
		typ         int64
		typmod      int32
		key         bool
	)
	_, err = pgx.ForEachRow(rows, []any{&ident, &name, &typ, &typmod, &key}, func() error {
		rel.ReplicaIdentity = pgChar(ident)
		if t.pubCols != nil && !t.pubCols[name] {
			return nil
		}
		var flags uint8
		if key {
			flags = 1
		}
		rel.Columns = append(rel.Columns, &pglogrepl.RelationMessageColumn{
			Flags: flags, Name: name, DataType: uint32(typ), TypeModifier: typmod,
		})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read columns: %w", err)
	}
	if rel.ReplicaIdentity == 0 {
		return nil, fmt.Errorf("table %s (oid %d) no longer exists", t.name, t.oid)
	}
	rel.ColumnNum = uint16(len(rel.Columns))
	return newTableSchema(ctx, w.cat, rel)
}

// version gives ts the lake's schema version for its columns: one this run
// already uses, the table's newest version when the columns are the same,
// or a new version named after the snapshot (written before any file that
// uses it).
func (t *bfTable) version(ctx context.Context, store Store, ts *tableSchema, at pglogrepl.LSN, log *slog.Logger) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if v, ok := t.versions[ts.fingerprint]; ok {
		ts.Version = v
		return nil
	}
	h, err := latestSchema(ctx, store, ts.Table)
	if err != nil {
		return err
	}
	if h.version != "" && h.fingerprint == ts.fingerprint {
		ts.Version = h.version
	} else {
		ts.Version = lsnHex(at)
		if err := putJSON(ctx, store, schemaKey(ts.Table, ts.Version), ts.doc(at)); err != nil {
			return err
		}
		log.Info("new schema version", "table", ts.Table, "version", ts.Version)
	}
	t.versions[ts.fingerprint] = ts.Version
	return nil
}

// chunkRowWriter hands COPY rows to the file writer as text: its encoders
// convert them with the type map, in parallel with the reading here.
type chunkRowWriter struct {
	t          *bfTable
	ts         *tableSchema
	fw         *fileWriter
	commit     pglogrepl.LSN
	consistent pglogrepl.LSN
	meta       [metaColumns]parquet.Value // _seq is set per row
	vals       []colValue
	seq        int64 // the file ordinal in the high 32 bits
	n          int64
	counted    int64 // rows added to the table's progress
}

var opSnapshot = []byte("R")

func (w *bfWorker) rowWriter(t *bfTable, ts *tableSchema, fw *fileWriter, rd chunkRead, ordinal int) *chunkRowWriter {
	rw := &chunkRowWriter{t: t, ts: ts, fw: fw, commit: rd.commit, consistent: rd.consistent,
		seq: int64(ordinal) << 32, vals: make([]colValue, len(ts.Columns))}
	rw.meta = [metaColumns]parquet.Value{
		parquet.ByteArrayValue(opSnapshot).Level(0, 0, colOp),
		parquet.Int64Value(int64(rd.commit)).Level(0, 0, colCommitLSN),
		parquet.Int64Value(0).Level(0, 0, colSeq),
		parquet.Int64Value(int64(rd.consistent)).Level(0, 0, colLSN),
		parquet.Int64Value(0).Level(0, 0, colXid),
		parquet.Int64Value(rd.at.UnixMicro()).Level(0, 0, colCommitTS),
		parquet.NullValue().Level(0, 0, colUnchanged),
	}
	return rw
}

// fileOrdinal numbers a chunk's data file, <n> in its name, and is the high
// half of its rows' _seq: run × 1,000,000 + chunk. Two chunks can share a
// snapshot LSN (temporary slots created at once reach the same consistent
// point, also in different runs), and their files and (_commit_lsn, _seq)
// must still differ.
func fileOrdinal(run string, chunk int) (int, error) {
	r, err := strconv.Atoi(run)
	if err != nil || r < 0 || chunk >= 1_000_000 || r >= 2000 {
		return 0, fmt.Errorf("backfill run %s chunk %d: more than 1,999 runs or 999,999 chunks: raise --chunk-rows", run, chunk)
	}
	return r*1_000_000 + chunk, nil
}

var errChunkTooLarge = errors.New("a chunk holds more than 2^32 rows: lower --chunk-rows")

func (rw *chunkRowWriter) row(fields [][]byte, nulls []bool) error {
	if rw.n >= 1<<32 {
		return errChunkTooLarge
	}
	rw.meta[colSeq] = parquet.Int64Value(rw.seq+rw.n).Level(0, 0, colSeq)
	size := 64
	for i := range rw.vals {
		rw.vals[i] = colValue{data: fields[i], null: nulls[i]}
		size += len(fields[i])
	}
	// writeText copies the values: the decoder may reuse fields at once.
	if err := rw.fw.writeText(rw.meta[:], rw.vals, rw.consistent, rw.commit, size); err != nil {
		return err
	}
	rw.n++
	if rw.n-rw.counted == 1024 {
		rw.flush()
	}
	return nil
}

// flush counts the rows written since the last call in the table's
// progress.
func (rw *chunkRowWriter) flush() error {
	rw.t.rows.Add(rw.n - rw.counted)
	rw.counted = rw.n
	return nil
}
