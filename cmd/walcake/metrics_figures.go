package main

import (
	"errors"
	"math"
	"os"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/wal-cake/wal-cake/capture"
	"github.com/wal-cake/wal-cake/compact"
	"github.com/wal-cake/wal-cake/spool"
)

// The figures of a command: the progress hooks capture and compaction call,
// the metrics they and the slot checks set, and what the spool holds that
// the lake does not.

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
	// Read-only use, and only of a spool that exists: figures must not
	// create one.
	if o.set.spoolDir == "" {
		return 0, false
	}
	if _, err := os.Stat(o.set.spoolDir); err != nil {
		return 0, false
	}
	sp, err := spool.Open(o.set.spoolDir, spool.Options{})
	if err != nil {
		return 0, false
	}
	p, err := pendingOf(sp, lakeCommit)
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

func (o *ops) noteRun(ok bool) {
	m := o.metrics
	m.gauge("walcake_last_run_success", "1 when the command succeeded.", b2f(ok), "command", o.cmd)
	m.gauge("walcake_last_run_timestamp_seconds", "When the command ended, as a Unix time.", float64(time.Now().UnixMilli())/1000, "command", o.cmd)
	m.gauge("walcake_last_run_duration_seconds", "How long the command ran.", time.Since(o.started).Seconds(), "command", o.cmd)
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
