package compact

// Backfill: a table's existing rows as R rows, consistent with the stream.
// docs/backfill.md explains why the result is exact.
//
// Invariants:
//
//   - Every R row carries the LSN of a snapshot taken by a temporary logical
//     slot (minus one, see snapshotLSN): the transactions committed before it
//     are in the row, those after it are in the stream with higher
//     _commit_lsn. The replication slot must exist before any snapshot.
//   - A keyed table is read in key ranges that partition the key space, each
//     range in its own snapshot and its own lake commit: every key has at
//     most one R row per run.
//   - A keyless table is read in ctid ranges of one snapshot and committed
//     by one manifest: its R rows are the table's multiset at one LSN.
//   - Backfill manifests are never named <16 hex>.json: they never move the
//     stream's head, and the slot is never advanced for them.
//   - A chunk's data object is named in its intent before it is uploaded; a
//     chunk whose manifest is missing is undone before it is read again.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/parquet-go/parquet-go/compress/zstd"
	"golang.org/x/sync/errgroup"
)

// BackfillConfig configures a backfill.
type BackfillConfig struct {
	Store       Store
	ConnString  string
	Slot        string // must exist: changes after each snapshot reach the lake through it
	Publication string
	// Tables to backfill as schema.table; empty means every published table.
	Tables []string
	// Parallel is how many chunks are read at once. Default 2.
	Parallel int
	// ChunkRows is the number of rows per key range. Default 250,000.
	ChunkRows int64
	// Again starts a new backfill of tables already backfilled; otherwise
	// they are skipped.
	Again bool
	// TempDir holds the chunks' Parquet files until they are uploaded.
	// Required.
	TempDir string
	Logger  *slog.Logger
	// Progress, when set, is called every ProgressInterval (default 1 s) and
	// once at the end. It must not block.
	Progress         func(BackfillStats)
	ProgressInterval time.Duration
	// Failpoint, when set, is called at each step of a chunk's commit with
	// the step's name (see BackfillFailpoints); tests make it stop the
	// process.
	Failpoint func(name string)
}

// Validate checks the configuration and fills in defaults.
func (c *BackfillConfig) Validate() error {
	switch {
	case c.Store == nil:
		return errors.New("backfill: no lake destination (WALCAKE_DEST or S3_BUCKET_NAME)")
	case c.ConnString == "":
		return errors.New("backfill: no PostgreSQL connection string (PG_CONN_STRING)")
	case c.Slot == "":
		return errors.New("backfill: no slot name (PG_SLOT)")
	case c.Publication == "":
		return errors.New("backfill: no publication name (PG_PUBLICATION)")
	case c.TempDir == "":
		return errors.New("backfill: no directory for temporary files")
	case c.Parallel < 0 || c.ChunkRows < 0:
		return errors.New("backfill: --parallel and --chunk-rows must be positive")
	}
	if c.Parallel == 0 {
		c.Parallel = 2
	}
	if c.ChunkRows == 0 {
		c.ChunkRows = 250_000
	}
	if c.ProgressInterval <= 0 {
		c.ProgressInterval = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Failpoint names of a backfill chunk's commit, in order.
const (
	FailBackfillAfterPlan     = "backfill-after-plan"     // a chunk's range is recorded
	FailBackfillAfterIntent   = "backfill-after-intent"   // its intent is written
	FailBackfillAfterUpload   = "backfill-after-upload"   // its data file is uploaded
	FailBackfillAfterManifest = "backfill-after-manifest" // its manifest is written
	FailBackfillAfterChunk    = "backfill-after-chunk"    // it is recorded as done
)

// BackfillFailpoints lists the failpoints of a backfill.
var BackfillFailpoints = []string{
	FailBackfillAfterPlan, FailBackfillAfterIntent, FailBackfillAfterUpload,
	FailBackfillAfterManifest, FailBackfillAfterChunk,
}

// BackfillStats are the figures of a backfill, per table.
type BackfillStats struct {
	Tables  []BackfillTableStats
	Workers int
	Elapsed time.Duration
}

// BackfillTableStats are one table's figures.
type BackfillTableStats struct {
	Table string
	Run   string
	Mode  string // "key" or "ctid"
	// Rows read by this process so far.
	Rows int64
	// EstimatedRows is the planner's estimate of the table's rows
	// (pg_class.reltuples) at the start; negative when unknown.
	EstimatedRows int64
	ChunkRows     int64
	ChunksDone    int // including chunks done by an earlier process
	ChunksPlanned int // so far; final when PlanDone
	ChunksResumed int // done by an earlier process
	PlanDone      bool
	Done          bool
	Skipped       bool // backfilled before (see BackfillConfig.Again)
	Files         int
	Bytes         int64
	FirstSnapshot pglogrepl.LSN // _commit_lsn of the R rows, lowest and highest
	LastSnapshot  pglogrepl.LSN
	Elapsed       time.Duration // since this process started the table
}

// Rows sums the rows read by this process.
func (s BackfillStats) Rows() (n int64) {
	for _, t := range s.Tables {
		n += t.Rows
	}
	return n
}

// bfChunk is one unit of work.
type bfChunk struct {
	table *bfTable
	plan  bfChunkPlan
}

// backfiller runs one backfill.
type backfiller struct {
	cfg     BackfillConfig
	log     *slog.Logger
	tables  []*bfTable
	slotTag string // makes temporary slot names unique to this process
	started time.Time
	workers int
	// codec compresses every chunk file: one set of ZSTD encoders for the
	// run rather than one per file (each holds a window-sized history).
	codec *zstd.Codec
}

// Backfill copies the existing rows of the configured tables into the lake
// as R rows, resuming what an earlier backfill left unfinished.
func Backfill(ctx context.Context, cfg BackfillConfig) (BackfillStats, error) {
	if err := cfg.Validate(); err != nil {
		return BackfillStats{}, err
	}
	b := &backfiller{cfg: cfg, log: cfg.Logger.With("dest", fmt.Sprint(cfg.Store)), slotTag: randomHex(4), started: time.Now(),
		codec: &zstd.Codec{Level: zstd.SpeedDefault}} // the level of newFileWriter
	conn, err := backfillConnect(ctx, cfg.ConnString, false)
	if err != nil {
		return b.stats(), err
	}
	defer func() {
		// Release the table locks now rather than when the server notices
		// the session's end, which a next run could beat.
		conn.Exec(context.Background(), "SELECT pg_advisory_unlock_all()")
		conn.Close(context.Background())
	}()

	if err := checkSlot(ctx, conn, cfg.Slot); err != nil {
		return b.stats(), err
	}
	published, err := publishedTables(ctx, conn, cfg.Publication)
	if err != nil {
		return b.stats(), err
	}
	if len(cfg.Tables) == 0 {
		b.tables = published
	} else if b.tables, err = selectTables(published, cfg.Tables, cfg.Publication); err != nil {
		return b.stats(), err
	}
	if len(b.tables) == 0 {
		return b.stats(), fmt.Errorf("backfill: publication %s has no tables", cfg.Publication)
	}
	for _, t := range b.tables {
		if err := t.lock(ctx, conn, cfg.Slot); err != nil {
			return b.stats(), err
		}
	}
	if b.workers, err = replicationCapacity(ctx, conn, cfg.Parallel, b.log); err != nil {
		return b.stats(), err
	}
	for _, t := range b.tables {
		if err := b.prepare(ctx, t); err != nil {
			return b.stats(), err
		}
	}

	stopProgress := b.reportProgress()
	err = b.runAll(ctx, conn)
	stopProgress()
	for _, t := range b.tables {
		if t.exporter != nil {
			t.exporter.Close(context.Background())
		}
	}
	return b.stats(), err
}

// checkSlot makes sure the replication slot exists and is intact: the
// changes after each snapshot reach the lake only through it.
func checkSlot(ctx context.Context, conn *pgx.Conn, slot string) error {
	var plugin, walStatus *string
	err := conn.QueryRow(ctx, "SELECT plugin, wal_status FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&plugin, &walStatus)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("backfill: replication slot %s does not exist; run walcake setup first (without the slot the changes made after the backfill's snapshots would be lost)", slot)
	}
	if err != nil {
		return fmt.Errorf("backfill: look up slot %s: %w", slot, err)
	}
	if plugin == nil || *plugin != "pgoutput" {
		return fmt.Errorf("backfill: replication slot %s is not a logical pgoutput slot", slot)
	}
	if walStatus != nil && *walStatus == "lost" {
		return fmt.Errorf("backfill: replication slot %s has lost WAL (wal_status = lost): the stream has a gap a backfill cannot close; recreate the slot", slot)
	}
	return nil
}

// replicationCapacity returns how many workers the server has room for:
// each holds a walsender and, while it reads, a temporary slot; one more is
// kept for the exported snapshot of a keyless table.
func replicationCapacity(ctx context.Context, conn *pgx.Conn, want int, log *slog.Logger) (int, error) {
	var slots, senders int
	err := conn.QueryRow(ctx, `SELECT
		current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots),
		current_setting('max_wal_senders')::int - (SELECT count(*) FROM pg_stat_replication)`).Scan(&slots, &senders)
	if err != nil {
		return 0, fmt.Errorf("backfill: read replication limits: %w", err)
	}
	free := min(slots, senders) - 1
	if free < 1 {
		return 0, fmt.Errorf("backfill: the server has %d free replication slots and %d free WAL senders; backfill needs at least 2 (raise max_replication_slots and max_wal_senders)", slots, senders)
	}
	if want > free {
		log.Warn("fewer workers than asked for: the server is short of replication slots or WAL senders", "parallel", free, "asked", want)
		return free, nil
	}
	return want, nil
}

// runAll plans and reads the chunks of every table.
func (b *backfiller) runAll(ctx context.Context, conn *pgx.Conn) error {
	g, gctx := errgroup.WithContext(ctx)
	work := make(chan *bfChunk)
	g.Go(func() error {
		defer close(work)
		for _, t := range b.tables {
			if t.skipped {
				continue
			}
			var err error
			if t.keyed() {
				err = b.planKeyed(gctx, conn, t, work)
			} else {
				err = b.planCTID(gctx, conn, t, work)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	for i := range b.workers {
		g.Go(func() error {
			w := &bfWorker{b: b, id: i}
			defer w.close()
			for ch := range work {
				if err := w.do(gctx, ch); err != nil {
					w.wait()
					return err
				}
			}
			return w.wait()
		})
	}
	if err := g.Wait(); err != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		return err
	}
	return nil
}

// commitChunk puts a chunk that was read into the lake: intent, data file,
// then (key mode) its own manifest, or (ctid mode) nothing more until the
// table's last chunk.
func (b *backfiller) commitChunk(ctx context.Context, t *bfTable, ch *bfChunk, rd chunkRead) error {
	store, run, n := b.cfg.Store, t.run.Run, ch.plan.Chunk
	rec := bfChunkCommit{
		Chunk: n, SnapshotLSN: rd.consistent.String(), CommitLSN: rd.commit.String(),
		SnapshotAt: rd.at, Rows: rd.rows, Bytes: rd.size,
	}
	if rd.path != "" {
		rec.Keys = []string{rd.key}
		if t.keyed() {
			rec.Manifest = backfillManifestKey(rd.commit, t.name, run, n)
		}
		if err := putJSON(ctx, store, chunkKey(t.name, run, n, "writing"), rec); err != nil {
			return err
		}
		b.failpoint(FailBackfillAfterIntent)
		if err := uploadBackfillFile(ctx, store, rd.path, rd.key, rd.size); err != nil {
			return err
		}
		b.failpoint(FailBackfillAfterUpload)
		t.nfiles.Add(1)
		t.bytes.Add(rd.size)
	}
	if !t.keyed() {
		t.mu.Lock()
		if rd.path != "" {
			t.files = append(t.files, rd.mf)
		}
		t.rowsAll += rd.rows
		t.mu.Unlock()
		return b.chunkFinished(ctx, t)
	}
	if rd.path != "" {
		m := backfillManifest(rd.commit, []ManifestFile{rd.mf})
		if err := putJSON(ctx, store, rec.Manifest, m); err != nil {
			return err
		}
		b.failpoint(FailBackfillAfterManifest)
	}
	if err := putJSON(ctx, store, chunkKey(t.name, run, n, "done"), rec); err != nil {
		return err
	}
	b.failpoint(FailBackfillAfterChunk)
	t.mu.Lock()
	t.rowsAll += rd.rows
	t.mu.Unlock()
	return b.chunkFinished(ctx, t)
}

// backfillManifest is the lake commit of R rows at one snapshot. It has no
// end LSN: the slot is never advanced for it.
func backfillManifest(commit pglogrepl.LSN, files []ManifestFile) *Manifest {
	m := &Manifest{
		Format:         1,
		CreatedAt:      time.Now().UTC().Truncate(time.Millisecond),
		FirstCommitLSN: commit.String(),
		LastCommitLSN:  commit.String(),
		Rows:           map[string]int64{},
	}
	for _, f := range files {
		m.Rows["R"] += f.Rows
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Key < files[j].Key })
	m.Files = files
	return m
}

// finalize records a table's run as done, after (ctid mode) the one manifest
// of all its files.
func (b *backfiller) finalize(ctx context.Context, t *bfTable) error {
	store := b.cfg.Store
	t.mu.Lock()
	files, rows := slices.Clone(t.files), t.rowsAll
	t.mu.Unlock()
	if !t.keyed() && len(files) > 0 {
		if err := putJSON(ctx, store, t.run.Manifest, backfillManifest(snapshotLSN(t.snapLSN), files)); err != nil {
			return err
		}
		b.failpoint(FailBackfillAfterManifest)
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	t.run.State, t.run.FinishedAt = runDone, &now
	t.run.Chunks = int(t.chunksTotal.Load())
	t.run.Rows = rows
	if err := putJSON(ctx, store, runKey(t.name, t.run.Run), t.run); err != nil {
		return err
	}
	t.ended.Store(time.Now().UnixNano())
	b.log.Info("backfilled table", "table", t.name, "run", t.run.Run, "rows", rows, "chunks", t.run.Chunks,
		"chunks_resumed", t.resumed.Load(), "files", t.nfiles.Load(), "bytes", t.bytes.Load(),
		"seconds", roundSeconds(t.elapsed()))
	return nil
}

func (b *backfiller) failpoint(name string) {
	if b.cfg.Failpoint != nil {
		b.cfg.Failpoint(name)
	}
}

func (b *backfiller) noteSnapshot(t *bfTable, commit pglogrepl.LSN) {
	v := uint64(commit)
	for {
		old := t.firstSnap.Load()
		if old != 0 && old <= v || t.firstSnap.CompareAndSwap(old, v) {
			break
		}
	}
	for {
		old := t.lastSnap.Load()
		if old >= v || t.lastSnap.CompareAndSwap(old, v) {
			break
		}
	}
}

// stats is a snapshot of every table's figures.
func (b *backfiller) stats() BackfillStats {
	st := BackfillStats{Workers: b.workers, Elapsed: time.Since(b.started)}
	for _, t := range b.tables {
		s := BackfillTableStats{
			Table: t.name, EstimatedRows: t.estRows, ChunkRows: b.cfg.ChunkRows,
			Rows:          t.rows.Load(),
			ChunksDone:    int(t.chunksDone.Load()),
			ChunksPlanned: int(t.chunksTotal.Load()),
			ChunksResumed: int(t.resumed.Load()),
			Skipped:       t.skipped,
			Files:         int(t.nfiles.Load()),
			Bytes:         t.bytes.Load(),
			FirstSnapshot: pglogrepl.LSN(t.firstSnap.Load()),
			LastSnapshot:  pglogrepl.LSN(t.lastSnap.Load()),
		}
		if t.run != nil {
			s.Run, s.Mode = t.run.Run, t.run.Mode
		}
		t.mu.Lock()
		s.PlanDone = t.planDone
		t.mu.Unlock()
		s.Done = t.ended.Load() != 0
		s.Elapsed = t.elapsed()
		st.Tables = append(st.Tables, s)
	}
	return st
}

// reportProgress calls the Progress hook periodically until the returned
// function is called, which reports once more and waits for the reporter.
func (b *backfiller) reportProgress() func() {
	if b.cfg.Progress == nil {
		return func() {}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(b.cfg.ProgressInterval)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				b.cfg.Progress(b.stats())
			case <-stop:
				return
			}
		}
	})
	return func() {
		close(stop)
		wg.Wait()
		b.cfg.Progress(b.stats())
	}
}
