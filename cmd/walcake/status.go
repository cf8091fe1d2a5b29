package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/urfave/cli/v2"

	"github.com/wal-cake/wal-cake/compact"
)

// statusReport is what `walcake status` prints.
type statusReport struct {
	Slot struct {
		Name              string  `json:"name"`
		Exists            bool    `json:"exists"`
		Active            bool    `json:"active"`
		ActivePID         *int32  `json:"active_pid"`
		ConfirmedFlushLSN *string `json:"confirmed_flush_lsn"`
		RestartLSN        *string `json:"restart_lsn"`
		RetainedWALBytes  *int64  `json:"retained_wal_bytes"`
		WALStatus         *string `json:"wal_status"`
		SafeWALSize       *int64  `json:"safe_wal_size"`
		ServerLSN         string  `json:"server_lsn"`
		LagBytes          *int64  `json:"lag_bytes"`
	} `json:"slot"`
	Spool struct {
		Dir          string `json:"dir"`
		Sealed       int    `json:"sealed_segments"`
		Open         int    `json:"open_segments"`
		Bytes        int64  `json:"bytes"`
		FirstLSN     string `json:"first_lsn,omitempty"`
		LastLSN      string `json:"last_lsn,omitempty"`
		CommittedLSN string `json:"committed_lsn,omitempty"`
	} `json:"spool"`
	Lake struct {
		Dest          string     `json:"dest"`
		LastManifest  string     `json:"last_manifest,omitempty"`
		LastCommitLSN string     `json:"last_commit_lsn,omitempty"`
		CommittedAt   *time.Time `json:"committed_at,omitempty"`
		Files         int        `json:"files"`
		Rows          int64      `json:"rows"`
	} `json:"lake"`
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show the slot's position and retained WAL, the spool's segments, and the last lake commit",
		Flags: []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print as JSON"}},
		Action: func(c *cli.Context) error {
			var r statusReport
			conn, err := connString(c)
			if err != nil {
				return err
			}
			if err := slotStatus(c.Context, conn, c.String("slot"), &r); err != nil {
				return failure(err)
			}
			sp, err := openSpool(c)
			if err != nil {
				return err
			}
			st, err := sp.Stat()
			if err != nil {
				return err
			}
			r.Spool.Dir, r.Spool.Sealed, r.Spool.Open, r.Spool.Bytes = sp.Dir(), st.Sealed, st.Open, st.Bytes
			if st.Sealed > 0 {
				r.Spool.FirstLSN, r.Spool.LastLSN = st.FirstLSN.String(), st.LastLSN.String()
			}
			if st.Committed.CommitLSN != 0 {
				r.Spool.CommittedLSN = st.Committed.CommitLSN.String()
			}
			store, err := openStore(c.Context, c)
			if err != nil {
				return failure(err)
			}
			r.Lake.Dest = fmt.Sprint(store)
			m, err := compact.ReadHeadManifest(c.Context, store)
			if err != nil {
				return failure(err)
			}
			if m != nil {
				r.Lake.LastManifest, r.Lake.LastCommitLSN = "", m.LastCommitLSN
				created := m.CreatedAt
				r.Lake.CommittedAt = &created
				r.Lake.Files = len(m.Files)
				for _, n := range m.Rows {
					r.Lake.Rows += n
				}
			}
			if c.Bool("json") {
				b, err := json.MarshalIndent(r, "", "  ")
				if err != nil {
					return err
				}
				fmt.Fprintln(c.App.Writer, string(b))
				return nil
			}
			printStatus(c, &r)
			return nil
		},
	}
}

func slotStatus(ctx context.Context, connString, slot string, r *statusReport) error {
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		return fmt.Errorf("parse PG_CONN_STRING: %w", err)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	r.Slot.Name = slot
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&r.Slot.ServerLSN); err != nil {
		return fmt.Errorf("read server position: %w", err)
	}
	err = conn.QueryRow(ctx, `
		SELECT active, active_pid, confirmed_flush_lsn::text, restart_lsn::text,
		       pg_wal_lsn_diff(pg_current_wal_insert_lsn(), restart_lsn)::bigint,
		       wal_status, safe_wal_size,
		       pg_wal_lsn_diff(pg_current_wal_insert_lsn(), confirmed_flush_lsn)::bigint
		FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(
		&r.Slot.Active, &r.Slot.ActivePID, &r.Slot.ConfirmedFlushLSN, &r.Slot.RestartLSN,
		&r.Slot.RetainedWALBytes, &r.Slot.WALStatus, &r.Slot.SafeWALSize, &r.Slot.LagBytes)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read slot %s: %w", slot, err)
	}
	r.Slot.Exists = true
	return nil
}

func printStatus(c *cli.Context, r *statusReport) {
	w := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	defer w.Flush()
	s := r.Slot
	if !s.Exists {
		fmt.Fprintf(w, "slot\t%s\tmissing (run walcake setup)\n", s.Name)
	} else {
		state := "inactive"
		if s.Active && s.ActivePID != nil {
			state = fmt.Sprintf("active (pid %d)", *s.ActivePID)
		}
		fmt.Fprintf(w, "slot\t%s\t%s\n", s.Name, state)
		fmt.Fprintf(w, "  confirmed_flush_lsn\t%s\t\n", deref(s.ConfirmedFlushLSN))
		fmt.Fprintf(w, "  restart_lsn\t%s\t\n", deref(s.RestartLSN))
		fmt.Fprintf(w, "  server_lsn\t%s\t\n", s.ServerLSN)
		fmt.Fprintf(w, "  retained_wal\t%s\t\n", bytesOrDash(s.RetainedWALBytes))
		fmt.Fprintf(w, "  lag\t%s\t\n", bytesOrDash(s.LagBytes))
		fmt.Fprintf(w, "  wal_status\t%s\t\n", deref(s.WALStatus))
	}
	sp := r.Spool
	fmt.Fprintf(w, "spool\t%s\t%d sealed, %d open, %s\n", sp.Dir, sp.Sealed, sp.Open, humanBytes(sp.Bytes))
	if sp.FirstLSN != "" {
		fmt.Fprintf(w, "  pending\t%s..%s\t\n", sp.FirstLSN, sp.LastLSN)
	}
	l := r.Lake
	if l.LastCommitLSN == "" {
		fmt.Fprintf(w, "lake\t%s\tno commit yet\n", l.Dest)
	} else {
		fmt.Fprintf(w, "lake\t%s\tlast commit %s at %s (%d files, %d rows)\n", l.Dest, l.LastCommitLSN, l.CommittedAt.Format(time.RFC3339), l.Files, l.Rows)
	}
}

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
