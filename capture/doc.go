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
//   - Messages are stored raw; decoding tuples is compaction's work. No
//     change costs an allocation: the stream is read in bulk (SO_RCVLOWAT)
//     and messages are copied once, into the spool's group.
//   - With protocol 2 (PostgreSQL 14+) a large transaction is streamed: its
//     chunks reach the spool as the server decodes them, and it becomes
//     complete only at its Stream Commit; a Stream Abort drops it (or one
//     of its subtransactions). Its messages are stored in the protocol 1
//     layout, the in-stream xid kept beside each.
//   - One goroutine owns the replication connection.
package capture
