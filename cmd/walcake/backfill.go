package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/urfave/cli/v2"

	"github.com/wal-cake/wal-cake/compact"
)

// Defaults of the backfill settings, also for setup --backfill, which reads
// them from the environment.
const (
	defaultBackfillParallel  = 2
	defaultBackfillChunkRows = 250_000
	envBackfillParallel      = "WALCAKE_BACKFILL_PARALLEL"
	envBackfillChunkRows     = "WALCAKE_BACKFILL_CHUNK_ROWS"
)

func backfillCommand() *cli.Command {
	return &cli.Command{
		Name:      "backfill",
		Usage:     "copy tables' existing rows into the lake as R rows, consistent with the slot's stream; resumable",
		ArgsUsage: " ",
		Description: `Each chunk of rows is read in a snapshot taken by a temporary logical slot,
whose exact LSN orders its rows against the stream's changes; see
docs/backfill.md. Progress is kept in the lake (_walcake/backfill/): run it
again, on any machine, to continue an interrupted backfill. A table that was
backfilled is skipped unless --again is given. The slot (walcake setup) must
exist first, and capture must keep running (or "walcake run" keep being
scheduled) for the lake to follow the changes made after the snapshots.`,
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "table", Aliases: []string{"tables"},
				Usage: "table to backfill, as schema.table (repeat, or separate with commas)"},
			&cli.BoolFlag{Name: "all", Usage: "backfill every table of the publication"},
			&cli.IntFlag{Name: "parallel", EnvVars: []string{envBackfillParallel}, Value: defaultBackfillParallel,
				Usage: "chunks read at once (each holds a replication connection and, while it reads, a temporary slot)"},
			&cli.Int64Flag{Name: "chunk-rows", EnvVars: []string{envBackfillChunkRows}, Value: defaultBackfillChunkRows,
				Usage: "rows per chunk: the unit of a lake commit and of resuming; memory grows with it times --parallel"},
			&cli.BoolFlag{Name: "again", Usage: "backfill tables that were backfilled before (a new run; the older R rows stay and are superseded)"},
			&cli.BoolFlag{Name: "json", Usage: "print the summary as JSON"},
		},
		Action: func(c *cli.Context) error {
			var tables []string
			for _, t := range c.StringSlice("table") {
				tables = append(tables, strings.Split(t, ",")...)
			}
			if c.Args().Len() > 0 {
				return cli.Exit(fmt.Sprintf("backfill: unexpected argument %q; name tables with --table schema.table", c.Args().First()), 2)
			}
			if len(tables) == 0 && !c.Bool("all") {
				return cli.Exit("backfill: name the tables with --table schema.table, or give --all for every published table", 2)
			}
			if len(tables) > 0 && c.Bool("all") {
				return cli.Exit("backfill: give either --table or --all, not both", 2)
			}
			return runBackfill(c, tables, backfillSettings{
				parallel: c.Int("parallel"), chunkRows: c.Int64("chunk-rows"), again: c.Bool("again"),
			})
		},
	}
}

type backfillSettings struct {
	parallel  int
	chunkRows int64
	again     bool
}

// backfillSettingsFromEnv is what setup --backfill uses: the backfill
// command's environment variables, or the defaults.
func backfillSettingsFromEnv() (backfillSettings, error) {
	s := backfillSettings{parallel: defaultBackfillParallel, chunkRows: defaultBackfillChunkRows}
	if v := os.Getenv(envBackfillParallel); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return s, cli.Exit(fmt.Sprintf("%s=%q: want a positive number", envBackfillParallel, v), 2)
		}
		s.parallel = n
	}
	if v := os.Getenv(envBackfillChunkRows); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			return s, cli.Exit(fmt.Sprintf("%s=%q: want a positive number", envBackfillChunkRows, v), 2)
		}
		s.chunkRows = n
	}
	return s, nil
}

// runBackfill backfills tables (all published ones when empty) and prints
// the summary.
func runBackfill(c *cli.Context, tables []string, s backfillSettings) error {
	if s.parallel < 1 || s.chunkRows < 1 {
		return cli.Exit("backfill: --parallel and --chunk-rows must be positive", 2)
	}
	log, err := newLogger(c)
	if err != nil {
		return err
	}
	conn, err := connString(c)
	if err != nil {
		return err
	}
	store, err := openStore(c.Context, c)
	if err != nil {
		return failure(err)
	}
	tmp, err := backfillTempDir(c.String("spool-dir"))
	if err != nil {
		return failure(err)
	}
	defer os.RemoveAll(tmp)

	progress := newBackfillProgress(c, s.chunkRows)
	defer progress.close()
	cfg := compact.BackfillConfig{
		Store: store, ConnString: conn, Slot: c.String("slot"), Publication: c.String("publication"),
		Tables: tables, Parallel: s.parallel, ChunkRows: s.chunkRows, Again: s.again,
		TempDir: tmp, Logger: log, Progress: progress.update, ProgressInterval: progress.every,
		Failpoint: failpointFromEnv(),
	}
	if err := cfg.Validate(); err != nil {
		return cli.Exit(err.Error(), 2)
	}
	st, err := compact.Backfill(c.Context, cfg)
	progress.close()
	if err != nil {
		return failure(err)
	}
	return printBackfillSummary(c, st)
}

// backfillTempDir makes this process's directory for chunk files in the
// spool directory (the disk set aside for wal-cake), after removing those of
// processes that are gone.
func backfillTempDir(spoolDir string) (string, error) {
	if spoolDir == "" {
		spoolDir = "./spool"
	}
	if err := os.MkdirAll(spoolDir, 0o700); err != nil {
		return "", fmt.Errorf("backfill: create %s: %w", spoolDir, err)
	}
	old, _ := filepath.Glob(filepath.Join(spoolDir, "backfill-*"))
	for _, dir := range old {
		pidText, _, _ := strings.Cut(strings.TrimPrefix(filepath.Base(dir), "backfill-"), "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil {
			continue
		}
		if pid == os.Getpid() || syscall.Kill(pid, 0) == syscall.ESRCH {
			os.RemoveAll(dir)
		}
	}
	dir, err := os.MkdirTemp(spoolDir, fmt.Sprintf("backfill-%d-*", os.Getpid()))
	if err != nil {
		return "", fmt.Errorf("backfill: temporary directory: %w", err)
	}
	return dir, nil
}

// backfillProgress shows a backfill's progress: a block of lines redrawn in
// place when stderr is a terminal, else a log line per table every
// --progress-interval. It also keeps the command's metrics.
type backfillProgress struct {
	c         *cli.Context
	chunkRows int64
	every     time.Duration
	term      *termBlock // nil: not a terminal
	lastLog   time.Time
	closeOnce sync.Once
	restore   func()
}

func newBackfillProgress(c *cli.Context, chunkRows int64) *backfillProgress {
	p := &backfillProgress{c: c, chunkRows: chunkRows, every: c.Duration("progress-interval"), restore: func() {}}
	if !c.IsSet("progress-interval") && p.every == 0 {
		p.every = 30 * time.Second // setup --backfill has no such flag
	}
	if o := opsFrom(c); o != nil {
		o.rt.stderr.mu.Lock()
		f, ok := o.rt.stderr.w.(*os.File)
		if ok && isTerminal(f) {
			// Log records (redacted first) go through the block, which
			// clears itself before and redraws after each.
			p.term = &termBlock{out: f}
			o.rt.stderr.w = p.term
		}
		o.rt.stderr.mu.Unlock()
		if p.term != nil {
			p.restore = func() {
				o.rt.stderr.mu.Lock()
				o.rt.stderr.w = f
				o.rt.stderr.mu.Unlock()
			}
			p.every = 250 * time.Millisecond
		}
	}
	if p.every <= 0 {
		p.every = time.Hour // progress logs are off; metrics still follow the end
	}
	return p
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func (p *backfillProgress) close() {
	p.closeOnce.Do(func() {
		if p.term != nil {
			p.term.finish()
		}
		p.restore()
	})
}

// update is compact.BackfillConfig.Progress.
func (p *backfillProgress) update(st compact.BackfillStats) {
	if o := opsFrom(p.c); o != nil {
		for _, t := range st.Tables {
			o.metrics.counter("walcake_backfill_rows_total", "Rows read by backfill and written to the lake as R rows.", float64(t.Rows), "table", t.Table)
			o.metrics.counter("walcake_backfill_chunks_total", "Backfill chunks in the lake, including those of an earlier process.", float64(t.ChunksDone), "table", t.Table)
			o.metrics.counter("walcake_backfill_bytes_total", "Bytes of backfill Parquet files uploaded.", float64(t.Bytes), "table", t.Table)
		}
	}
	if p.term != nil {
		lines := make([]string, 0, len(st.Tables))
		for _, t := range st.Tables {
			lines = append(lines, progressLine(t))
		}
		p.term.draw(lines)
		return
	}
	now := time.Now()
	if p.every >= time.Hour || now.Sub(p.lastLog) < p.every {
		return
	}
	p.lastLog = now
	log, err := newLogger(p.c)
	if err != nil {
		return
	}
	for _, t := range st.Tables {
		if t.Skipped || (t.Done && t.Rows == 0) || (t.ChunksPlanned == 0 && t.Rows == 0) {
			continue
		}
		attrs := []any{"table", t.Table, "run", t.Run, "rows", t.Rows, "rows_per_s", int64(rate(t)),
			"chunks_done", t.ChunksDone, "chunks_planned", t.ChunksPlanned}
		if eta, ok := etaOf(t); ok {
			attrs = append(attrs, "eta_s", eta.Round(time.Second).Seconds())
		}
		if t.Done {
			attrs = append(attrs, "done", true)
		}
		log.Info("backfill progress", attrs...)
	}
}

func rate(t compact.BackfillTableStats) float64 {
	if t.Elapsed <= 0 {
		return 0
	}
	return float64(t.Rows) / t.Elapsed.Seconds()
}

// etaOf estimates the time left from the planner's row estimate.
func etaOf(t compact.BackfillTableStats) (time.Duration, bool) {
	r := rate(t)
	if t.Done || t.EstimatedRows <= 0 || r <= 0 {
		return 0, false
	}
	done := t.Rows + int64(t.ChunksResumed)*t.ChunkRows
	left := max(t.EstimatedRows-done, 0)
	return time.Duration(float64(left) / r * float64(time.Second)), true
}

// progressLine is one table's line on a terminal.
func progressLine(t compact.BackfillTableStats) string {
	switch {
	case t.Skipped:
		return fmt.Sprintf("%-32s backfilled before (run %s)", t.Table, t.Run)
	case t.Done:
		return fmt.Sprintf("%-32s done: %s rows, %d chunks, %s, %s, %s rows/s", t.Table, groupDigits(t.Rows), t.ChunksDone,
			humanBytes(t.Bytes), t.Elapsed.Round(100*time.Millisecond), groupDigits(int64(rate(t))))
	case t.ChunksPlanned == 0 && t.Rows == 0:
		return fmt.Sprintf("%-32s waiting", t.Table)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%-32s %s", t.Table, groupDigits(t.Rows))
	if t.EstimatedRows > 0 {
		done := t.Rows + int64(t.ChunksResumed)*t.ChunkRows
		pct := min(100, 100*float64(done)/float64(t.EstimatedRows))
		fmt.Fprintf(&b, " / ~%s rows %3.0f%%", groupDigits(t.EstimatedRows), pct)
	} else {
		b.WriteString(" rows")
	}
	fmt.Fprintf(&b, "  %s rows/s", groupDigits(int64(rate(t))))
	if eta, ok := etaOf(t); ok {
		fmt.Fprintf(&b, "  ETA %s", eta.Round(time.Second))
	}
	fmt.Fprintf(&b, "  chunks %d/%d", t.ChunksDone, t.ChunksPlanned)
	if !t.PlanDone {
		b.WriteString("+")
	}
	return b.String()
}

func groupDigits(n int64) string {
	s := strconv.FormatInt(n, 10)
	if n < 0 || len(s) <= 3 {
		return s
	}
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// termBlock is a block of lines at the bottom of a terminal, redrawn in
// place; other writes (log records) go above it.
type termBlock struct {
	mu    sync.Mutex
	out   io.Writer
	lines []string
	drawn int
}

func (tb *termBlock) clear() {
	if tb.drawn > 0 {
		fmt.Fprintf(tb.out, "\x1b[%dA\r\x1b[J", tb.drawn)
		tb.drawn = 0
	}
}

func (tb *termBlock) redraw() {
	for _, l := range tb.lines {
		fmt.Fprintf(tb.out, "%s\x1b[K\n", l)
	}
	tb.drawn = len(tb.lines)
}

func (tb *termBlock) draw(lines []string) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.clear()
	tb.lines = lines
	tb.redraw()
}

// Write puts p above the block.
func (tb *termBlock) Write(p []byte) (int, error) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.clear()
	n, err := tb.out.Write(p)
	tb.redraw()
	return n, err
}

// finish leaves the last drawing on the screen.
func (tb *termBlock) finish() {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.drawn = 0
}

// backfillSummary is the JSON form of the summary.
type backfillSummary struct {
	Command       string                 `json:"command"`
	Tables        []backfillTableSummary `json:"tables"`
	Rows          int64                  `json:"rows"`
	Chunks        int                    `json:"chunks"`
	ChunksResumed int                    `json:"chunks_resumed"`
	Files         int                    `json:"files"`
	Bytes         int64                  `json:"bytes"`
	Workers       int                    `json:"workers"`
	Seconds       float64                `json:"seconds"`
	RowsPerSecond float64                `json:"rows_per_second"`
}

type backfillTableSummary struct {
	Table         string  `json:"table"`
	Run           string  `json:"run"`
	Mode          string  `json:"mode"`
	Skipped       bool    `json:"skipped,omitempty"`
	Rows          int64   `json:"rows"`
	Chunks        int     `json:"chunks"`
	ChunksResumed int     `json:"chunks_resumed"`
	Files         int     `json:"files"`
	Bytes         int64   `json:"bytes"`
	FirstSnapshot string  `json:"first_snapshot_lsn,omitempty"`
	LastSnapshot  string  `json:"last_snapshot_lsn,omitempty"`
	Seconds       float64 `json:"seconds"`
}

func summarizeBackfill(st compact.BackfillStats) backfillSummary {
	s := backfillSummary{Command: "backfill", Workers: st.Workers, Seconds: st.Elapsed.Round(time.Millisecond).Seconds()}
	for _, t := range st.Tables {
		ts := backfillTableSummary{
			Table: t.Table, Run: t.Run, Mode: t.Mode, Skipped: t.Skipped, Rows: t.Rows,
			Chunks: t.ChunksDone, ChunksResumed: t.ChunksResumed, Files: t.Files, Bytes: t.Bytes,
			Seconds: t.Elapsed.Round(time.Millisecond).Seconds(),
		}
		if t.FirstSnapshot != 0 {
			ts.FirstSnapshot, ts.LastSnapshot = t.FirstSnapshot.String(), t.LastSnapshot.String()
		}
		s.Tables = append(s.Tables, ts)
		s.Rows += t.Rows
		s.Chunks += t.ChunksDone
		s.ChunksResumed += t.ChunksResumed
		s.Files += t.Files
		s.Bytes += t.Bytes
	}
	if st.Elapsed > 0 {
		s.RowsPerSecond = float64(int64(float64(s.Rows) / st.Elapsed.Seconds()))
	}
	return s
}

func (s backfillSummary) String() string {
	skipped, first, last := 0, "", ""
	for _, t := range s.Tables {
		if t.Skipped {
			skipped++
		}
		if t.FirstSnapshot != "" && (first == "" || lsnLess(t.FirstSnapshot, first)) {
			first = t.FirstSnapshot
		}
		if t.LastSnapshot != "" && (last == "" || lsnLess(last, t.LastSnapshot)) {
			last = t.LastSnapshot
		}
	}
	tables := fmt.Sprintf("%d tables", len(s.Tables))
	if skipped > 0 {
		tables += fmt.Sprintf(" (%d backfilled before, skipped)", skipped)
	}
	chunks := fmt.Sprintf("%d chunks", s.Chunks)
	if s.ChunksResumed > 0 {
		chunks += fmt.Sprintf(" (%d done by an earlier run)", s.ChunksResumed)
	}
	parts := []string{fmt.Sprintf("%s, %d rows, %s, %d files, %s", tables, s.Rows, chunks, s.Files, humanBytes(s.Bytes))}
	if first != "" {
		parts[0] += ", R rows at LSN " + first + ".." + last
	}
	parts = append(parts, fmt.Sprintf("%.2f s (%.0f rows/s, %d workers)", s.Seconds, s.RowsPerSecond, s.Workers))
	return strings.Join(parts, "; ")
}

func lsnLess(a, b string) bool {
	pa, _ := pglogrepl.ParseLSN(a)
	pb, _ := pglogrepl.ParseLSN(b)
	return pa < pb
}

func printBackfillSummary(c *cli.Context, st compact.BackfillStats) error {
	s := summarizeBackfill(st)
	if c.Bool("json") {
		if s.Tables == nil {
			s.Tables = []backfillTableSummary{}
		}
		b, err := json.Marshal(s)
		if err != nil {
			return err
		}
		fmt.Fprintln(c.App.Writer, string(b))
		return nil
	}
	fmt.Fprintf(c.App.Writer, "backfill: %s\n", s)
	return nil
}
