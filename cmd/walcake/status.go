package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/urfave/cli/v2"

	"github.com/wal-cake/wal-cake/capture"
	"github.com/wal-cake/wal-cake/compact"
)

// statusReport is what `walcake status` prints.
type statusReport struct {
	// Healthy is false when Problems is not empty; the exit code is then 3.
	Healthy   bool      `json:"healthy"`
	Problems  []string  `json:"problems"`
	CheckedAt time.Time `json:"checked_at"`
	Slot      struct {
		Name               string  `json:"name"`
		Exists             bool    `json:"exists"`
		Active             bool    `json:"active"`
		ActivePID          *int32  `json:"active_pid"`
		ConfirmedFlushLSN  *string `json:"confirmed_flush_lsn"`
		RestartLSN         *string `json:"restart_lsn"`
		RetainedWALBytes   *int64  `json:"retained_wal_bytes"`
		WALStatus          *string `json:"wal_status"`
		SafeWALSize        *int64  `json:"safe_wal_size"`
		InvalidationReason string  `json:"invalidation_reason,omitempty"`
		Failover           bool    `json:"failover"`
		ServerLSN          string  `json:"server_lsn"`
		ServerInRecovery   bool    `json:"server_in_recovery"`
		LagBytes           *int64  `json:"lag_bytes"`
	} `json:"slot"`
	Spool struct {
		Dir          string `json:"dir"`
		Sealed       int    `json:"sealed_segments"`
		Open         int    `json:"open_segments"`
		Bytes        int64  `json:"bytes"`
		FirstLSN     string `json:"first_lsn,omitempty"`
		LastLSN      string `json:"last_lsn,omitempty"`
		CommittedLSN string `json:"committed_lsn,omitempty"`
		// OldestPendingCommit is the commit time of the oldest transaction
		// captured but not yet in the lake.
		OldestPendingCommit *time.Time `json:"oldest_pending_commit,omitempty"`
		OldestPendingAge    *float64   `json:"oldest_pending_age_seconds,omitempty"`
	} `json:"spool"`
	Lake struct {
		Dest          string     `json:"dest"`
		LastManifest  string     `json:"last_manifest,omitempty"`
		LastCommitLSN string     `json:"last_commit_lsn,omitempty"`
		CommittedAt   *time.Time `json:"committed_at,omitempty"`
		AgeSeconds    *float64   `json:"age_seconds,omitempty"`
		Files         int        `json:"files"`
		Rows          int64      `json:"rows"`
	} `json:"lake"`
	// Lag is how far the lake is behind: Bytes of WAL the slot has not
	// confirmed (server position - confirmed_flush_lsn), and Seconds, the
	// age of the oldest change captured but not yet in the lake (0 when the
	// spool holds none; WAL not yet captured has no commit time until read).
	Lag struct {
		Bytes   *int64  `json:"bytes"`
		Seconds float64 `json:"seconds"`
	} `json:"lag"`
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show the slot's position and retained WAL, the spool's pending changes, the last lake commit and the lag; exit 3 when something needs care",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print as JSON"},
			&cli.BoolFlag{Name: "check", Usage: "print one line, ok or the problems, for health checks (the exit code says the same: 0 healthy, 3 unhealthy, 1 unreachable)"},
		},
		Action: func(c *cli.Context) error {
			conn, err := connString(c)
			if err != nil {
				return err
			}
			set, err := parseOpsSettings(c)
			if err != nil {
				return err
			}
			r := statusReport{CheckedAt: time.Now().UTC().Truncate(time.Millisecond)}
			h, err := capture.CheckSlot(c.Context, conn, c.String("slot"))
			if err != nil {
				return failure(err)
			}
			fillSlot(&r, h)
			lakeCommit, err := lakeStatus(c, &r)
			if err != nil {
				return failure(err)
			}
			if err := spoolStatus(c, &r, lakeCommit); err != nil {
				return err
			}
			r.Problems = statusProblems(h, &r, set)
			r.Healthy = len(r.Problems) == 0
			if o := opsFrom(c); o != nil {
				o.noteSlot(h)
				o.noteSpool(lakeCommit)
				o.metrics.gauge("walcake_healthy", "1 when walcake status found nothing that needs care.", b2f(r.Healthy))
				if r.Lake.CommittedAt != nil {
					o.metrics.gauge("walcake_lake_last_commit_timestamp_seconds", "When the lake's newest commit was written, as a Unix time.", float64(r.Lake.CommittedAt.UnixMilli())/1000)
				}
			}
			switch {
			case c.Bool("json"):
				b, err := json.MarshalIndent(r, "", "  ")
				if err != nil {
					return err
				}
				fmt.Fprintln(c.App.Writer, string(b))
			case c.Bool("check"):
				if r.Healthy {
					fmt.Fprintf(c.App.Writer, "ok: slot %s, lag %s, %.0f s\n", r.Slot.Name, bytesOrDash(r.Lag.Bytes), r.Lag.Seconds)
				} else {
					fmt.Fprintf(c.App.Writer, "unhealthy: %s\n", strings.Join(r.Problems, "; "))
				}
			default:
				printStatus(c, &r)
			}
			if !r.Healthy {
				return cli.Exit("", exitUnhealthy)
			}
			return nil
		},
	}
}

func fillSlot(r *statusReport, h capture.SlotHealth) {
	s := &r.Slot
	s.Name, s.Exists, s.ServerLSN, s.ServerInRecovery = h.Slot, h.Exists, h.ServerLSN.String(), h.InRecovery
	if !h.Exists {
		return
	}
	s.Active, s.Failover, s.InvalidationReason = h.Active, h.Failover, h.InvalidationReason
	if h.ActivePID != 0 {
		s.ActivePID = &h.ActivePID
	}
	if h.ConfirmedFlushLSN != 0 {
		s.ConfirmedFlushLSN = ptr(h.ConfirmedFlushLSN.String())
		s.LagBytes = ptr(h.LagBytes)
		r.Lag.Bytes = ptr(h.LagBytes)
	}
	if h.RestartLSN != 0 {
		s.RestartLSN = ptr(h.RestartLSN.String())
		s.RetainedWALBytes = ptr(h.RetainedBytes)
	}
	if h.WALStatus != "" {
		s.WALStatus = ptr(h.WALStatus)
	}
	s.SafeWALSize = h.SafeWALSize
}

// lakeStatus fills the lake's part when a destination is configured and
// returns the lake's newest commit LSN.
func lakeStatus(c *cli.Context, r *statusReport) (pglogrepl.LSN, error) {
	if _, err := destination(c); err != nil {
		return 0, nil // no lake configured: report the slot and spool only
	}
	store, err := openStore(c.Context, c)
	if err != nil {
		return 0, err
	}
	r.Lake.Dest = fmt.Sprint(store)
	m, err := compact.ReadHeadManifest(c.Context, store)
	if err != nil || m == nil {
		return 0, err
	}
	r.Lake.LastCommitLSN = m.LastCommitLSN
	lsn, _ := pglogrepl.ParseLSN(m.LastCommitLSN)
	// Named as DESIGN.md fixes: the commit LSN in fixed-width hex.
	r.Lake.LastManifest = fmt.Sprintf("_walcake/manifests/%016X.json", uint64(lsn))
	created := m.CreatedAt
	r.Lake.CommittedAt = &created
	r.Lake.AgeSeconds = ptr(roundSeconds(r.CheckedAt.Sub(created)))
	r.Lake.Files = len(m.Files)
	for _, n := range m.Rows {
		r.Lake.Rows += n
	}
	return lsn, nil
}

func spoolStatus(c *cli.Context, r *statusReport, lakeCommit pglogrepl.LSN) error {
	dir := c.String("spool-dir")
	r.Spool.Dir = dir
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil // no spool here (an ephemeral one, or status run elsewhere)
	}
	sp, err := openSpool(c)
	if err != nil {
		return err
	}
	p, err := pendingOf(sp, lakeCommit)
	if err != nil {
		return err
	}
	st := p.stat
	r.Spool.Dir, r.Spool.Sealed, r.Spool.Open, r.Spool.Bytes = sp.Dir(), st.Sealed, st.Open, st.Bytes
	if st.Sealed > 0 {
		r.Spool.FirstLSN, r.Spool.LastLSN = st.FirstLSN.String(), st.LastLSN.String()
	}
	if st.Committed.CommitLSN != 0 {
		r.Spool.CommittedLSN = st.Committed.CommitLSN.String()
	}
	if !p.oldest.IsZero() {
		oldest := p.oldest.UTC()
		r.Spool.OldestPendingCommit = &oldest
		age := roundSeconds(p.age(r.CheckedAt))
		r.Spool.OldestPendingAge = &age
		r.Lag.Seconds = age
	}
	return nil
}

// statusProblems lists what needs care.
func statusProblems(h capture.SlotHealth, r *statusReport, set opsSettings) []string {
	problems := []string{}
	if err := h.Err(); err != nil {
		problems = append(problems, err.Error())
	}
	problems = append(problems, slotProblems(h, set.maxRetained)...)
	if set.maxLag > 0 && r.Lag.Seconds > set.maxLag.Seconds() {
		problems = append(problems, lagProblem(time.Duration(r.Lag.Seconds*float64(time.Second)), set.maxLag))
	}
	return problems
}

func printStatus(c *cli.Context, r *statusReport) {
	w := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	s := r.Slot
	switch {
	case !s.Exists:
		fmt.Fprintf(w, "slot\t%s\tmissing (run walcake setup)\n", s.Name)
	default:
		state := "inactive"
		if s.Active && s.ActivePID != nil {
			state = fmt.Sprintf("active (pid %d)", *s.ActivePID)
		}
		if s.Failover {
			state += ", failover"
		}
		fmt.Fprintf(w, "slot\t%s\t%s\n", s.Name, state)
		fmt.Fprintf(w, "  confirmed_flush_lsn\t%s\t\n", deref(s.ConfirmedFlushLSN))
		fmt.Fprintf(w, "  restart_lsn\t%s\t\n", deref(s.RestartLSN))
		fmt.Fprintf(w, "  server_lsn\t%s\t\n", s.ServerLSN)
		fmt.Fprintf(w, "  retained_wal\t%s\t\n", bytesOrDash(s.RetainedWALBytes))
		fmt.Fprintf(w, "  wal_status\t%s\t\n", deref(s.WALStatus))
		if deref(s.WALStatus) != "lost" {
			fmt.Fprintf(w, "  safe_wal_size\t%s\t\n", safeSize(s.SafeWALSize))
		}
	}
	sp := r.Spool
	fmt.Fprintf(w, "spool\t%s\t%d sealed, %d open, %s\n", sp.Dir, sp.Sealed, sp.Open, humanBytes(sp.Bytes))
	if sp.FirstLSN != "" {
		fmt.Fprintf(w, "  pending\t%s..%s\t\n", sp.FirstLSN, sp.LastLSN)
	}
	if sp.OldestPendingCommit != nil {
		fmt.Fprintf(w, "  oldest_pending\t%s\t(%s ago)\n", sp.OldestPendingCommit.Format(time.RFC3339), secondsText(*sp.OldestPendingAge))
	}
	l := r.Lake
	switch {
	case l.Dest == "":
		fmt.Fprintf(w, "lake\t-\tnot configured (WALCAKE_DEST)\n")
	case l.LastCommitLSN == "":
		fmt.Fprintf(w, "lake\t%s\tno commit yet\n", l.Dest)
	default:
		fmt.Fprintf(w, "lake\t%s\tlast commit %s at %s, %s ago (%d files, %d rows)\n", l.Dest, l.LastCommitLSN,
			l.CommittedAt.Format(time.RFC3339), secondsText(*l.AgeSeconds), l.Files, l.Rows)
		fmt.Fprintf(w, "  manifest\t%s\t\n", l.LastManifest)
	}
	fmt.Fprintf(w, "lag\t%s\t%s\n", bytesOrDash(r.Lag.Bytes), secondsText(r.Lag.Seconds))
	if r.Healthy {
		fmt.Fprintf(w, "health\tok\t\n")
	}
	w.Flush()
	for _, p := range r.Problems {
		fmt.Fprintf(c.App.Writer, "problem: %s\n", p)
	}
}

func safeSize(n *int64) string {
	if n == nil {
		return "unlimited"
	}
	return humanBytes(*n)
}

func secondsText(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(time.Second).String()
}

func roundSeconds(d time.Duration) float64 {
	return float64(d.Round(time.Millisecond)) / float64(time.Second)
}

func ptr[T any](v T) *T { return &v }

func deref(s *string) string {
	if s == nil {
		return "-"
	}
	return *s
}

func bytesOrDash(n *int64) string {
	if n == nil {
		return "-"
	}
	return humanBytes(*n)
}
