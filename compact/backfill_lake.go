package compact

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
)

// A backfill's progress lives in the lake, so that a killed run, or the next
// one on a fresh container, continues where it stopped:
//
//	_walcake/backfill/runs/<table>/<run>.json                 one per run: mode, key, state
//	_walcake/backfill/chunks/<table>/<run>/<n>.json           the chunk's range, written before it is read
//	_walcake/backfill/chunks/<table>/<run>/<n>.writing.json   intent: its data object and manifest, before the upload
//	_walcake/backfill/chunks/<table>/<run>/<n>.done.json      after its manifest: the chunk is in the lake
//
// Runs are numbered 000001, 000002, ... per table; chunks 00000000, ... per
// run, in key order. Listing a run's chunk prefix tells which chunks are
// planned, in flight or done without reading them.
const (
	backfillRunsPrefix   = "_walcake/backfill/runs/"
	backfillChunksPrefix = "_walcake/backfill/chunks/"
)

// Run states.
const (
	runRunning   = "running"
	runDone      = "done"
	runAbandoned = "abandoned" // a keyless table's run cut short: its files were deleted
)

// Backfill modes.
const (
	modeKey  = "key"  // key ranges, one snapshot per chunk, a lake commit per chunk
	modeCTID = "ctid" // ctid page ranges of one snapshot, one lake commit for the table
)

// bfRunRecord is _walcake/backfill/runs/<table>/<run>.json.
type bfRunRecord struct {
	Format      int        `json:"format"`
	Table       string     `json:"table"`
	RelationOID uint32     `json:"relation_oid,omitempty"` // pg_class OID: a re-created table is another table
	Run         string     `json:"run"`
	State       string     `json:"state"`
	Mode        string     `json:"mode"`
	KeyColumns  []string   `json:"key_columns,omitempty"`
	ChunkRows   int64      `json:"chunk_rows"`
	StartedAt   time.Time  `json:"started_at"`
	FinishedAt  *time.Time `json:"finished_at,omitempty"`
	// The snapshot of a ctid-mode run, shared by all its chunks, and the
	// manifest that commits them together.
	SnapshotLSN string    `json:"snapshot_lsn,omitempty"`
	SnapshotAt  time.Time `json:"snapshot_at,omitzero"`
	Manifest    string    `json:"manifest,omitempty"`
	// Figures, when done.
	Chunks int   `json:"chunks,omitempty"`
	Rows   int64 `json:"rows,omitempty"` // ctid mode; key mode counts only the last process's rows
}

// bfChunkPlan is <n>.json: the chunk's range. Key bounds are the key
// columns' text: Lo exclusive, Hi inclusive, absent when unbounded. Page
// bounds are ctid block numbers, From inclusive, To exclusive.
type bfChunkPlan struct {
	Chunk    int      `json:"chunk"`
	Lo       []string `json:"lo,omitempty"`
	Hi       []string `json:"hi,omitempty"`
	FromPage *int64   `json:"from_page,omitempty"`
	ToPage   *int64   `json:"to_page,omitempty"`
	Whole    bool     `json:"whole,omitempty"` // the whole table in one chunk (a keyless partitioned table)
}

// bfChunkCommit is <n>.writing.json (before the upload) and <n>.done.json
// (after the manifest).
type bfChunkCommit struct {
	Chunk       int       `json:"chunk"`
	SnapshotLSN string    `json:"snapshot_lsn"` // the consistent point of the chunk's snapshot
	CommitLSN   string    `json:"commit_lsn"`   // the rows' _commit_lsn: one before it
	SnapshotAt  time.Time `json:"snapshot_at"`
	Rows        int64     `json:"rows"`
	Bytes       int64     `json:"bytes"`
	Keys        []string  `json:"keys,omitempty"`
	Manifest    string    `json:"manifest,omitempty"`
}

func runKey(table, run string) string { return backfillRunsPrefix + table + "/" + run + ".json" }

func chunkPrefix(table, run string) string { return backfillChunksPrefix + table + "/" + run + "/" }

func chunkKey(table, run string, n int, kind string) string {
	k := fmt.Sprintf("%s%08d", chunkPrefix(table, run), n)
	if kind != "" {
		k += "." + kind
	}
	return k + ".json"
}

// backfillManifestKey names a backfill commit. It is never of the form
// <16 hex>.json, so it never counts as the stream's head.
func backfillManifestKey(commit pglogrepl.LSN, table, run string, n int) string {
	k := fmt.Sprintf("%s%s-backfill-%s-%s", manifestPrefix, lsnHex(commit), table, run)
	if n >= 0 {
		k += fmt.Sprintf("-%08d", n)
	}
	return k + ".json"
}

// latestRun returns the newest run record of a table, or nil.
func latestRun(ctx context.Context, store Store, table string) (*bfRunRecord, error) {
	prefix := backfillRunsPrefix + table + "/"
	var last string
	err := store.List(ctx, prefix, func(o Object) error {
		name := strings.TrimPrefix(o.Key, prefix)
		if !strings.Contains(name, "/") && strings.HasSuffix(name, ".json") {
			last = o.Key
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list backfill runs of %s: %w", table, err)
	}
	if last == "" {
		return nil, nil
	}
	var r bfRunRecord
	if err := getJSON(ctx, store, last, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// nextRunID is the run after r (or the first).
func nextRunID(r *bfRunRecord) string {
	n := 0
	if r != nil {
		n, _ = strconv.Atoi(r.Run)
	}
	return fmt.Sprintf("%06d", n+1)
}

// chunkState is what a listing of a run's chunk prefix shows about a chunk.
type chunkState struct {
	planned, writing, done bool
}

// listChunks returns the state of every chunk of a run, by number.
func listChunks(ctx context.Context, store Store, table, run string) (map[int]*chunkState, error) {
	prefix := chunkPrefix(table, run)
	out := map[int]*chunkState{}
	err := store.List(ctx, prefix, func(o Object) error {
		name, ok := strings.CutSuffix(strings.TrimPrefix(o.Key, prefix), ".json")
		if !ok {
			return nil
		}
		num, kind, _ := strings.Cut(name, ".")
		n, err := strconv.Atoi(num)
		if err != nil || len(num) != 8 {
			return nil
		}
		cs := out[n]
		if cs == nil {
			cs = &chunkState{}
			out[n] = cs
		}
		switch kind {
		case "":
			cs.planned = true
		case "writing":
			cs.writing = true
		case "done":
			cs.done = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list backfill chunks of %s run %s: %w", table, run, err)
	}
	return out, nil
}

func getJSON(ctx context.Context, store Store, key string, v any) error {
	b, err := getAll(ctx, store, key)
	if err != nil {
		return fmt.Errorf("read %s: %w", key, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("parse %s: %w", key, err)
	}
	return nil
}

// finishOrUndoChunk settles a key-mode chunk that has an intent but no done
// record: when its manifest exists the chunk is in the lake and gets its
// done record; otherwise its data objects are deleted and it is read again.
// It reports whether the chunk is done.
func finishOrUndoChunk(ctx context.Context, store Store, table, run string, n int) (bool, error) {
	var w bfChunkCommit
	if err := getJSON(ctx, store, chunkKey(table, run, n, "writing"), &w); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		return false, err
	}
	if w.Manifest != "" {
		ok, err := exists(ctx, store, w.Manifest)
		if err != nil {
			return false, fmt.Errorf("look up %s: %w", w.Manifest, err)
		}
		if ok {
			return true, putJSON(ctx, store, chunkKey(table, run, n, "done"), w)
		}
	}
	for _, k := range w.Keys {
		if err := store.Delete(ctx, k); err != nil {
			return false, fmt.Errorf("undo interrupted backfill chunk: delete %s: %w", k, err)
		}
	}
	return false, nil
}

// uploadBackfillFile uploads a chunk's local Parquet file.
func uploadBackfillFile(ctx context.Context, store Store, path, key string, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("upload %s: %w", key, err)
	}
	defer f.Close()
	if err := store.Put(ctx, key, f, size); err != nil {
		return fmt.Errorf("upload %s: %w", key, err)
	}
	return nil
}
