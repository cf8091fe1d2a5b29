package compact

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/parquet-go/parquet-go"

	"github.com/wal-cake/wal-cake/spool"
)

// Config configures compaction.
type Config struct {
	Store Store
	// ConnString reaches the database, for type information and to advance
	// the slot. Required.
	ConnString string
	Slot       string
	// MaxBatchBytes bounds how many bytes of sealed segments go into one lake
	// commit. Default 256 MiB.
	MaxBatchBytes int64
	// MaxFileRows starts a new data file once one holds this many rows.
	// Default 5,000,000.
	MaxFileRows int64
	// UploadConcurrency bounds parallel uploads. Default 4.
	UploadConcurrency int
	Logger            *slog.Logger
	// Progress, when set, is called after each lake commit with the figures
	// so far (metrics, progress logs). It must not block.
	Progress func(Stats)
	// Failpoint, when set, is called at each step of the commit protocol
	// with the step's name (see Failpoints); tests make it stop the process.
	Failpoint func(name string)
}

// Validate checks the configuration and fills in defaults.
func (c *Config) Validate() error {
	if c.Store == nil {
		return errors.New("compact: no lake destination (WALCAKE_DEST or S3_BUCKET_NAME)")
	}
	if c.ConnString == "" {
		return errors.New("compact: no PostgreSQL connection string (PG_CONN_STRING)")
	}
	if c.Slot == "" {
		return errors.New("compact: no slot name (PG_SLOT)")
	}
	if c.MaxBatchBytes <= 0 {
		c.MaxBatchBytes = 256 << 20
	}
	if c.MaxFileRows <= 0 {
		c.MaxFileRows = 5_000_000
	}
	if c.UploadConcurrency <= 0 {
		c.UploadConcurrency = 4
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Stats are the figures of a compaction run.
type Stats struct {
	Commits   int              // lake commits (manifests) written
	Segments  int              // spool segments committed and dropped
	Txns      int64            // transactions written
	Skipped   int64            // transactions skipped, already in the lake
	Rows      map[string]int64 // by _op
	Tables    map[string]bool
	Files     int
	Bytes     int64 // bytes of data files uploaded
	FirstLSN  pglogrepl.LSN
	LastLSN   pglogrepl.LSN
	SlotLSN   pglogrepl.LSN // the slot's confirmed position after the run
	Manifests []string      // keys of the manifests written
	// Nulled counts, by table.column, the values written as NULL because
	// their Parquet type cannot hold them (docs/types.md). [issue 4]
	Nulled map[string]int64
	// Unfilled counts unchanged TOAST values that wal-cake could not fill:
	// NULL in their row and named in _unchanged. [issue 4]
	Unfilled int64
}

// Run commits every sealed segment of sp to the lake, then advances the slot.
func Run(ctx context.Context, cfg Config, sp *spool.Spool) (Stats, error) {
	st := Stats{Rows: map[string]int64{}, Tables: map[string]bool{}}
	if err := cfg.Validate(); err != nil {
		return st, err
	}
	lock, err := sp.Lock("compact")
	if err != nil {
		return st, err
	}
	defer lock.Unlock()

	tmpDir, err := sp.TempDir()
	if err != nil {
		return st, err
	}
	cleanDir(tmpDir) // files of a compaction that crashed

	conn, err := connect(ctx, cfg.ConnString)
	if err != nil {
		return st, err
	}
	defer conn.Close(context.Background())

	log := cfg.Logger.With("dest", fmt.Sprint(cfg.Store))
	if err := recoverIntent(ctx, cfg.Store, log); err != nil {
		return st, err
	}
	head, err := readHead(ctx, cfg.Store)
	if err != nil {
		return st, err
	}
	c := &committer{
		cfg: cfg, sp: sp, tmpDir: tmpDir, head: head, conn: conn,
		dec:     newDecoder(newCatalog(conn)),
		schemas: map[string]schemaHead{},
		log:     log,
		st:      &st,
	}
	if err := c.openState(ctx); err != nil { // TOAST state store (state.go) [issue 4]
		return st, err
	}
	defer c.closeState()
	segs, err := sp.Sealed()
	if err != nil {
		return st, err
	}
	for len(segs) > 0 {
		n := batchLen(segs, cfg.MaxBatchBytes)
		if err := c.commit(ctx, segs[:n]); err != nil {
			return st, err
		}
		segs = segs[n:]
		if cfg.Progress != nil {
			cfg.Progress(st)
		}
	}

	// Confirm the lake's position (again, if a crash came between the
	// manifest and the advance) and, with nothing pending, where capture
	// scanned to.
	target := c.head.EndLSN
	if empty, err := spoolEmpty(sp); err != nil {
		return st, err
	} else if empty {
		// Nothing is pending: the slot may move up to where capture scanned.
		if scanned, err := sp.Scanned(); err == nil && scanned > target {
			target = scanned
		}
	}
	st.SlotLSN, err = advanceSlot(ctx, conn, cfg.Slot, target, c.log)
	return st, err
}

func spoolEmpty(sp *spool.Spool) (bool, error) {
	sealed, err := sp.Sealed()
	if err != nil {
		return false, err
	}
	open, err := sp.HasOpenSegments()
	return len(sealed) == 0 && !open, err
}

// batchLen is how many of segs go into the next lake commit: at least one,
// and no more than maxBytes of them otherwise.
func batchLen(segs []spool.SegmentInfo, maxBytes int64) int {
	var total int64
	for i, s := range segs {
		total += s.SizeBytes
		if i > 0 && total > maxBytes {
			return i
		}
	}
	return len(segs)
}

func connect(ctx context.Context, connString string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("parse PG_CONN_STRING: %w", connStringError(err))
	}
	cfg.RuntimeParams["application_name"] = "walcake"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return conn, nil
}

// connStringError keeps what pgconn says is wrong with a connection string,
// without the string itself (which may hold a password pgconn could not
// redact in a string it cannot parse).
func connStringError(err error) error {
	var pe *pgconn.ParseConfigError
	if !errors.As(err, &pe) {
		return err
	}
	if inner := pe.Unwrap(); inner != nil {
		return inner
	}
	msg := pe.Error() // "cannot parse `<string>`: <what is wrong>"
	if i := strings.LastIndex(msg, "`: "); i >= 0 {
		return errors.New(msg[i+3:])
	}
	return errors.New("invalid connection string")
}

func cleanDir(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		os.Remove(filepath.Join(dir, e.Name()))
	}
}

// schemaHead is the newest schema version of a table in the lake.
type schemaHead struct {
	fingerprint string
	version     string
}

type fileKey struct {
	table string
	day   time.Time
}

type finishedFile struct {
	path string
	key  string
	mf   ManifestFile
}

// committer makes lake commits.
type committer struct {
	cfg     Config
	sp      *spool.Spool
	tmpDir  string
	head    lakeHead
	conn    *pgx.Conn
	dec     *decoder
	schemas map[string]schemaHead // by lake table name
	log     *slog.Logger
	st      *Stats

	// Per commit.
	files      map[fileKey]*fileWriter
	ordinals   map[fileKey]int
	done       []finishedFile
	newSchemas []schemaDoc
	rows       map[string]int64
	lastRoute  routeCache
}

// commit writes one lake commit from a batch of segments.
func (c *committer) commit(ctx context.Context, batch []spool.SegmentInfo) (err error) {
	started := time.Now()
	c.files = map[fileKey]*fileWriter{}
	c.lastRoute = routeCache{}
	c.ordinals = map[fileKey]int{}
	c.done = nil
	c.newSchemas = nil
	c.rows = map[string]int64{}
	defer func() {
		if err != nil {
			for _, fw := range c.files {
				fw.abort()
			}
			for _, f := range c.done {
				os.Remove(f.path)
			}
		}
	}()

	var first, last, end pglogrepl.LSN
	var txns, skipped int64
	for _, si := range batch {
		seg, err := spool.OpenSegment(si)
		if err != nil {
			return err
		}
		err = c.readSegment(ctx, seg, func(t spool.Txn) {
			if first == 0 {
				first = t.CommitLSN
			}
			last, end = t.CommitLSN, t.EndLSN
			txns++
		}, &skipped)
		seg.Close()
		if err != nil {
			return err
		}
	}
	c.st.Skipped += skipped
	for k, fw := range c.files {
		if err := c.finish(fw); err != nil {
			return err
		}
		delete(c.files, k)
	}

	if txns > 0 {
		m, err := c.publish(ctx, first, last, end, txns)
		if err != nil {
			return err
		}
		c.head = lakeHead{Key: manifestKey(last), CommitLSN: last, EndLSN: end, Manifest: m}
		if err := c.afterCommit(); err != nil { // TOAST state store, nulled counts (state.go) [issue 4]
			return err
		}
		c.st.Commits++
		c.st.Txns += txns
		c.st.Manifests = append(c.st.Manifests, c.head.Key)
		if c.st.FirstLSN == 0 {
			c.st.FirstLSN = first
		}
		c.st.LastLSN = last
		for op, n := range c.rows {
			c.st.Rows[op] += n
		}
		for _, f := range m.Files {
			c.st.Tables[f.Table] = true
			c.st.Files++
			c.st.Bytes += f.Bytes
		}
		c.log.Info("lake commit", "manifest", c.head.Key, "txns", txns, "rows", sumRows(c.rows), "files", len(m.Files),
			"first_lsn", first.String(), "last_lsn", last.String(), "seconds", roundSeconds(time.Since(started)))
	}
	if c.head.CommitLSN != 0 {
		if err := c.sp.SetCommitted(spool.Position{CommitLSN: c.head.CommitLSN, EndLSN: c.head.EndLSN}); err != nil {
			return err
		}
		c.failpoint(FailAfterMark)
		if _, err := advanceSlot(ctx, c.conn, c.cfg.Slot, c.head.EndLSN, c.log); err != nil {
			return err
		}
		c.failpoint(FailAfterAdvance)
	}
	for _, si := range batch {
		if err := c.sp.Drop(si); err != nil {
			return err
		}
		c.st.Segments++
	}
	c.failpoint(FailAfterDrop)
	return nil
}

// readSegment decodes every transaction of seg newer than the lake head.
func (c *committer) readSegment(ctx context.Context, seg *spool.Segment, onTxn func(spool.Txn), skipped *int64) error {
	err := seg.Relations(func(msg []byte) error { return c.dec.relation(ctx, msg) })
	if err != nil {
		return fmt.Errorf("segment %s: %w", seg.Info.Name(), err)
	}
	return seg.Txns(func(t spool.Txn) error {
		if c.head.CommitLSN != 0 && t.CommitLSN <= c.head.CommitLSN {
			*skipped++
			return nil
		}
		if err := ctx.Err(); err != nil {
			return context.Cause(ctx)
		}
		meta := &rowMeta{txn: t}
		emit := func(ts *tableSchema, row parquet.Row, op string, size int) error {
			return c.write(ctx, ts, row, op, size, t)
		}
		// Rows reach the file writers as text: their encoders convert them,
		// in parallel with the decoding here. [issue 7]
		c.dec.textEmit = func(ts *tableSchema, meta parquet.Row, vals []colValue, lsn pglogrepl.LSN, op string, size int) error {
			fw, err := c.route(ctx, ts, op, t)
			if err != nil {
				return err
			}
			return fw.writeText(meta, vals, lsn, t.CommitLSN, size)
		}
		err := seg.Messages(t, func(lsn pglogrepl.LSN, msg []byte) error {
			if len(msg) == 0 {
				return nil
			}
			switch msg[0] {
			case 'R':
				return c.dec.relation(ctx, msg)
			case 'I', 'U', 'D', 'T':
				return c.dec.change(meta, lsn, msg, emit)
			}
			return nil // Type messages: types come from the catalog
		})
		if err != nil {
			return fmt.Errorf("segment %s, transaction %d at %s: %w", seg.Info.Name(), t.Xid, t.CommitLSN, err)
		}
		onTxn(t)
		return nil
	})
}

// write routes one row to its table's file for the commit's day.
func (c *committer) write(ctx context.Context, ts *tableSchema, row parquet.Row, op string, size int, t spool.Txn) error {
	fw, err := c.route(ctx, ts, op, t)
	if err != nil {
		return err
	}
	return fw.write(row, t.CommitLSN, size)
}

// route returns the file a row of ts in transaction t goes to, and counts
// the row.
func (c *committer) route(ctx context.Context, ts *tableSchema, op string, t spool.Txn) (*fileWriter, error) {
	if r := &c.lastRoute; r.fw != nil && r.ts == ts && r.commit == t.CommitLSN && r.fw.rows < c.cfg.MaxFileRows {
		c.rows[op]++ // the same table and transaction as the row before [issue 7]
		return r.fw, nil
	}
	if ts.Version == "" {
		if err := c.assignVersion(ctx, ts, t.CommitLSN); err != nil {
			return nil, err
		}
	}
	k := fileKey{ts.Table, commitDay(t.CommitTime)}
	fw := c.files[k]
	if fw != nil && (fw.ts != ts || fw.rows >= c.cfg.MaxFileRows) {
		if err := c.finish(fw); err != nil {
			return nil, err
		}
		fw = nil
	}
	if fw == nil {
		var err error
		fw, err = newFileWriter(c.tmpDir, ts, k.day, c.ordinals[k])
		if err != nil {
			return nil, err
		}
		c.ordinals[k]++
		c.files[k] = fw
	}
	c.rows[op]++
	c.lastRoute = routeCache{ts: ts, commit: t.CommitLSN, fw: fw}
	return fw, nil
}

// routeCache remembers the file of the last row routed.
type routeCache struct {
	ts     *tableSchema
	commit pglogrepl.LSN
	fw     *fileWriter
}

func (c *committer) finish(fw *fileWriter) error {
	if c.lastRoute.fw == fw {
		c.lastRoute = routeCache{}
	}
	for k, open := range c.files {
		if open == fw {
			delete(c.files, k)
		}
	}
	path, size, err := fw.finish()
	if err != nil {
		return err
	}
	c.done = append(c.done, finishedFile{path: path, key: fw.key(), mf: ManifestFile{
		Key: fw.key(), Table: fw.ts.Table, SchemaVersion: fw.ts.Version, Rows: fw.rows, Bytes: size,
		FirstCommitLSN: fw.first.String(), LastCommitLSN: fw.last.String(),
	}})
	return nil
}

// assignVersion gives ts the lake's newest schema version of its table when
// the columns are the same, or a new version named after commitLSN.
func (c *committer) assignVersion(ctx context.Context, ts *tableSchema, commitLSN pglogrepl.LSN) error {
	h, ok := c.schemas[ts.Table]
	if !ok {
		var err error
		h, err = latestSchema(ctx, c.cfg.Store, ts.Table)
		if err != nil {
			return err
		}
	}
	if h.version != "" && h.fingerprint == ts.fingerprint {
		ts.Version = h.version
		c.schemas[ts.Table] = h
		return nil
	}
	ts.Version = c.newVersionName(ts.Table, commitLSN) // [issue 4] two versions in one transaction
	c.schemas[ts.Table] = schemaHead{fingerprint: ts.fingerprint, version: ts.Version}
	c.newSchemas = append(c.newSchemas, ts.doc(commitLSN))
	return nil
}

func latestSchema(ctx context.Context, store Store, table string) (schemaHead, error) {
	var last string
	err := store.List(ctx, schemaPrefix+table+"/", func(o Object) error {
		if strings.HasSuffix(o.Key, ".json") {
			last = o.Key
		}
		return nil
	})
	if err != nil || last == "" {
		return schemaHead{}, err
	}
	b, err := getAll(ctx, store, last)
	if err != nil {
		return schemaHead{}, fmt.Errorf("read schema %s: %w", last, err)
	}
	var d schemaDoc
	if err := json.Unmarshal(b, &d); err != nil {
		return schemaHead{}, fmt.Errorf("parse schema %s: %w", last, err)
	}
	return schemaHead{fingerprint: d.fingerprint(), version: d.Version}, nil
}

func sumRows(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

func roundSeconds(d time.Duration) float64 {
	return float64(d.Round(time.Millisecond)) / float64(time.Second)
}
