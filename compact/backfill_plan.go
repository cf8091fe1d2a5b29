package compact

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// prepare finds the table's run to continue, or starts one.
func (b *backfiller) prepare(ctx context.Context, t *bfTable) error {
	last, err := latestRun(ctx, b.cfg.Store, t.name)
	if err != nil {
		return err
	}
	mode := modeCTID
	var keyNames []string
	if t.keyed() {
		mode = modeKey
		for _, k := range t.keys {
			keyNames = append(keyNames, k.name)
		}
	}
	if last != nil && last.State == runRunning && last.Mode == modeCTID {
		// A keyless table's rows must all come from one snapshot, which
		// died with the process that took it: finish its commit if it
		// happened, else undo it and start over.
		if done, err := b.settleCTIDRun(ctx, last); err != nil {
			return err
		} else if !done {
			last.State = runAbandoned
		}
	}
	// A run of a table dropped and re-created since (another relation OID)
	// is not this table's.
	sameTable := last != nil && (last.RelationOID == 0 || last.RelationOID == t.oid)
	switch {
	case sameTable && last.State == runRunning && last.Mode == mode && slices.Equal(last.KeyColumns, keyNames):
		t.run = last
		b.log.Info("resuming backfill", "table", t.name, "run", last.Run)
		return nil
	case last != nil && last.State == runRunning:
		// The key (or the table) changed since: start over. Its done
		// chunks stay in the lake and are correct; they are just older.
		if err := b.abandonKeyRun(ctx, last); err != nil {
			return err
		}
	case sameTable && last.State == runDone && !b.cfg.Again:
		t.run, t.skipped, t.planDone = last, true, true
		t.ended.Store(time.Now().UnixNano())
		b.log.Info("table was backfilled before; skipping (use --again to backfill it again)", "table", t.name, "run", last.Run)
		return nil
	}
	t.run = &bfRunRecord{
		Format: 1, Table: t.name, RelationOID: t.oid, Run: nextRunID(last), State: runRunning, Mode: mode,
		KeyColumns: keyNames, ChunkRows: b.cfg.ChunkRows, StartedAt: time.Now().UTC().Truncate(time.Millisecond),
	}
	if err := putJSON(ctx, b.cfg.Store, runKey(t.name, t.run.Run), t.run); err != nil {
		return err
	}
	b.log.Info("starting backfill", "table", t.name, "run", t.run.Run, "mode", mode, "estimated_rows", t.estRows)
	return nil
}

// abandonKeyRun gives up a key-mode run that cannot be continued: its
// chunks in flight are finished or undone (no orphan file stays), its done
// chunks stay.
func (b *backfiller) abandonKeyRun(ctx context.Context, r *bfRunRecord) error {
	if r.Mode == modeKey {
		chunks, err := listChunks(ctx, b.cfg.Store, r.Table, r.Run)
		if err != nil {
			return err
		}
		for _, n := range slices.Sorted(maps.Keys(chunks)) {
			if cs := chunks[n]; cs.writing && !cs.done {
				if _, err := finishOrUndoChunk(ctx, b.cfg.Store, r.Table, r.Run, n); err != nil {
					return err
				}
			}
		}
	}
	r.State = runAbandoned
	b.log.Warn("abandoning a backfill whose table or key changed since it started; a new one starts", "table", r.Table, "run", r.Run)
	return putJSON(ctx, b.cfg.Store, runKey(r.Table, r.Run), r)
}

// settleCTIDRun finishes an interrupted keyless run whose manifest was
// written, or deletes the files it uploaded. It reports whether the run is
// done.
func (b *backfiller) settleCTIDRun(ctx context.Context, r *bfRunRecord) (bool, error) {
	store := b.cfg.Store
	if r.Manifest != "" {
		ok, err := exists(ctx, store, r.Manifest)
		if err != nil {
			return false, fmt.Errorf("look up %s: %w", r.Manifest, err)
		}
		if ok {
			now := time.Now().UTC().Truncate(time.Millisecond)
			r.State, r.FinishedAt = runDone, &now
			return true, putJSON(ctx, store, runKey(r.Table, r.Run), r)
		}
	}
	chunks, err := listChunks(ctx, store, r.Table, r.Run)
	if err != nil {
		return false, err
	}
	undone := 0
	for _, n := range slices.Sorted(maps.Keys(chunks)) {
		if !chunks[n].writing {
			continue
		}
		var w bfChunkCommit
		if err := getJSON(ctx, store, chunkKey(r.Table, r.Run, n, "writing"), &w); err != nil {
			return false, err
		}
		for _, k := range w.Keys {
			if err := store.Delete(ctx, k); err != nil {
				return false, fmt.Errorf("undo interrupted backfill of %s: delete %s: %w", r.Table, k, err)
			}
		}
		undone++
	}
	b.log.Warn("a keyless table's backfill was interrupted; its files are deleted and it starts over in a new snapshot",
		"table", r.Table, "run", r.Run, "chunks_undone", undone)
	r.State = runAbandoned
	return false, putJSON(ctx, store, runKey(r.Table, r.Run), r)
}

// send hands a chunk to the workers.
func send(ctx context.Context, work chan<- *bfChunk, ch *bfChunk) error {
	ch.table.mu.Lock()
	ch.table.planned++
	ch.table.mu.Unlock()
	ch.table.chunksTotal.Add(1)
	select {
	case work <- ch:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// planKeyed hands out the chunks of a keyed table: first those an earlier
// process planned and did not finish, then new key ranges after the last
// planned one.
func (b *backfiller) planKeyed(ctx context.Context, conn *pgx.Conn, t *bfTable, work chan<- *bfChunk) error {
	store, run := b.cfg.Store, t.run.Run
	chunks, err := listChunks(ctx, store, t.name, run)
	if err != nil {
		return err
	}
	var last *bfChunkPlan
	numbers := slices.Sorted(maps.Keys(chunks))
	for _, n := range numbers {
		cs := chunks[n]
		if !cs.planned {
			continue // an intent without a plan cannot happen; ignore it
		}
		done := cs.done
		if !done && cs.writing {
			if done, err = finishOrUndoChunk(ctx, store, t.name, run, n); err != nil {
				return err
			}
		}
		var plan bfChunkPlan
		if !done || n == numbers[len(numbers)-1] {
			if err := getJSON(ctx, store, chunkKey(t.name, run, n, ""), &plan); err != nil {
				return err
			}
			last = &plan
		}
		if done {
			t.mu.Lock()
			t.planned++
			t.finished++
			t.mu.Unlock()
			t.chunksTotal.Add(1)
			t.chunksDone.Add(1)
			t.resumed.Add(1)
			continue
		}
		if err := send(ctx, work, &bfChunk{table: t, plan: plan}); err != nil {
			return err
		}
	}
	if r := t.resumed.Load(); r > 0 || len(numbers) > 0 {
		b.log.Info("resuming: chunks already in the lake are skipped", "table", t.name, "run", run, "chunks_done", r, "chunks_planned", len(numbers))
	}

	n, lo := 0, []string(nil)
	if last != nil {
		n, lo = last.Chunk+1, last.Hi
	}
	// Bounds from a sample of the table's blocks when it is large, else (and
	// once the sample's bounds are used up) from a walk over the key index.
	sampled, err := t.sampledBounds(ctx, conn, lo, b.cfg.ChunkRows)
	if err != nil {
		return err
	}
	for last == nil || last.Hi != nil {
		var hi []string
		if len(sampled) > 0 {
			hi, sampled = sampled[0], sampled[1:]
		} else if !t.sampledToEnd {
			if hi, err = t.nextBound(ctx, conn, lo, b.cfg.ChunkRows); err != nil {
				return err
			}
		}
		plan := bfChunkPlan{Chunk: n, Lo: lo, Hi: hi}
		if err := putJSON(ctx, store, chunkKey(t.name, run, n, ""), plan); err != nil {
			return err
		}
		b.failpoint(FailBackfillAfterPlan)
		if err := send(ctx, work, &bfChunk{table: t, plan: plan}); err != nil {
			return err
		}
		last = &plan
		n, lo = n+1, hi
	}
	return b.planFinished(ctx, t)
}

// planCTID takes a keyless table's one snapshot and hands out its page
// ranges. It waits until every chunk has read its rows before it lets go of
// the snapshot.
func (b *backfiller) planCTID(ctx context.Context, conn *pgx.Conn, t *bfTable, work chan<- *bfChunk) error {
	exp, err := backfillConnect(ctx, b.cfg.ConnString, true)
	if err != nil {
		return err
	}
	t.exporter = exp
	consistent, name, err := createSnapshotSlot(ctx, exp.PgConn(), fmt.Sprintf("walcake_bf_%s_snap_%d", b.slotTag, t.oid), "export")
	if err != nil {
		return fmt.Errorf("backfill %s: %w", t.name, err)
	}
	var us, pages int64
	err = conn.QueryRow(ctx, `SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8,
		pg_relation_size($1::oid) / current_setting('block_size')::int8`, t.oid).Scan(&us, &pages)
	if err != nil {
		return fmt.Errorf("backfill %s: read the table's size: %w", t.name, err)
	}
	t.snapLSN, t.snapName, t.snapAt = consistent, name, time.UnixMicro(us).UTC()
	commit := snapshotLSN(consistent)
	t.run.SnapshotLSN, t.run.SnapshotAt = consistent.String(), t.snapAt
	t.run.Manifest = backfillManifestKey(commit, t.name, t.run.Run, -1)
	if err := putJSON(ctx, b.cfg.Store, runKey(t.name, t.run.Run), t.run); err != nil {
		return err
	}

	perPage := int64(100)
	if t.estRows > 0 && t.relpages > 0 {
		perPage = max(1, t.estRows/t.relpages)
	}
	step := max(1, b.cfg.ChunkRows/perPage)
	t.readsLeft = make(chan struct{})
	if t.relkind == 'p' {
		// A partitioned table has no ctid of its own: one chunk.
		if err := send(ctx, work, &bfChunk{table: t, plan: bfChunkPlan{Chunk: 0, Whole: true}}); err != nil {
			return err
		}
	} else {
		for n, from := 0, int64(0); ; n, from = n+1, from+step {
			plan := bfChunkPlan{Chunk: n, FromPage: &from}
			if to := from + step; to < pages {
				plan.ToPage = &to
			}
			if err := send(ctx, work, &bfChunk{table: t, plan: plan}); err != nil {
				return err
			}
			if plan.ToPage == nil {
				break
			}
		}
	}
	if err := b.planFinished(ctx, t); err != nil {
		return err
	}
	select {
	case <-t.readsLeft:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	exp.Close(context.Background())
	t.exporter = nil
	return nil
}

// readFinished counts a keyless table's chunk as read; after the last one
// the snapshot may go.
func (t *bfTable) readFinished() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.reads++
	if t.planDone && t.reads == t.planned && !t.readsClosed {
		t.readsClosed = true
		close(t.readsLeft)
	}
}

func (b *backfiller) planFinished(ctx context.Context, t *bfTable) error {
	t.mu.Lock()
	t.planDone = true
	last := t.finished == t.planned && !t.finalized
	if last {
		t.finalized = true
	}
	if t.readsLeft != nil && t.reads == t.planned && !t.readsClosed {
		t.readsClosed = true
		close(t.readsLeft)
	}
	t.mu.Unlock()
	if last {
		return b.finalize(ctx, t)
	}
	return nil
}

func (b *backfiller) chunkFinished(ctx context.Context, t *bfTable) error {
	t.chunksDone.Add(1)
	t.mu.Lock()
	t.finished++
	last := t.planDone && t.finished == t.planned && !t.finalized
	if last {
		t.finalized = true
	}
	t.mu.Unlock()
	if last {
		return b.finalize(ctx, t)
	}
	return nil
}
