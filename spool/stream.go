package spool

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pglogrepl"
	bolt "go.etcd.io/bbolt"
)

// streamExt names the file of a streamed transaction in progress.
const streamExt = ".stream"

// stream is a transaction that the server streams before it commits
// (pgoutput protocol 2, streaming on): its chunks go to a file of its own as
// they arrive, a group at a time in the background. Its commit makes the
// file a sealed segment holding that one transaction; its abort, or a lost
// connection, removes the file.
type stream struct {
	path    string
	db      *bolt.DB
	txn     txnBuilder
	aborted []uint32 // subtransactions rolled back, not yet written
}

// InStream reports whether a stream block is open.
func (w *Writer) InStream() bool { return w.cur != nil }

// StreamStart opens a block of streamed changes of transaction xid. first
// says the server starts the transaction over: whatever was held for it is
// dropped.
func (w *Writer) StreamStart(xid uint32, first bool) error {
	if w.err != nil {
		return w.err
	}
	if w.cur != nil {
		return fmt.Errorf("spool: stream start of transaction %d inside the stream of %d", xid, w.cur.txn.xid)
	}
	s := w.streams[xid]
	if s != nil && first {
		if err := w.dropStream(xid, s); err != nil {
			return err
		}
		s = nil
	}
	if s == nil {
		if !first {
			return fmt.Errorf("spool: continued stream of transaction %d, whose start this writer never saw", xid)
		}
		path := filepath.Join(w.sp.dir, fmt.Sprintf("%010d-%020d%s", xid, time.Now().UnixNano(), streamExt))
		db, err := w.createFile(path)
		if err != nil {
			return fmt.Errorf("spool: create stream of transaction %d: %w", xid, err)
		}
		// Each group is synced as it is written, in the background like a
		// segment's: leaving them to the commit would make the commit wait
		// for the whole transaction to reach the disk.
		s = &stream{path: path, db: db, txn: txnBuilder{active: true, xid: xid}}
		w.streams[xid] = s
	}
	w.cur = s
	s.txn.start = len(w.streamGroup.buf)
	return nil
}

// StreamAppend adds one message of the open stream block: the message whose
// type byte is typ and whose content, after the in-stream xid, is body. xid
// is the (sub)transaction it belongs to.
func (w *Writer) StreamAppend(xid uint32, lsn pglogrepl.LSN, typ byte, body []byte) error {
	s := w.cur
	if s == nil {
		return ErrNoTxn
	}
	g := w.streamGroup
	g.buf = appendRecord(g.buf, lsn, xid, typ, body)
	s.txn.records++
	if len(g.buf) >= w.sp.opts.GroupBytes {
		return w.flushStream(s, nil)
	}
	return nil
}

// StreamStop closes the open stream block; its changes are written in the
// background.
func (w *Writer) StreamStop() error {
	s := w.cur
	if s == nil {
		return ErrNoTxn
	}
	w.cur = nil
	return w.flushStream(s, nil)
}

// flushStream hands the stream group to the background write into s's file,
// with the transaction record when final is set.
func (w *Writer) flushStream(s *stream, final *Txn) error {
	g := w.streamGroup
	s.txn.cutChunk(g)
	for _, sub := range s.aborted {
		var k [8]byte
		binary.BigEndian.PutUint32(k[:4], s.txn.xid)
		binary.BigEndian.PutUint32(k[4:], sub)
		g.aborted = append(g.aborted, k)
	}
	s.aborted = s.aborted[:0]
	if final != nil {
		final.Messages, final.chunks = s.txn.records, s.txn.chunks
		g.txns = append(g.txns, *final)
	}
	if g.empty() {
		return w.err
	}
	w.streamGroup = w.newGroup()
	s.txn.start = 0
	return w.handoff(s.db, s.path, g)
}

// StreamAbort rolls back subtransaction subxid of streamed transaction xid,
// or the whole transaction when subxid is xid: its changes are never read.
func (w *Writer) StreamAbort(xid, subxid uint32) error {
	if w.err != nil {
		return w.err
	}
	s := w.streams[xid]
	if s == nil {
		return nil // nothing of it was streamed to us
	}
	if w.cur == s {
		return fmt.Errorf("spool: stream abort of transaction %d inside its stream block", xid)
	}
	if subxid == xid || subxid == 0 {
		return w.dropStream(xid, s)
	}
	s.aborted = append(s.aborted, subxid)
	return nil
}

// StreamCommit completes streamed transaction xid. Every transaction that
// committed before it is sealed first, then its file becomes a sealed
// segment of its own, so that segments stay in commit order.
func (w *Writer) StreamCommit(xid uint32, commitLSN, endLSN pglogrepl.LSN, commitTime time.Time) error {
	s := w.streams[xid]
	if s == nil {
		return fmt.Errorf("spool: stream commit of transaction %d, whose stream this writer never saw", xid)
	}
	if w.cur != nil {
		return fmt.Errorf("spool: stream commit of transaction %d inside the stream block of %d", xid, w.cur.txn.xid)
	}
	if err := w.Seal(); err != nil {
		return err
	}
	final := Txn{Xid: xid, CommitLSN: commitLSN, EndLSN: endLSN, CommitTime: commitTime}
	if err := w.flushStream(s, &final); err != nil {
		return err
	}
	if err := w.wait(); err != nil {
		return err
	}
	delete(w.streams, xid)
	name := filepath.Base(s.path)
	err := s.db.Sync()
	if cerr := closeTrimmed(s.db, s.path); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(s.path)
		return fmt.Errorf("spool: write %s: %w", name, err)
	}
	if err := os.Rename(s.path, filepath.Join(w.sp.dir, sealedName(commitLSN, commitLSN))); err != nil {
		return fmt.Errorf("spool: seal %s: %w", name, err)
	}
	if err := syncDir(w.sp.dir); err != nil {
		return err
	}
	w.held = Position{CommitLSN: commitLSN, EndLSN: endLSN}
	return nil
}

// dropStream removes a streamed transaction's file.
func (w *Writer) dropStream(xid uint32, s *stream) error {
	werr := w.wait() // the write in progress may be into this file
	delete(w.streams, xid)
	if w.cur == s {
		w.cur = nil
		w.streamGroup.reset(2*w.sp.opts.GroupBytes + 64<<10)
	}
	s.db.Close()
	if err := os.Remove(s.path); err != nil && werr == nil {
		return fmt.Errorf("spool: remove %s: %w", filepath.Base(s.path), err)
	}
	return werr
}

// dropStreams removes every streamed transaction in progress.
func (w *Writer) dropStreams() {
	for xid, s := range w.streams {
		w.dropStream(xid, s)
	}
	w.cur = nil
	w.streamGroup.reset(2*w.sp.opts.GroupBytes + 64<<10)
}
