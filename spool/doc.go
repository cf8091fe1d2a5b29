// Package spool is wal-cake's local buffer between the replication slot and
// the lake: bbolt segment files of whole, committed transactions.
//
// Invariants:
//
//   - A segment is written by one capture process (the spool's capture lock)
//     and is immutable once sealed. Its sealed name is
//     <first-commit-lsn>-<last-commit-lsn>.seg in fixed-width hex, so names
//     sort in commit order, and every transaction of a sealed segment
//     committed before every transaction of the next. An open segment is
//     named <n>.open.
//   - A transaction is complete only when its record is in the segment's txns
//     bucket (key: big-endian commit LSN). Messages without a record belong to
//     a transaction cut short by a crash; recovery deletes them before sealing.
//   - A transaction's messages are packed into chunks keyed (xid, chunk
//     number) in big-endian; a chunk is a run of records (length, change LSN,
//     (sub)transaction xid, raw pgoutput message, undecoded, in the protocol
//     1 layout). Many records go into one bbolt transaction and one fsync,
//     written in the background while the next group fills.
//   - A streamed transaction (protocol 2) goes to a <xid>-<n>.stream file of
//     its own as it arrives. Its commit seals the open segment,
//     then makes the stream file a sealed segment holding it alone; its
//     abort, a lost connection or a crash removes the file, and the server
//     sends it again. A rolled-back subtransaction is listed in the file's
//     aborted bucket and its changes are skipped when read.
//   - Each segment starts with a copy of every Relation message capture knew
//     when it opened the segment, so a segment decodes on its own.
//   - The spool never decides what the lake holds: the committed mark is
//     written by compaction after a lake commit, and read by capture to report
//     a flush position to the server that never passes the lake.
//   - bbolt never returns freed space to the file system, so space comes back
//     only when whole segment files are dropped after their lake commit.
//   - Reading a segment does not grow resident memory with its size: the
//     mapped pages of large chunks are released once read.
//   - Segments of the earlier per-message format (one bbolt value per
//     message) are still read and recovered.
package spool
