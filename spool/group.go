package spool

import (
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// group is a batch of records bound for one bbolt file, written in one bbolt
// transaction (one fsync, or none for a stream file).
type group struct {
	buf     []byte     // records back to back
	chunks  []chunkRef // a key and a range of buf for each chunk
	txns    []Txn      // transaction records
	stale   []uint32   // xids whose chunks already in the file are deleted first
	aborted [][8]byte  // (xid, subxid) keys of rolled-back subtransactions
}

type chunkRef struct {
	key        [12]byte
	start, end int
}

func (g *group) empty() bool {
	return len(g.buf) == 0 && len(g.chunks) == 0 && len(g.txns) == 0 && len(g.stale) == 0 && len(g.aborted) == 0
}

// reset empties g for reuse, keeping its buffer unless one huge message
// grew it past keepBytes.
func (g *group) reset(keepBytes int) {
	if cap(g.buf) > keepBytes {
		g.buf = nil
	} else {
		g.buf = g.buf[:0]
	}
	g.chunks = g.chunks[:0]
	g.txns = g.txns[:0]
	g.stale = g.stale[:0]
	g.aborted = g.aborted[:0]
}

// txnBuilder tracks the transaction whose records are being added to a
// group: its records are cut into a chunk each time the group is written.
type txnBuilder struct {
	active  bool
	xid     uint32
	records uint64 // records added so far
	chunks  uint64 // chunks cut so far
	start   int    // where its open chunk begins in the current group's buffer
}

// cutChunk turns the transaction's records in g since start into a chunk.
func (t *txnBuilder) cutChunk(g *group) {
	if len(g.buf) > t.start {
		var k [12]byte
		putMsgKey(k[:], t.xid, t.chunks)
		g.chunks = append(g.chunks, chunkRef{key: k, start: t.start, end: len(g.buf)})
		t.chunks++
	}
	t.start = len(g.buf)
}

// writeGroup writes g into db in one bbolt transaction.
func writeGroup(db *bolt.DB, g *group) error {
	return db.Update(func(tx *bolt.Tx) error {
		msgs := tx.Bucket(bucketMsgs)
		if msgs == nil {
			return fmt.Errorf("no messages bucket")
		}
		msgs.FillPercent = 1.0 // append-only keys: pack pages full
		for _, xid := range g.stale {
			if err := deletePrefix(msgs, xid); err != nil {
				return err
			}
		}
		for i := range g.chunks {
			ch := &g.chunks[i]
			if err := putChunk(msgs, ch.key[:], g.buf[ch.start:ch.end]); err != nil {
				return err
			}
		}
		if len(g.aborted) > 0 {
			b, err := tx.CreateBucketIfNotExists(bucketAborted)
			if err != nil {
				return err
			}
			for i := range g.aborted {
				if err := b.Put(g.aborted[i][:], nil); err != nil {
					return err
				}
			}
		}
		txns := tx.Bucket(bucketTxns)
		txns.FillPercent = 1.0
		for _, t := range g.txns {
			k, v := encodeTxn(t)
			if err := txns.Put(k, v); err != nil {
				return err
			}
		}
		return nil
	})
}

// A chunk is the one value (key chunkValueKey) of a bucket of its own, named
// by its (xid, chunk) key inside the messages bucket. bbolt rewrites a whole
// leaf when a key is added to it, and a leaf holds at least two entries
// however large: chunks stored as plain values would be copied again with
// every chunk appended after them. In a bucket of its own, a chunk's pages
// are written once; the messages bucket holds only its small header (or,
// for a chunk under a quarter page, the chunk inline).
var chunkValueKey = []byte{0}

func putChunk(msgs *bolt.Bucket, key, val []byte) error {
	b, err := msgs.CreateBucketIfNotExists(key)
	if err != nil {
		return err
	}
	b.FillPercent = 1.0
	return b.Put(chunkValueKey, val)
}

// getChunk returns the chunk stored under key, or nil.
func getChunk(msgs *bolt.Bucket, key []byte) []byte {
	b := msgs.Bucket(key)
	if b == nil {
		return nil
	}
	return b.Get(chunkValueKey)
}

// deleteKey deletes a chunk's bucket or a per-message value.
func deleteKey(b *bolt.Bucket, k []byte) error {
	if b.Bucket(k) != nil {
		return b.DeleteBucket(k)
	}
	return b.Delete(k)
}

// deletePrefix deletes every chunk of b whose key starts with xid.
func deletePrefix(b *bolt.Bucket, xid uint32) error {
	var prefix [4]byte
	binary.BigEndian.PutUint32(prefix[:], xid)
	c := b.Cursor()
	for k, _ := c.Seek(prefix[:]); len(k) >= 4 && string(k[:4]) == string(prefix[:]); k, _ = c.Seek(prefix[:]) {
		if err := deleteKey(b, append([]byte(nil), k...)); err != nil {
			return err
		}
	}
	return nil
}
