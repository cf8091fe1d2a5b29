package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pglogrepl"
	bolt "go.etcd.io/bbolt"
)

// ErrNoTxn is returned by Append and Commit outside a transaction, and by
// the stream methods outside a stream.
var ErrNoTxn = errors.New("spool: no transaction in progress")

// Writer appends committed transactions to the spool. There is one writer per
// spool at a time (it holds the spool's capture lock). It is not safe for
// concurrent use; it writes each full group of records in the background
// while the caller fills the next one.
type Writer struct {
	sp   *Spool
	lock *Lock

	// The open segment: its file is created by its first write.
	seg         *bolt.DB
	segPath     string
	segGroup    *group // records bound for it, not yet handed to the background write
	segTxns     int    // complete transactions in it, written or pending
	segBytes    int64  // bytes of records in it, written or pending
	segStarted  time.Time
	first, last pglogrepl.LSN

	relations map[uint32][]byte // newest Relation message per relation id

	txn txnBuilder // the (not streamed) transaction in progress

	streams     map[uint32]*stream // streamed transactions in progress, by xid
	cur         *stream            // the one whose stream block is open
	streamGroup *group

	held Position // newest transaction the spool holds

	// At most one group is written in the background at a time.
	inflight      chan error
	inflightGroup *group
	free          []*group
	err           error // the first failed write: the writer is unusable
}

// OpenWriter takes the spool's capture lock, seals any segment a crashed
// capture left open (keeping only its complete transactions), removes the
// files of streamed transactions it left unfinished, and returns a writer
// positioned after the newest transaction the spool holds.
func (s *Spool) OpenWriter() (*Writer, error) {
	lock, err := s.Lock("capture")
	if err != nil {
		return nil, err
	}
	w := &Writer{sp: s, lock: lock, relations: map[uint32][]byte{}, streams: map[uint32]*stream{}}
	if err := w.recover(); err != nil {
		lock.Unlock()
		return nil, err
	}
	w.segGroup = w.newGroup()
	w.streamGroup = w.newGroup()
	return w, nil
}

// Held returns the newest transaction the spool holds (zero if none); capture
// skips transactions that committed at or before it.
func (w *Writer) Held() Position { return w.held }

// Empty reports whether the writer holds no transaction in its open segment
// and none in progress.
func (w *Writer) Empty() bool { return w.segTxns == 0 && !w.txn.active }

// Relation remembers a Relation message so that every new segment starts with
// it. The caller also appends it to the transaction it arrived in.
func (w *Writer) Relation(relid uint32, msg []byte) {
	w.relations[relid] = append([]byte(nil), msg...)
}

// Begin starts a transaction.
func (w *Writer) Begin(xid uint32) {
	w.abortTxn()
	w.txn = txnBuilder{active: true, xid: xid, start: len(w.segGroup.buf)}
}

// InTxn reports whether a transaction is in progress.
func (w *Writer) InTxn() bool { return w.txn.active }

// Append adds one message of the current transaction; msg is copied.
func (w *Writer) Append(lsn pglogrepl.LSN, msg []byte) error {
	if !w.txn.active {
		return ErrNoTxn
	}
	if len(msg) == 0 {
		return nil
	}
	g := w.segGroup
	if w.segBytes == 0 {
		w.segStarted = time.Now()
	}
	n := len(g.buf)
	g.buf = appendRecord(g.buf, lsn, w.txn.xid, msg[0], msg[1:])
	w.segBytes += int64(len(g.buf) - n)
	w.txn.records++
	if len(g.buf) >= w.sp.opts.GroupBytes {
		return w.flushSegment()
	}
	return nil
}

// Commit completes the current transaction. It is written with its group, in
// the background; Flush and Seal wait until it is durable.
func (w *Writer) Commit(xid uint32, commitLSN, endLSN pglogrepl.LSN, commitTime time.Time) error {
	if !w.txn.active {
		return ErrNoTxn
	}
	if xid != w.txn.xid {
		return fmt.Errorf("spool: commit of transaction %d while %d is in progress", xid, w.txn.xid)
	}
	g := w.segGroup
	w.txn.cutChunk(g)
	g.txns = append(g.txns, Txn{Xid: xid, CommitLSN: commitLSN, EndLSN: endLSN, CommitTime: commitTime,
		Messages: w.txn.records, chunks: w.txn.chunks})
	w.txn = txnBuilder{}
	if w.segTxns == 0 {
		w.first = commitLSN
		if w.segBytes == 0 {
			w.segStarted = time.Now()
		}
	}
	w.last = commitLSN
	w.segTxns++
	w.segBytes += txnRecordLen
	w.held = Position{CommitLSN: commitLSN, EndLSN: endLSN}
	if len(g.buf) >= w.sp.opts.GroupBytes {
		return w.flushSegment()
	}
	return nil
}

// Abort forgets the transaction in progress and every streamed transaction
// (the connection was lost: the server sends them again, whole). Chunks of
// the transaction already written are deleted with the next write.
func (w *Writer) Abort() {
	w.abortTxn()
	w.dropStreams()
}

func (w *Writer) abortTxn() {
	if !w.txn.active {
		return
	}
	g := w.segGroup
	w.segBytes -= int64(len(g.buf) - w.txn.start)
	g.buf = g.buf[:w.txn.start]
	if w.txn.chunks > 0 {
		g.stale = append(g.stale, w.txn.xid)
	}
	w.txn = txnBuilder{}
}

// Flush makes every complete transaction durable: it writes what is
// buffered and waits for the writes in progress.
func (w *Writer) Flush() error {
	if err := w.flushSegment(); err != nil {
		return err
	}
	return w.wait()
}

// flushSegment hands the segment's group to the background write.
func (w *Writer) flushSegment() error {
	g := w.segGroup
	if g.empty() {
		return w.err
	}
	if w.seg == nil {
		if err := w.openSegment(); err != nil {
			return err
		}
	}
	if w.txn.active {
		w.txn.cutChunk(g)
	}
	w.segGroup = w.newGroup()
	w.txn.start = 0
	return w.handoff(w.seg, w.segPath, g)
}

func (w *Writer) newGroup() *group {
	if n := len(w.free); n > 0 {
		g := w.free[n-1]
		w.free = w.free[:n-1]
		return g
	}
	return &group{buf: make([]byte, 0, w.sp.opts.GroupBytes+64<<10)}
}

// handoff starts writing g into db in the background, after the write in
// progress ends.
func (w *Writer) handoff(db *bolt.DB, path string, g *group) error {
	if err := w.wait(); err != nil {
		return err
	}
	done := make(chan error, 1)
	w.inflight, w.inflightGroup = done, g
	hook := w.sp.opts.BeforeWrite
	go func() {
		if hook != nil {
			if err := hook(); err != nil {
				done <- fmt.Errorf("spool: write %s: %w", filepath.Base(path), err)
				return
			}
		}
		if err := writeGroup(db, g); err != nil {
			done <- fmt.Errorf("spool: write %s: %w", filepath.Base(path), err)
			return
		}
		done <- nil
	}()
	return nil
}

// wait waits for the background write, if any. A failed write makes the
// writer unusable: every later call returns its error.
func (w *Writer) wait() error {
	if w.inflight != nil {
		err := <-w.inflight
		w.inflight = nil
		w.inflightGroup.reset(2*w.sp.opts.GroupBytes + 64<<10)
		w.free = append(w.free, w.inflightGroup)
		w.inflightGroup = nil
		if err != nil && w.err == nil {
			w.err = err
		}
	}
	return w.err
}

func openBolt(path string) (*bolt.DB, error) {
	return bolt.Open(path, 0o600, &bolt.Options{
		Timeout:        5 * time.Second,
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
	})
}

// createFile creates a bbolt file of the chunked format with its buckets and
// the relations snapshot.
func (w *Writer) createFile(path string) (*bolt.DB, error) {
	db, err := openBolt(path)
	if err != nil {
		return nil, err
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketMeta, bucketRelations, bucketMsgs, bucketTxns} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		if err := tx.Bucket(bucketMeta).Put(keyFormat, []byte(formatChunked)); err != nil {
			return err
		}
		rels := tx.Bucket(bucketRelations)
		for relid, msg := range w.relations {
			if err := rels.Put(binary.BigEndian.AppendUint32(nil, relid), msg); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		os.Remove(path)
		return nil, err
	}
	return db, nil
}

func (w *Writer) openSegment() error {
	path := filepath.Join(w.sp.dir, fmt.Sprintf("%020d%s", time.Now().UnixNano(), openExt))
	db, err := w.createFile(path)
	if err != nil {
		return fmt.Errorf("spool: create segment: %w", err)
	}
	w.seg, w.segPath = db, path
	return nil
}

// closeTrimmed closes a bbolt file and cuts the space bbolt allocated ahead
// of its pages, so that a sealed file's size is what it holds.
func closeTrimmed(db *bolt.DB, path string) error {
	var size int64
	if err := db.View(func(tx *bolt.Tx) error { size = tx.Size(); return nil }); err != nil {
		db.Close()
		return err
	}
	if err := db.Close(); err != nil {
		return err
	}
	if fi, err := os.Stat(path); err == nil && size > 0 && fi.Size() > size {
		return os.Truncate(path, size)
	}
	return nil
}

// SealDue reports whether the open segment should be sealed at this
// transaction boundary (size or age reached).
func (w *Writer) SealDue() bool {
	if w.txn.active || w.segTxns == 0 {
		return false
	}
	return w.segBytes >= w.sp.opts.SegmentMaxBytes || time.Since(w.segStarted) >= w.sp.opts.SegmentMaxAge
}

// Seal writes and seals the open segment so compaction can read it. It must
// be called between transactions. A segment with no complete transaction is
// removed instead.
func (w *Writer) Seal() error {
	if w.txn.active {
		return fmt.Errorf("spool: seal inside transaction %d", w.txn.xid)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	w.segGroup.stale = w.segGroup.stale[:0]
	txns := w.segTxns
	w.segTxns, w.segBytes = 0, 0
	if w.seg == nil {
		return nil
	}
	path := w.segPath
	err := closeTrimmed(w.seg, path)
	w.seg = nil
	if err != nil {
		return fmt.Errorf("spool: close %s: %w", filepath.Base(path), err)
	}
	if txns == 0 {
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("spool: remove empty %s: %w", filepath.Base(path), err)
		}
		return syncDir(w.sp.dir)
	}
	if err := os.Rename(path, filepath.Join(w.sp.dir, sealedName(w.first, w.last))); err != nil {
		return fmt.Errorf("spool: seal %s: %w", filepath.Base(path), err)
	}
	return syncDir(w.sp.dir)
}

// Close drops the transactions in progress, seals the open segment and
// releases the capture lock. After a failed write it leaves the segment
// open for the next writer to recover.
func (w *Writer) Close() error {
	w.Abort()
	err := w.Seal()
	if err != nil {
		w.wait()
		if w.seg != nil {
			w.seg.Close()
			w.seg = nil
		}
	}
	if uerr := w.lock.Unlock(); err == nil {
		err = uerr
	}
	return err
}
