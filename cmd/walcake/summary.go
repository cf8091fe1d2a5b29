package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/wal-cake/wal-cake/capture"
	"github.com/wal-cake/wal-cake/compact"
)

// summary is the one line a batch command ends with.
type summary struct {
	Captured struct {
		Txns    int64 `json:"txns"`
		Changes int64 `json:"changes"`
		Bytes   int64 `json:"bytes"`
		Skipped int64 `json:"skipped_txns"`
	} `json:"captured"`
	Committed struct {
		Txns     int64            `json:"txns"`
		Rows     map[string]int64 `json:"rows"`
		Tables   int              `json:"tables"`
		Files    int              `json:"files"`
		Bytes    int64            `json:"bytes"`
		Commits  int              `json:"commits"`
		FirstLSN string           `json:"first_lsn,omitempty"`
		LastLSN  string           `json:"last_lsn,omitempty"`
		SlotLSN  string           `json:"slot_lsn,omitempty"`
	} `json:"committed"`
	Seconds float64 `json:"seconds"`

	hasCapture, hasCompact bool
}

func summaryOf(cst *capture.Stats, kst *compact.Stats, took time.Duration) summary {
	var s summary
	s.Seconds = float64(took.Round(time.Millisecond)) / float64(time.Second)
	if cst != nil {
		s.hasCapture = true
		s.Captured.Txns, s.Captured.Changes, s.Captured.Bytes, s.Captured.Skipped = cst.Txns, cst.Changes, cst.Bytes, cst.Skipped
	}
	if kst != nil {
		s.hasCompact = true
		k := &s.Committed
		k.Txns, k.Rows, k.Tables, k.Files, k.Bytes, k.Commits = kst.Txns, kst.Rows, len(kst.Tables), kst.Files, kst.Bytes, kst.Commits
		if kst.FirstLSN != 0 {
			k.FirstLSN, k.LastLSN = kst.FirstLSN.String(), kst.LastLSN.String()
		}
		if kst.SlotLSN != 0 {
			k.SlotLSN = kst.SlotLSN.String()
		}
	}
	return s
}

func (s summary) String() string {
	var parts []string
	if s.hasCapture {
		parts = append(parts, fmt.Sprintf("captured %d txns (%d changes, %s)", s.Captured.Txns, s.Captured.Changes, humanBytes(s.Captured.Bytes)))
	}
	if s.hasCompact {
		k := s.Committed
		rows := []string{}
		for _, op := range []string{"I", "U", "D", "T", "R"} {
			if n := k.Rows[op]; n > 0 {
				rows = append(rows, fmt.Sprintf("%s=%d", op, n))
			}
		}
		var total int64
		for _, n := range k.Rows {
			total += n
		}
		rowText := fmt.Sprintf("%d rows", total)
		if len(rows) > 0 {
			rowText += " (" + strings.Join(rows, " ") + ")"
		}
		lsn := "no new changes"
		if k.FirstLSN != "" {
			lsn = "LSN " + k.FirstLSN + ".." + k.LastLSN
		}
		parts = append(parts, fmt.Sprintf("committed %d txns: %s, %d tables, %d files, %s, %s", k.Txns, rowText, k.Tables, k.Files, humanBytes(k.Bytes), lsn))
		if k.SlotLSN != "" {
			parts = append(parts, "slot at "+k.SlotLSN)
		}
	}
	parts = append(parts, fmt.Sprintf("%.2f s", s.Seconds))
	return strings.Join(parts, "; ")
}

func printSummary(c *cli.Context, cmd string, s summary) error {
	if c.Bool("json") {
		if s.Committed.Rows == nil {
			s.Committed.Rows = map[string]int64{}
		}
		b, err := json.Marshal(struct {
			Command string `json:"command"`
			summary
		}{cmd, s})
		if err != nil {
			return err
		}
		fmt.Fprintln(c.App.Writer, string(b))
		return nil
	}
	fmt.Fprintf(c.App.Writer, "%s: %s\n", cmd, s)
	return nil
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for v := n / unit; v >= unit; v /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
