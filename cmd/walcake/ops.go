package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/wal-cake/wal-cake/capture"
	"github.com/wal-cake/wal-cake/compact"
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
// command's context; the methods commands call (beforeCapture, captured,
// compacted, captureHook, compactProgress) are safe on a nil *ops.
type ops struct {
	cmd     string
	started time.Time
	rt      *processIO
	set     opsSettings
	log     *slog.Logger
	metrics *metrics
	server  *metricsServer

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
	now := time.Now()
	// The first progress line comes one interval after the start: short
	// runs end with their summary line alone.
	o := &ops{cmd: command, started: now, rt: rt, set: set, metrics: newMetrics(), lastCapLog: now, lastCompLog: now}
	log, err := buildLogger(rt.stderr, c.String("log-level"), c.String("log-format"))
	if err != nil {
		return nil, err
	}
	o.log = slog.New(&countingHandler{Handler: log.Handler(), m: o.metrics})
	o.metrics.gauge("walcake_build_info", "walcake's version and commit.", 1, "version", version, "commit", commit)
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

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}
