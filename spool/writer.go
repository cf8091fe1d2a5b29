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

// ErrNoTxn is returned by Append and Commit outside a transaction.
var ErrNoTxn = errors.New("spool: no transaction in progress")

type pendingMsg struct {
	key []byte
	val []byte
}

// Writer appends committed transactions to the spool. There is one writer per
// spool at a time (it holds the spool's capture lock).
type Writer struct {
	sp   *Spool
	lock *Lock

	// The open segment; nil until the first message after a seal.
	db     *bolt.DB
	path   string
	opened time.Time
	first  pglogrepl.LSN
	last   pglogrepl.LSN
	txns   int

	relations map[uint32][]byte // newest Relation message per relation id

	pending      []pendingMsg
	pendingTxns  []Txn
	pendingBytes int

	inTxn   bool
	xid     uint32
	ordinal uint64

	held Position // newest transaction the spool holds
}

// OpenWriter takes the spool's capture lock, seals any segment a crashed
// capture left open (keeping only its complete transactions), and returns a
// writer positioned after the newest transaction the spool holds.
func (s *Spool) OpenWriter() (*Writer, error) {
	lock, err := s.Lock("capture")
	if err != nil {
		return nil, err
	}
	w := &Writer{sp: s, lock: lock, relations: map[uint32][]byte{}}
	if err := w.recover(); err != nil {
		lock.Unlock()
		return nil, err
	}
	return w, nil
}

// recover seals open segments left behind and finds the newest transaction
// held.
func (w *Writer) recover() error {
	open, err := w.sp.openSegments()
	if err != nil {
		return err
	}
	for _, path := range open {
		if err := recoverSegment(w.sp.dir, path); err != nil {
			return err
		}
	}
	segs, err := w.sp.Sealed()
	if err != nil {
		return err
	}
	if len(segs) > 0 {
		seg, err := OpenSegment(segs[len(segs)-1])
		if err != nil {
			return err
		}
		err = seg.Txns(func(t Txn) error {
			w.held = Position{CommitLSN: t.CommitLSN, EndLSN: t.EndLSN}
			return nil
		})
		seg.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// recoverSegment deletes the messages of transactions without a record and
// seals the segment, or removes it when it holds no complete transaction.
func recoverSegment(dir, path string) error {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return fmt.Errorf("spool: recover %s: %w", filepath.Base(path), err)
	}
	var first, last pglogrepl.LSN
	var n int
	err = db.Update(func(tx *bolt.Tx) error {
		complete := map[uint32]uint64{}
		if b := tx.Bucket(bucketTxns); b != nil {
			err := b.ForEach(func(k, v []byte) error {
				t, err := decodeTxn(k, v)
				if err != nil {
					return err
				}
				complete[t.Xid] = t.Messages
				if n == 0 {
					first = t.CommitLSN
				}
				last = t.CommitLSN
				n++
				return nil
			})
			if err != nil {
				return err
			}
		}
		b := tx.Bucket(bucketMsgs)
		if b == nil {
			return nil
		}
		c := b.Cursor()
		for k, _ := c.First(); k != nil; {
			xid := binary.BigEndian.Uint32(k[:4])
			count, ok := complete[xid]
			if ok && binary.BigEndian.Uint64(k[4:]) < count {
				k, _ = c.Next()
				continue
			}
			kk := append([]byte(nil), k...)
			if err := c.Delete(); err != nil {
				return err
			}
			k, _ = c.Seek(kk)
		}
		return nil
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("spool: recover %s: %w", filepath.Base(path), err)
	}
	if n == 0 {
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("spool: remove empty %s: %w", filepath.Base(path), err)
		}
		return syncDir(dir)
	}
	if err := os.Rename(path, filepath.Join(dir, sealedName(first, last))); err != nil {
		return fmt.Errorf("spool: seal recovered %s: %w", filepath.Base(path), err)
	}
	return syncDir(dir)
}

// Held returns the newest transaction the spool holds (zero if none); capture
// skips transactions that committed at or before it.
func (w *Writer) Held() Position { return w.held }

// Empty reports whether the writer holds no transaction in its open segment
// and none in progress.
func (w *Writer) Empty() bool { return w.txns == 0 && len(w.pendingTxns) == 0 && !w.inTxn }

// Relation remembers a Relation message so that every new segment starts with
// it. The caller also appends it to the transaction it arrived in.
func (w *Writer) Relation(relid uint32, msg []byte) {
	w.relations[relid] = append([]byte(nil), msg...)
}

// Begin starts a transaction.
func (w *Writer) Begin(xid uint32) {
	w.inTxn = true
	w.xid = xid
	w.ordinal = 0
}

// InTxn reports whether a transaction is in progress.
func (w *Writer) InTxn() bool { return w.inTxn }

// Append adds one message of the current transaction; msg is copied.
func (w *Writer) Append(lsn pglogrepl.LSN, msg []byte) error {
	if !w.inTxn {
		return ErrNoTxn
	}
	val := make([]byte, 8+len(msg))
	binary.BigEndian.PutUint64(val, uint64(lsn))
	copy(val[8:], msg)
	w.pending = append(w.pending, pendingMsg{key: msgKey(w.xid, w.ordinal), val: val})
	w.ordinal++
	w.pendingBytes += len(val) + 12
	if w.pendingBytes >= w.sp.opts.GroupBytes {
		return w.Flush()
	}
	return nil
}

// Commit completes the current transaction. It becomes durable at the next
// Flush (or seal).
func (w *Writer) Commit(xid uint32, commitLSN, endLSN pglogrepl.LSN, commitTime time.Time) error {
	if !w.inTxn {
		return ErrNoTxn
	}
	if xid != w.xid {
		return fmt.Errorf("spool: commit of transaction %d while %d is in progress", xid, w.xid)
	}
	w.pendingTxns = append(w.pendingTxns, Txn{Xid: xid, CommitLSN: commitLSN, EndLSN: endLSN, CommitTime: commitTime, Messages: w.ordinal})
	w.pendingBytes += txnRecordLen
	w.inTxn = false
	w.held = Position{CommitLSN: commitLSN, EndLSN: endLSN}
	if w.pendingBytes >= w.sp.opts.GroupBytes {
		return w.Flush()
	}
	return nil
}

// Abort forgets the transaction in progress (the connection was lost before
// its commit). Messages of it already flushed stay without a record: the
// server sends the transaction again under the same keys, or Recover deletes
// them.
func (w *Writer) Abort() {
	if !w.inTxn {
		return
	}
	keep := w.pending[:0]
	for _, m := range w.pending {
		if binary.BigEndian.Uint32(m.key[:4]) != w.xid {
			keep = append(keep, m)
		}
	}
	w.pending = keep
	w.inTxn = false
}

// Flush writes the buffered messages and transaction records in one bbolt
// transaction: one fsync for the whole group.
func (w *Writer) Flush() error {
	if len(w.pending) == 0 && len(w.pendingTxns) == 0 {
		return nil
	}
	if hook := w.sp.opts.BeforeWrite; hook != nil {
		if err := hook(); err != nil {
			return fmt.Errorf("spool: write %s: %w", filepath.Base(w.path), err)
		}
	}
	if w.db == nil {
		if err := w.openSegment(); err != nil {
			return err
		}
	}
	err := w.db.Update(func(tx *bolt.Tx) error {
		msgs := tx.Bucket(bucketMsgs)
		msgs.FillPercent = 1.0 // append-only keys: pack pages full
		for _, m := range w.pending {
			if err := msgs.Put(m.key, m.val); err != nil {
				return err
			}
		}
		txns := tx.Bucket(bucketTxns)
		txns.FillPercent = 1.0
		for _, t := range w.pendingTxns {
			k, v := encodeTxn(t)
			if err := txns.Put(k, v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("spool: write %s: %w", filepath.Base(w.path), err)
	}
	for _, t := range w.pendingTxns {
		if w.txns == 0 {
			w.first = t.CommitLSN
		}
		w.last = t.CommitLSN
		w.txns++
	}
	clear(w.pending)
	w.pending = w.pending[:0]
	w.pendingTxns = w.pendingTxns[:0]
	w.pendingBytes = 0
	return nil
}

func (w *Writer) openSegment() error {
	w.path = filepath.Join(w.sp.dir, fmt.Sprintf("%020d%s", time.Now().UnixNano(), openExt))
	db, err := bolt.Open(w.path, 0o600, &bolt.Options{
		Timeout:        5 * time.Second,
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
	})
	if err != nil {
		return fmt.Errorf("spool: create segment: %w", err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketMeta, bucketRelations, bucketMsgs, bucketTxns} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		if err := meta.Put([]byte("format"), []byte("1")); err != nil {
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
		os.Remove(w.path)
		return fmt.Errorf("spool: create segment: %w", err)
	}
	w.db = db
	w.opened = time.Now()
	w.txns = 0
	return nil
}

// SealDue reports whether the open segment should be sealed at this
// transaction boundary (size or age reached).
func (w *Writer) SealDue() bool {
	if w.inTxn || w.db == nil || (w.txns == 0 && len(w.pendingTxns) == 0) {
		return false
	}
	if time.Since(w.opened) >= w.sp.opts.SegmentMaxAge {
		return true
	}
	fi, err := os.Stat(w.path)
	return err == nil && fi.Size()+int64(w.pendingBytes) >= w.sp.opts.SegmentMaxBytes
}

// Seal flushes and seals the open segment so compaction can read it. It must
// be called between transactions. A segment with no complete transaction is
// removed instead.
func (w *Writer) Seal() error {
	if w.inTxn {
		return fmt.Errorf("spool: seal inside transaction %d", w.xid)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if w.db == nil {
		return nil
	}
	path := w.path
	err := w.db.Close()
	w.db = nil
	if err != nil {
		return fmt.Errorf("spool: close %s: %w", filepath.Base(path), err)
	}
	if w.txns == 0 {
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("spool: remove empty %s: %w", filepath.Base(path), err)
		}
		return syncDir(w.sp.dir)
	}
	if err := os.Rename(path, filepath.Join(w.sp.dir, sealedName(w.first, w.last))); err != nil {
		return fmt.Errorf("spool: seal %s: %w", filepath.Base(path), err)
	}
	w.txns = 0
	return syncDir(w.sp.dir)
}

// Close drops a transaction in progress, seals the open segment and releases
// the capture lock.
func (w *Writer) Close() error {
	w.Abort()
	err := w.Seal()
	if uerr := w.lock.Unlock(); err == nil {
		err = uerr
	}
	return err
}
