// Package spool is wal-cake's local buffer between the replication slot and
// the lake: bbolt segment files of whole, committed transactions.
//
// Invariants:
//
//   - A segment is written by one capture process (the spool's capture lock)
//     and is immutable once sealed. Its sealed name is
//     <first-commit-lsn>-<last-commit-lsn>.seg in fixed-width hex, so names
//     sort in commit order. An open segment is named <n>.open.
//   - A transaction is complete only when its record is in the segment's txns
//     bucket (key: big-endian commit LSN). Messages without a record belong to
//     a transaction cut short by a crash; Recover deletes them before sealing.
//   - Messages are keyed by (xid, ordinal) in big-endian, each value the change
//     record's LSN followed by the raw pgoutput message, undecoded.
//   - Each segment starts with a copy of every Relation message capture knew
//     when it opened the segment, so a segment decodes on its own.
//   - The spool never decides what the lake holds: the committed mark is
//     written by compaction after a lake commit, and read by capture to report
//     a flush position to the server that never passes the lake.
//   - bbolt never returns freed space to the file system, so space comes back
//     only when whole segment files are dropped after their lake commit.
package spool
