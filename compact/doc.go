// Package compact commits sealed spool segments to the lake: per table, typed
// ZSTD Parquet files, then a manifest, then the slot's advance, then the
// segments' removal.
//
// Invariants:
//
//   - The lake commit is the manifest, written after every data file and
//     schema version it names. A reader that follows manifests sees whole
//     commits only.
//   - Transactions at or before the newest manifest's last commit LSN are in
//     the lake already and are skipped, so a commit retried after a crash
//     never writes a change twice under the manifest.
//   - Object keys depend only on the spooled transactions (table, commit date,
//     first and last commit LSN, ordinal), so a retried commit rewrites the
//     same keys.
//   - The slot is advanced only to the end of a transaction that is in the
//     lake, or to the position capture scanned when nothing at all is left in
//     the spool.
//   - Segments are dropped only after their lake commit.
//   - Every change is a row (an UPDATE of the replica identity, and every
//     UPDATE under REPLICA IDENTITY FULL, a D row then a U row); a value is
//     either the one PostgreSQL sent, or exactly the one the lake holds as
//     the key's newest (the TOAST state store, toast.go, in step with the
//     lake head), or NULL and named in _unchanged. Never a placeholder.
//   - Backfill (backfill.go) writes R rows at one less than the consistent
//     point of a temporary slot's snapshot, so that they sort after every
//     transaction they hold and before every one they lack; its manifests
//     are never named <16 hex>.json and never move the head or the slot.
//   - compact never imports capture: they meet in the spool.
package compact
