// Package capture streams a PostgreSQL logical replication slot (pgoutput)
// into the spool, and prepares a database for it (Setup).
//
// Invariants:
//
//   - Only whole committed transactions become complete in the spool; a
//     transaction cut short by a lost connection is dropped and sent again by
//     the server.
//   - A transaction whose commit LSN is at or before the newest one the spool
//     holds is skipped, so a kept spool is never double-counted.
//   - The flush position reported to the server never passes a change the
//     lake does not yet hold: it is the lake-committed position compaction
//     left in the spool, or, when the spool holds nothing at all, the
//     server's own position at a transaction boundary.
//   - Messages are stored raw; decoding tuples is compaction's work.
//   - One goroutine owns the replication connection.
package capture
