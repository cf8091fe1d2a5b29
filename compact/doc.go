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
//   - compact never imports capture: they meet in the spool.
package compact
