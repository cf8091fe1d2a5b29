package compact

import (
	"context"
	"fmt"
	"sort"
	"strings"
)

// Hooks through which the commit protocol (compact.go) keeps the decoder's
// state in step with the lake: the TOAST state store and the counts of
// values written as NULL by a rule of the type map.

// openState opens the TOAST state store beside the spool, in step with the
// lake's head, and lets the decoder look up the lake's schema versions.
// A store that cannot be opened is not an error: compaction runs without
// it (unchanged TOAST values stay unfilled).
func (c *committer) openState(ctx context.Context) error {
	c.dec.log = c.log
	c.dec.lake = c.cfg.Store
	store, err := openToastStore(c.sp.Dir(), fmt.Sprint(c.cfg.Store), c.head.CommitLSN, c.log)
	if err != nil {
		c.log.Warn("running without the TOAST state store: unchanged TOAST values are not filled", "err", err)
		return nil
	}
	c.dec.toast = store
	return nil
}

// closeState closes the TOAST state store; changes of a batch that did not
// reach the lake stay marked for the next run to forget.
func (c *committer) closeState() {
	if err := c.dec.toast.close(); err != nil {
		c.log.Warn("close TOAST state store", "err", err)
	}
	c.dec.toast = nil
}

// afterCommit runs once the manifest of a lake commit is written: the TOAST
// state store now reflects the new head, and values a type-map rule wrote as
// NULL are counted and logged.
func (c *committer) afterCommit() error {
	c.dec.toastDone(c.dec.toast.committed(c.head.CommitLSN))
	nulled, unfilled := c.dec.takeNulled()
	if len(nulled) > 0 {
		if c.st.Nulled == nil {
			c.st.Nulled = map[string]int64{}
		}
		cols := make([]string, 0, len(nulled))
		for col, n := range nulled {
			c.st.Nulled[col] += n
			cols = append(cols, fmt.Sprintf("%s=%d", col, n))
		}
		sort.Strings(cols)
		c.log.Warn("values the Parquet type cannot hold were written as NULL (numeric NaN in a numeric(p,s) column, timestamps after year 294247; see docs/types.md)",
			"manifest", c.head.Key, "columns", strings.Join(cols, ","))
	}
	if unfilled > 0 {
		c.st.Unfilled += unfilled
		c.log.Info("unchanged TOAST values not known to wal-cake were left NULL and named in _unchanged",
			"manifest", c.head.Key, "values", unfilled)
	}
	return nil
}
