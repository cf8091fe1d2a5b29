package compact

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
)

// Manifest is one lake commit: the data files it adds and the range of
// transactions they hold. It is written after every object it names.
type Manifest struct {
	Format         int              `json:"format"`
	CreatedAt      time.Time        `json:"created_at"`
	FirstCommitLSN string           `json:"first_commit_lsn"`
	LastCommitLSN  string           `json:"last_commit_lsn"`
	EndLSN         string           `json:"end_lsn"` // just past the last commit record: where the slot may be confirmed
	Transactions   int64            `json:"transactions"`
	Rows           map[string]int64 `json:"rows"` // by _op
	Files          []ManifestFile   `json:"files"`
	Schemas        []string         `json:"schemas,omitempty"` // schema version keys first written by this commit
}

// ManifestFile is one data file of a commit.
type ManifestFile struct {
	Key            string `json:"key"`
	Table          string `json:"table"`
	SchemaVersion  string `json:"schema_version"`
	Rows           int64  `json:"rows"`
	Bytes          int64  `json:"bytes"`
	FirstCommitLSN string `json:"first_commit_lsn"`
	LastCommitLSN  string `json:"last_commit_lsn"`
}

// lakeHead is what compaction needs to know about the newest lake commit.
type lakeHead struct {
	Key       string
	CommitLSN pglogrepl.LSN
	EndLSN    pglogrepl.LSN
	Manifest  *Manifest
}

// isStreamManifest reports whether key names a manifest of the replication
// stream: <16 hex digits>.json. Other manifests (backfill chunks) carry a
// suffix and never define where the stream stands.
func isStreamManifest(key string) bool {
	name, ok := strings.CutPrefix(key, manifestPrefix)
	if !ok || len(name) != 16+len(".json") || !strings.HasSuffix(name, ".json") {
		return false
	}
	_, err := parseLSNHex(name[:16])
	return err == nil
}

// readHead finds the newest stream manifest; a zero head when there is none.
func readHead(ctx context.Context, store Store) (lakeHead, error) {
	var last string
	err := store.List(ctx, manifestPrefix, func(o Object) error {
		if isStreamManifest(o.Key) {
			last = o.Key
		}
		return nil
	})
	if err != nil {
		return lakeHead{}, fmt.Errorf("list manifests: %w", err)
	}
	if last == "" {
		return lakeHead{}, nil
	}
	m, err := readManifest(ctx, store, last)
	if err != nil {
		return lakeHead{}, err
	}
	commit, err1 := pglogrepl.ParseLSN(m.LastCommitLSN)
	end, err2 := pglogrepl.ParseLSN(m.EndLSN)
	if err := errors.Join(err1, err2); err != nil {
		return lakeHead{}, fmt.Errorf("manifest %s: %w", last, err)
	}
	return lakeHead{Key: last, CommitLSN: commit, EndLSN: end, Manifest: m}, nil
}

// ReadHeadManifest returns the newest manifest in the lake, or nil when the
// lake has none.
func ReadHeadManifest(ctx context.Context, store Store) (*Manifest, error) {
	h, err := readHead(ctx, store)
	return h.Manifest, err
}

func readManifest(ctx context.Context, store Store, key string) (*Manifest, error) {
	b, err := getAll(ctx, store, key)
	if err != nil {
		return nil, fmt.Errorf("read manifest %s: %w", key, err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("parse manifest %s: %w", key, err)
	}
	return &m, nil
}

func getAll(ctx context.Context, store Store, key string) ([]byte, error) {
	r, err := store.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

func putJSON(ctx context.Context, store Store, key string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", key, err)
	}
	b = append(b, '\n')
	if err := store.Put(ctx, key, bytes.NewReader(b), int64(len(b))); err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	return nil
}

// exists reports whether key is in the store.
func exists(ctx context.Context, store Store, key string) (bool, error) {
	r, err := store.Get(ctx, key)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	r.Close()
	return true, nil
}
