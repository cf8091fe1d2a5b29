package compact

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sort"
	"time"

	"github.com/jackc/pglogrepl"
	"golang.org/x/sync/errgroup"
)

// The lake commit protocol. Every step can be interrupted; the next run
// finishes or undoes what an interrupted commit left:
//
//  1. plan: the batch's files are written locally, then the intent object
//     (_walcake/pending.json) names every key the commit will write and the
//     manifest that will make it visible;
//  2. upload the data files and new schema versions (deterministic keys);
//  3. write the manifest: the commit point;
//  4. delete the intent;
//  5. record the committed position in the spool, advance the slot;
//  6. drop the committed segments.
//
// On start, an intent whose manifest exists is just deleted (the commit
// happened); otherwise every key it names is deleted first (the commit did
// not happen, and a reader globbing **/*.parquet must not see its files).
// Transactions at or before the newest manifest are skipped, so steps 5 and
// 6 repeat harmlessly. docs/commit-protocol.md walks through each failure.

const pendingKey = "_walcake/pending.json"

// intent is the content of the pending object.
type intent struct {
	Format         int       `json:"format"`
	CreatedAt      time.Time `json:"created_at"`
	Manifest       string    `json:"manifest"`
	FirstCommitLSN string    `json:"first_commit_lsn"`
	LastCommitLSN  string    `json:"last_commit_lsn"`
	Keys           []string  `json:"keys"`
}

// Failpoint names, in protocol order. A test sets Config.Failpoint to stop
// the process at one of them.
const (
	FailAfterIntent      = "compact-after-intent"
	FailAfterFirstUpload = "compact-after-first-upload"
	FailAfterUpload      = "compact-after-upload"
	FailAfterManifest    = "compact-after-manifest"
	FailAfterIntentClear = "compact-after-intent-clear"
	FailAfterMark        = "compact-after-mark"
	FailAfterAdvance     = "compact-after-advance"
	FailAfterDrop        = "compact-after-drop"
)

// Failpoints lists every failpoint of compaction, in protocol order.
var Failpoints = []string{
	FailAfterIntent, FailAfterFirstUpload, FailAfterUpload, FailAfterManifest,
	FailAfterIntentClear, FailAfterMark, FailAfterAdvance, FailAfterDrop,
}

func (c *committer) failpoint(name string) {
	if c.cfg.Failpoint != nil {
		c.cfg.Failpoint(name)
	}
}

// recoverIntent finishes or undoes a commit that was interrupted.
func recoverIntent(ctx context.Context, store Store, log *slog.Logger) error {
	b, err := getAll(ctx, store, pendingKey)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", pendingKey, err)
	}
	var in intent
	if err := json.Unmarshal(b, &in); err != nil {
		return fmt.Errorf("parse %s: %w", pendingKey, err)
	}
	done, err := exists(ctx, store, in.Manifest)
	if err != nil {
		return fmt.Errorf("look up %s: %w", in.Manifest, err)
	}
	if done {
		log.Info("an interrupted lake commit had finished; clearing its intent", "manifest", in.Manifest)
	} else {
		log.Warn("undoing an interrupted lake commit", "manifest", in.Manifest, "objects", len(in.Keys),
			"first_lsn", in.FirstCommitLSN, "last_lsn", in.LastCommitLSN)
		for _, k := range in.Keys {
			if err := store.Delete(ctx, k); err != nil {
				return fmt.Errorf("undo interrupted commit: delete %s: %w", k, err)
			}
		}
	}
	if err := store.Delete(ctx, pendingKey); err != nil {
		return fmt.Errorf("delete %s: %w", pendingKey, err)
	}
	return nil
}

// publish makes one lake commit of the files and schema versions the batch
// produced: intent, uploads, manifest, intent cleared.
func (c *committer) publish(ctx context.Context, first, last, end pglogrepl.LSN, txns int64) (*Manifest, error) {
	sort.Slice(c.done, func(i, j int) bool { return c.done[i].key < c.done[j].key })
	m := &Manifest{
		Format:         1,
		CreatedAt:      time.Now().UTC().Truncate(time.Millisecond),
		FirstCommitLSN: first.String(),
		LastCommitLSN:  last.String(),
		EndLSN:         end.String(),
		Transactions:   txns,
		Rows:           c.rows,
	}
	for _, d := range c.newSchemas {
		m.Schemas = append(m.Schemas, schemaKey(d.Table, d.Version))
	}
	for _, f := range c.done {
		m.Files = append(m.Files, f.mf)
	}

	in := intent{Format: 1, CreatedAt: m.CreatedAt, Manifest: manifestKey(last),
		FirstCommitLSN: m.FirstCommitLSN, LastCommitLSN: m.LastCommitLSN}
	for _, f := range m.Files {
		in.Keys = append(in.Keys, f.Key)
	}
	in.Keys = append(in.Keys, m.Schemas...)
	if err := putJSON(ctx, c.cfg.Store, pendingKey, in); err != nil {
		return nil, err
	}
	c.failpoint(FailAfterIntent)

	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.cfg.UploadConcurrency)
	for i, f := range c.done {
		g.Go(func() error {
			if err := uploadFile(gctx, c.cfg.Store, f); err != nil {
				return err
			}
			if i == 0 {
				c.failpoint(FailAfterFirstUpload)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	for _, d := range c.newSchemas {
		if err := putJSON(ctx, c.cfg.Store, schemaKey(d.Table, d.Version), d); err != nil {
			return nil, err
		}
	}
	c.failpoint(FailAfterUpload)

	if err := putJSON(ctx, c.cfg.Store, manifestKey(last), m); err != nil {
		return nil, err
	}
	c.failpoint(FailAfterManifest)
	if err := c.cfg.Store.Delete(ctx, pendingKey); err != nil {
		return nil, fmt.Errorf("delete %s: %w", pendingKey, err)
	}
	c.failpoint(FailAfterIntentClear)
	return m, nil
}

func uploadFile(ctx context.Context, store Store, f finishedFile) error {
	file, err := os.Open(f.path)
	if err != nil {
		return fmt.Errorf("upload %s: %w", f.key, err)
	}
	defer file.Close()
	if err := store.Put(ctx, f.key, file, f.mf.Bytes); err != nil {
		return fmt.Errorf("upload %s: %w", f.key, err)
	}
	file.Close()
	os.Remove(f.path)
	return nil
}
