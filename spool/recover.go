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

// recover removes the files of unfinished streamed transactions, seals open
// segments left behind and finds the newest transaction held.
func (w *Writer) recover() error {
	streams, err := filepath.Glob(filepath.Join(w.sp.dir, "*"+streamExt))
	if err != nil {
		return fmt.Errorf("spool: list streams: %w", err)
	}
	for _, path := range streams {
		// The server streams the transaction again, from its start.
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("spool: remove unfinished %s: %w", filepath.Base(path), err)
		}
	}
	open, err := w.sp.openSegments()
	if err != nil {
		return err
	}
	for _, path := range open {
		if err := recoverSegment(w.sp.dir, path); err != nil {
			return err
		}
	}
	if len(streams)+len(open) > 0 {
		if err := syncDir(w.sp.dir); err != nil {
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
		if tx.Bucket(bucketMeta) == nil && tx.Bucket(bucketTxns) == nil {
			// Killed while the segment was being created: its buckets are
			// created in one transaction, so it holds nothing. It is removed
			// below like any segment without a complete transaction.
			return nil
		}
		format, err := segmentFormat(tx)
		if err != nil {
			return err
		}
		// The keys a complete transaction owns: (xid, 0..limit-1).
		limit := map[uint32]uint64{}
		if b := tx.Bucket(bucketTxns); b != nil {
			err := b.ForEach(func(k, v []byte) error {
				t, err := decodeTxn(k, v)
				if err != nil {
					return err
				}
				limit[t.Xid] = t.chunks
				if format == formatPerMessage {
					limit[t.Xid] = t.Messages
				}
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
			if len(k) == 12 {
				count, ok := limit[binary.BigEndian.Uint32(k[:4])]
				if ok && binary.BigEndian.Uint64(k[4:]) < count {
					k, _ = c.Next()
					continue
				}
			}
			kk := append([]byte(nil), k...)
			if err := deleteKey(b, kk); err != nil {
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
		return nil
	}
	if err := os.Rename(path, filepath.Join(dir, sealedName(first, last))); err != nil {
		return fmt.Errorf("spool: seal recovered %s: %w", filepath.Base(path), err)
	}
	return nil
}
