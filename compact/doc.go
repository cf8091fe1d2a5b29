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
//   - compact never imports capture: they meet in the spool.
package compact
