package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/urfave/cli/v2"

	"github.com/wal-cake/wal-cake/capture"
	"github.com/wal-cake/wal-cake/compact"
	"github.com/wal-cake/wal-cake/spool"
)

// Exit codes beyond 0 (success), 1 (failure), 2 (bad configuration) and 130
// (interrupted).
const (
	// exitUnhealthy: the slot needs attention (lost, about to be lost, or
	// retaining more WAL than --max-retained-wal with --fail-on-lag), or
	// `status` found a problem.
	exitUnhealthy = 3
)

// opsFlags are the operational flags of the commands that read the slot:
// slot care, metrics and progress.
func opsFlags(command string) []cli.Flag {
	var flags []cli.Flag
	if command == "capture" || command == "run" {
		flags = append(flags, &cli.BoolFlag{Name: "heartbeat", EnvVars: []string{"WALCAKE_HEARTBEAT"}, Category: "Slot care",
			Usage: "write a small logical decoding message (pg_logical_emit_message) before capturing, so that the slot has something of its own database to confirm when the published tables are idle"})
	}
	flags = append(flags,
		&cli.StringFlag{Name: "max-retained-wal", EnvVars: []string{"WALCAKE_MAX_RETAINED_WAL"}, Category: "Slot care",
			Usage: "warn when the slot retains more WAL than this (e.g. 10GB; units as PostgreSQL's: kB, MB, GB, TB are powers of 1024); 0 turns the check off"},
		&cli.DurationFlag{Name: "max-lag", EnvVars: []string{"WALCAKE_MAX_LAG"}, Category: "Slot care",
			Usage: "warn when the oldest change captured but not yet in the lake is older than this; 0 turns the check off"},
	)
	if command != "status" {
		flags = append(flags,
			&cli.BoolFlag{Name: "fail-on-lag", EnvVars: []string{"WALCAKE_FAIL_ON_LAG"}, Category: "Slot care",
				Usage: fmt.Sprintf("exit with code %d when, after its work, the slot still exceeds --max-retained-wal or --max-lag, or is about to be lost", exitUnhealthy)},
			&cli.StringFlag{Name: "metrics-addr", EnvVars: []string{"WALCAKE_METRICS_ADDR"}, Category: "Metrics",
				Usage: "serve Prometheus metrics on this address (e.g. :9187) at /metrics while the command runs; meant for capture --follow"},
			&cli.DurationFlag{Name: "progress-interval", EnvVars: []string{"WALCAKE_PROGRESS_INTERVAL"}, Value: 30 * time.Second, Category: "Logging",
				Usage: "how often long work logs its progress (changes, rows/s, LSN distance left), and how often capture --follow checks the slot; 0 turns progress logs off"},
		)
	}
	flags = append(flags, &cli.StringFlag{Name: "metrics-file", EnvVars: []string{"WALCAKE_METRICS_FILE"}, Category: "Metrics",
		Usage: "when the command ends, write its figures to this file in the Prometheus text format (for node_exporter's textfile collector; name it *.prom)"})
	return flags
}

// opsSettings are the parsed operational flags.
type opsSettings struct {
	maxRetained   int64
	maxLag        time.Duration
	failOnLag     bool
	heartbeat     bool
	follow        bool
	progressEvery time.Duration
	metricsAddr   string
	metricsFile   string
	spoolDir      string
	connString    string
	slot          string
}

func parseOpsSettings(c *cli.Context) (opsSettings, error) {
	s := opsSettings{
		maxLag:        c.Duration("max-lag"),
		failOnLag:     c.Bool("fail-on-lag"),
		heartbeat:     c.Bool("heartbeat"),
		follow:        c.Bool("follow"),
		progressEvery: c.Duration("progress-interval"),
		metricsAddr:   c.String("metrics-addr"),
		metricsFile:   c.String("metrics-file"),
		spoolDir:      c.String("spool-dir"),
		connString:    c.String("pg-conn-string"),
		slot:          c.String("slot"),
	}
	if v := c.String("max-retained-wal"); v != "" {
		n, err := parseSize(v)
		if err != nil {
			return s, cli.Exit(fmt.Sprintf("--max-retained-wal %q: %v", v, err), 2)
		}
		s.maxRetained = n
	}
	if s.maxLag < 0 || s.progressEvery < 0 {
		return s, cli.Exit("--max-lag and --progress-interval must not be negative", 2)
	}
	return s, nil
}

type opsKey struct{}

// ops is one command's operational side: the logger, metrics, progress
// logs, slot care and the ending summary of a failed run. It travels in the
// command's context; every method is safe on a nil *ops (a command run
// without the wrapper).
type ops struct {
	cmd     string
	started time.Time
	rt      *processIO
	set     opsSettings
	log     *slog.Logger
	metrics *metrics
	server  *metricsServer
	sp      *spool.Spool // read-only use: figures for metrics

	stopBackground context.CancelFunc
	background     sync.WaitGroup

	mu           sync.Mutex
	cst          *capture.Stats
	kst          *compact.Stats
	errors       int
	reconnects   int
	lastCapLog   time.Time
	lastCapSt    capture.Stats
	lastCompLog  time.Time
	lastCompRows int64
}

// withOps wraps a command's action: it builds the command's ops before the
// action runs and finishes them (slot re-check, failure summary, metrics
// file) after.
func withOps(rt *processIO, cmd *cli.Command) {
	if cmd.Name != "setup" {
		have := map[string]bool{}
		for _, f := range cmd.Flags {
			for _, n := range f.Names() {
				have[n] = true
			}
		}
		for _, f := range opsFlags(cmd.Name) {
			if !have[f.Names()[0]] { // a command's own flag of the same name wins
				cmd.Flags = append(cmd.Flags, f)
			}
		}
	}
	action := cmd.Action
	if action == nil {
		return
	}
	cmd.Action = func(c *cli.Context) error {
		o, err := newOps(c, rt, cmd.Name)
		if err != nil {
			return err
		}
		c.Context = context.WithValue(c.Context, opsKey{}, o)
		return o.finish(c, action(c))
	}
}

func opsFrom(c *cli.Context) *ops {
	if c == nil || c.Context == nil {
		return nil
	}
	o, _ := c.Context.Value(opsKey{}).(*ops)
	return o
}

func newOps(c *cli.Context, rt *processIO, command string) (*ops, error) {
	rt.secrets.add(connSecrets(c.String("pg-conn-string"))...)
	rt.secrets.add(c.String("aws-secret-access-key"), c.String("aws-session-token"), c.String("aws-access-key-id"))
	rt.setShutdownTimeout(c.Duration("shutdown-timeout"))
	set, err := parseOpsSettings(c)
	if err != nil {
		return nil, err
	}
	o := &ops{cmd: command, started: time.Now(), rt: rt, set: set, metrics: newMetrics()}
	log, err := buildLogger(rt.stderr, c.String("log-level"), c.String("log-format"))
	if err != nil {
		return nil, err
	}
	o.log = slog.New(&countingHandler{Handler: log.Handler(), m: o.metrics})
	o.metrics.gauge("walcake_build_info", "walcake's version and commit.", 1, "version", version, "commit", commit)
	if set.spoolDir != "" && command != "setup" {
		if sp, err := spool.Open(set.spoolDir, spool.Options{}); err == nil {
			o.sp = sp
		}
	}
	if set.metricsAddr != "" {
		if o.server, err = serveMetrics(set.metricsAddr, o.metrics, o.log); err != nil {
			return nil, cli.Exit(err.Error(), 2)
		}
	}
	ctx, cancel := context.WithCancel(c.Context)
	o.stopBackground = cancel
	if set.follow && set.connString != "" {
		o.background.Add(1)
		go func() {
			defer o.background.Done()
			o.watchSlot(ctx)
		}()
	}
	return o, nil
}

// countingHandler counts log records by level for the metrics.
type countingHandler struct {
	slog.Handler
	m *metrics
}

func (h *countingHandler) Handle(ctx context.Context, r slog.Record) error {
	h.m.inc("walcake_log_messages_total", "Log records written, by level.", "level", strings.ToLower(r.Level.String()))
	return h.Handler.Handle(ctx, r)
}

func (h *countingHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &countingHandler{Handler: h.Handler.WithAttrs(attrs), m: h.m}
}

func (h *countingHandler) WithGroup(name string) slog.Handler {
	return &countingHandler{Handler: h.Handler.WithGroup(name), m: h.m}
}

// beforeCapture takes care of the slot before capture streams from it:
// the heartbeat, then the health check. A lost slot stops the command with
// what to do about it; too much retained WAL is a warning.
func (o *ops) beforeCapture(ctx context.Context) error {
	if o == nil || o.set.connString == "" {
		return nil
	}
	if o.set.heartbeat {
		lsn, err := capture.EmitHeartbeat(ctx, o.set.connString)
		if err != nil {
			if ctx.Err() != nil {
				return failure(context.Cause(ctx))
			}
			o.countError()
			o.log.Warn("heartbeat not written", "err", err)
		} else {
			o.log.Info("heartbeat written", "lsn", lsn.String())
		}
	}
	h, err := capture.CheckSlot(ctx, o.set.connString, o.set.slot)
	if err != nil {
		return failure(err)
	}
	o.noteSlot(h)
	if err := h.Err(); err != nil {
		if errors.Is(err, capture.ErrSlotLost) {
			return cli.Exit(err.Error(), exitUnhealthy)
		}
		return err
	}
	for _, p := range slotProblems(h, o.set.maxRetained) {
		o.log.Warn(p, slotAttrs(h)...)
	}
	return nil
}

// captured records a capture run's figures, success or not.
func (o *ops) captured(st capture.Stats) {
	if o == nil {
		return
	}
	o.captureProgressQuiet(st)
}

// compacted records a compaction's figures, success or not.
func (o *ops) compacted(st compact.Stats) {
	if o == nil {
		return
	}
	o.noteCompact(st)
}

// captureHook returns capture.Config.Progress, or nil without ops.
func (o *ops) captureHook() func(capture.Stats) {
	if o == nil {
		return nil
	}
	return o.captureProgress
}

// captureProgress is capture.Config.Progress: metrics, and a progress line
// at most every --progress-interval.
func (o *ops) captureProgress(st capture.Stats) {
	o.captureProgressQuiet(st)
	o.mu.Lock()
	defer o.mu.Unlock()
	now := time.Now()
	if o.set.progressEvery <= 0 || now.Sub(o.lastCapLog) < o.set.progressEvery {
		return
	}
	prev, since := o.lastCapSt, o.lastCapLog
	if since.IsZero() {
		since = o.started
	}
	if o.set.follow && st.Changes == prev.Changes && st.Txns == prev.Txns {
		return // following an idle server: nothing to report
	}
	o.lastCapLog, o.lastCapSt = now, st
	attrs := []any{"txns", st.Txns, "changes", st.Changes, "bytes", st.Bytes,
		"changes_per_s", perSecond(st.Changes-prev.Changes, now.Sub(since)), "server_lsn", st.EndLSN.String()}
	if !o.set.follow {
		attrs = append(attrs, "target", st.StartLSN.String(), "lsn_left_bytes", lsnDistance(st.EndLSN, st.StartLSN))
	}
	o.log.Info("capture progress", attrs...)
}

func (o *ops) captureProgressQuiet(st capture.Stats) {
	o.mu.Lock()
	cp := st
	o.cst = &cp
	o.reconnects = st.Reconnects
	errs := o.errors + o.reconnects
	o.mu.Unlock()
	m := o.metrics
	m.counter("walcake_capture_transactions_total", "Transactions captured into the spool (commits).", float64(st.Txns))
	m.counter("walcake_capture_changes_total", "Changes (insert, update, delete, truncate) captured into the spool.", float64(st.Changes))
	m.counter("walcake_capture_bytes_total", "Bytes of pgoutput messages captured into the spool.", float64(st.Bytes))
	m.counter("walcake_capture_skipped_transactions_total", "Transactions skipped because the spool already held them.", float64(st.Skipped))
	m.counter("walcake_capture_reconnects_total", "Replication connections lost and re-established.", float64(st.Reconnects))
	m.gauge("walcake_capture_server_lsn", "Newest server WAL position capture has seen, as a number.", float64(st.EndLSN))
	m.counter("walcake_errors_total", "Errors: lost replication connections, failed checks and failed commands.", float64(errs))
}

// compactProgress returns compact.Config.Progress for a compaction of sp.
func (o *ops) compactProgress(sp *spool.Spool) func(compact.Stats) {
	if o == nil {
		return nil
	}
	return func(st compact.Stats) {
		o.noteCompact(st)
		o.mu.Lock()
		defer o.mu.Unlock()
		now := time.Now()
		if o.set.progressEvery <= 0 || now.Sub(o.lastCompLog) < o.set.progressEvery {
			return
		}
		since := o.lastCompLog
		if since.IsZero() {
			since = o.started
		}
		rows := sumOps(st.Rows)
		attrs := []any{"commits", st.Commits, "txns", st.Txns, "rows", rows,
			"rows_per_s", perSecond(rows-o.lastCompRows, now.Sub(since)), "lsn", st.LastLSN.String()}
		o.lastCompLog, o.lastCompRows = now, rows
		if segs, err := sp.Sealed(); err == nil {
			attrs = append(attrs, "segments_left", len(segs))
			if len(segs) > 0 {
				attrs = append(attrs, "lsn_left_bytes", lsnDistance(st.LastLSN, segs[len(segs)-1].LastLSN))
			} else {
				attrs = append(attrs, "lsn_left_bytes", 0)
			}
		}
		o.log.Info("compact progress", attrs...)
	}
}

// noteCompact copies a compaction's figures (its maps belong to the
// compaction) and sets the metrics.
func (o *ops) noteCompact(st compact.Stats) {
	cp := st
	cp.Rows = make(map[string]int64, len(st.Rows))
	for k, v := range st.Rows {
		cp.Rows[k] = v
	}
	cp.Tables = make(map[string]bool, len(st.Tables))
	for k, v := range st.Tables {
		cp.Tables[k] = v
	}
	cp.Manifests = append([]string(nil), st.Manifests...)
	o.mu.Lock()
	o.kst = &cp
	o.mu.Unlock()
	m := o.metrics
	m.counter("walcake_compact_commits_total", "Lake commits (manifests) written.", float64(cp.Commits))
	m.counter("walcake_compact_transactions_total", "Transactions written to the lake.", float64(cp.Txns))
	m.counter("walcake_compact_segments_total", "Spool segments committed to the lake and dropped.", float64(cp.Segments))
	m.counter("walcake_compact_files_total", "Parquet files written to the lake.", float64(cp.Files))
	m.counter("walcake_compact_bytes_total", "Bytes of Parquet files written to the lake.", float64(cp.Bytes))
	for _, op := range []string{"I", "U", "D", "T", "R"} {
		m.counter("walcake_compact_rows_total", "Rows written to the lake, by operation (I, U, D, T, R).", float64(cp.Rows[op]), "op", op)
	}
	if cp.LastLSN != 0 {
		m.gauge("walcake_lake_commit_lsn", "Commit LSN of the newest transaction this command wrote to the lake, as a number.", float64(cp.LastLSN))
	}
}

func (o *ops) countError() {
	o.mu.Lock()
	o.errors++
	errs := o.errors + o.reconnects
	o.mu.Unlock()
	o.metrics.counter("walcake_errors_total", "Errors: lost replication connections, failed checks and failed commands.", float64(errs))
}

// watchSlot checks the slot and the spool every --progress-interval (30 s
// when off) while capture follows the server: metrics, and warnings when the
// slot needs care.
func (o *ops) watchSlot(ctx context.Context) {
	every := o.set.progressEvery
	if every <= 0 {
		every = 30 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		h, err := capture.CheckSlot(ctx, o.set.connString, o.set.slot)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			o.countError()
			o.log.Warn("could not check the slot", "err", err)
			continue
		}
		o.noteSlot(h)
		for _, p := range slotProblems(h, o.set.maxRetained) {
			o.log.Warn(p, slotAttrs(h)...)
		}
		if age, ok := o.noteSpool(0); ok && o.set.maxLag > 0 && age > o.set.maxLag {
			o.log.Warn(lagProblem(age, o.set.maxLag))
		}
	}
}

// noteSlot sets the slot's metrics.
func (o *ops) noteSlot(h capture.SlotHealth) {
	m := o.metrics
	m.gauge("walcake_slot_exists", "1 when the replication slot exists.", b2f(h.Exists))
	m.gauge("walcake_server_wal_lsn", "The server's WAL insert position, as a number.", float64(h.ServerLSN))
	if !h.Exists {
		return
	}
	m.gauge("walcake_slot_active", "1 when a process streams from the slot.", b2f(h.Active))
	m.gauge("walcake_slot_lost", "1 when the server has invalidated the slot (wal_status = lost).", b2f(h.Lost()))
	m.drop("walcake_slot_wal_status")
	m.gauge("walcake_slot_wal_status", "The slot's wal_status (reserved, extended, unreserved, lost): 1 for the current one.", 1, "wal_status", h.WALStatus)
	m.gauge("walcake_slot_retained_wal_bytes", "WAL the slot keeps from being recycled: server position - restart_lsn.", float64(h.RetainedBytes))
	m.gauge("walcake_slot_lag_bytes", "WAL the slot has not confirmed: server position - confirmed_flush_lsn.", float64(h.LagBytes))
	m.gauge("walcake_slot_confirmed_flush_lsn", "The slot's confirmed_flush_lsn, as a number.", float64(h.ConfirmedFlushLSN))
	if h.SafeWALSize != nil {
		m.gauge("walcake_slot_safe_wal_size_bytes", "WAL that can still be written before the slot is in danger of being lost (safe_wal_size).", float64(*h.SafeWALSize))
	} else {
		m.drop("walcake_slot_safe_wal_size_bytes")
	}
}

// noteSpool sets the spool's metrics and returns the age of the oldest
// change captured but not yet in the lake (ok false when unknown).
// lakeCommit is the lake's newest commit LSN when known, else 0.
func (o *ops) noteSpool(lakeCommit pglogrepl.LSN) (time.Duration, bool) {
	if o.sp == nil {
		return 0, false
	}
	p, err := pendingOf(o.sp, lakeCommit)
	if err != nil {
		o.log.Debug("could not read the spool", "err", err)
		return 0, false
	}
	m := o.metrics
	m.gauge("walcake_spool_segments", "Spool segments, by state: sealed (ready for compaction) and open (being written).", float64(p.stat.Sealed), "state", "sealed")
	m.gauge("walcake_spool_segments", "Spool segments, by state: sealed (ready for compaction) and open (being written).", float64(p.stat.Open), "state", "open")
	m.gauge("walcake_spool_bytes", "Bytes of spool segment files.", float64(p.stat.Bytes))
	age := p.age(time.Now())
	m.gauge("walcake_lag_seconds", "Age of the oldest change captured but not yet in the lake (0 when none).", age.Seconds())
	return age, true
}

// finish ends the command: the slot re-check (--fail-on-lag, metrics), the
// summary line of a failed batch command, the metrics file.
func (o *ops) finish(c *cli.Context, err error) error {
	o.stopBackground()
	o.background.Wait()
	batch := o.cmd == "capture" || o.cmd == "compact" || o.cmd == "run"
	interrupted := c.Context.Err() != nil
	if batch && !interrupted && o.set.connString != "" && (o.set.failOnLag || o.set.metricsFile != "") {
		if ferr := o.checkAfter(c.Context); err == nil {
			err = ferr
		}
	}
	if err != nil && interrupted && !errors.Is(err, errInterrupted) {
		// A step that returned its client's "context canceled" rather
		// than the context's cause: it was the signal all the same.
		err = fmt.Errorf("%w (%s)", context.Cause(c.Context), firstLine(err.Error()))
	}
	if err != nil {
		o.countError()
		if batch {
			o.printFailure(c, err)
		}
		err = failure(err)
	}
	o.noteRun(err == nil)
	if o.set.metricsFile != "" {
		if werr := o.metrics.writeFile(o.set.metricsFile); werr != nil {
			o.log.Error("metrics file not written", "err", werr)
			if err == nil {
				err = werr
			}
		}
	}
	if o.server != nil {
		o.server.shutdown()
	}
	return err
}

// checkAfter re-reads the slot once the work is done; with --fail-on-lag it
// turns a slot that still needs care into exit code 3.
func (o *ops) checkAfter(ctx context.Context) error {
	h, err := capture.CheckSlot(ctx, o.set.connString, o.set.slot)
	if err != nil {
		o.countError()
		o.log.Warn("could not check the slot", "err", err)
		return nil
	}
	o.noteSlot(h)
	problems := slotProblems(h, o.set.maxRetained)
	if h.Err() != nil {
		problems = append(problems, h.Err().Error())
	}
	if age, ok := o.noteSpool(0); ok && o.set.maxLag > 0 && age > o.set.maxLag {
		problems = append(problems, lagProblem(age, o.set.maxLag))
	}
	if len(problems) == 0 || !o.set.failOnLag {
		return nil
	}
	return cli.Exit("--fail-on-lag: "+strings.Join(problems, "; "), exitUnhealthy)
}

func (o *ops) noteRun(ok bool) {
	m := o.metrics
	m.gauge("walcake_last_run_success", "1 when the command succeeded.", b2f(ok), "command", o.cmd)
	m.gauge("walcake_last_run_timestamp_seconds", "When the command ended, as a Unix time.", float64(time.Now().UnixMilli())/1000, "command", o.cmd)
	m.gauge("walcake_last_run_duration_seconds", "How long the command ran.", time.Since(o.started).Seconds(), "command", o.cmd)
}

// printFailure prints a failed batch command's summary line (what it did
// before failing) on stdout; the reason goes to stderr as usual.
func (o *ops) printFailure(c *cli.Context, err error) {
	o.mu.Lock()
	cst, kst := o.cst, o.kst
	o.mu.Unlock()
	if cst == nil && kst == nil {
		return // failed before any work
	}
	s := summaryOf(cst, kst, time.Since(o.started))
	reason := err.Error()
	if errors.Is(err, errInterrupted) || c.Context.Err() != nil {
		reason = "interrupted"
	}
	if c.Bool("json") {
		if s.Committed.Rows == nil {
			s.Committed.Rows = map[string]int64{}
		}
		b, jerr := json.Marshal(struct {
			Command string `json:"command"`
			Error   string `json:"error"`
			summary
		}{o.cmd, reason, s})
		if jerr == nil {
			fmt.Fprintln(c.App.Writer, string(b))
		}
		return
	}
	fmt.Fprintf(c.App.Writer, "%s: failed (%s): %s\n", o.cmd, firstLine(reason), s)
}

// slotProblems lists what makes a slot need care, as log lines.
func slotProblems(h capture.SlotHealth, maxRetained int64) []string {
	var out []string
	if !h.Exists || h.Lost() {
		return nil // reported through SlotHealth.Err
	}
	if h.WALStatus == "unreserved" {
		out = append(out, fmt.Sprintf("slot %s is about to be lost: wal_status = unreserved, it retains more WAL than max_slot_wal_keep_size and the next checkpoint may remove WAL it needs; run walcake now", h.Slot))
	}
	if maxRetained > 0 && h.RetainedBytes > maxRetained {
		out = append(out, fmt.Sprintf("slot %s retains %s of WAL, more than --max-retained-wal %s", h.Slot, humanBytes(h.RetainedBytes), humanBytes(maxRetained)))
	}
	return out
}

func lagProblem(age, maxLag time.Duration) string {
	return fmt.Sprintf("the oldest change not yet in the lake is %s old, more than --max-lag %s", age.Round(time.Second), maxLag)
}

func slotAttrs(h capture.SlotHealth) []any {
	attrs := []any{"slot", h.Slot, "wal_status", h.WALStatus, "retained_wal_bytes", h.RetainedBytes,
		"restart_lsn", h.RestartLSN.String(), "confirmed_flush_lsn", h.ConfirmedFlushLSN.String()}
	if h.SafeWALSize != nil {
		attrs = append(attrs, "safe_wal_size", *h.SafeWALSize)
	}
	return attrs
}

// pending is what the spool holds that the lake does not.
type pending struct {
	stat       spool.Stats
	oldest     time.Time // commit time of the oldest pending transaction; zero when none
	oldestLSN  pglogrepl.LSN
	committed  pglogrepl.LSN // newest commit known to be in the lake
	pendingTxn bool
}

func (p pending) age(now time.Time) time.Duration {
	if p.oldest.IsZero() {
		return 0
	}
	return max(0, now.Sub(p.oldest))
}

// pendingOf reads the spool's figures and the oldest transaction of its
// sealed segments that is newer than the lake (lakeCommit, or the spool's
// committed mark). Open segments are being written and are not read.
func pendingOf(sp *spool.Spool, lakeCommit pglogrepl.LSN) (pending, error) {
	var p pending
	st, err := sp.Stat()
	if err != nil {
		return p, err
	}
	p.stat = st
	p.committed = max(lakeCommit, st.Committed.CommitLSN)
	segs, err := sp.Sealed()
	if err != nil {
		return p, err
	}
	errFound := errors.New("found")
	for _, si := range segs {
		if si.LastLSN <= p.committed {
			continue // in the lake already; compaction drops it next
		}
		seg, err := spool.OpenSegment(si)
		if err != nil {
			return p, err // dropped meanwhile, or being read: try again later
		}
		err = seg.Txns(func(t spool.Txn) error {
			if t.CommitLSN > p.committed {
				p.oldest, p.oldestLSN, p.pendingTxn = t.CommitTime, t.CommitLSN, true
				return errFound
			}
			return nil
		})
		seg.Close()
		if errors.Is(err, errFound) {
			break
		}
		if err != nil {
			return p, err
		}
	}
	return p, nil
}

func perSecond(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return math.Round(float64(n)/d.Seconds()*10) / 10
}

// lsnDistance is to - from in bytes, or 0 when from is at or past to.
func lsnDistance(from, to pglogrepl.LSN) int64 {
	if from >= to {
		return 0
	}
	return int64(to - from)
}

func sumOps(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}
