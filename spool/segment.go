package spool

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	bolt "go.etcd.io/bbolt"
)

var (
	bucketMeta      = []byte("meta")
	bucketRelations = []byte("relations")
	bucketMsgs      = []byte("msgs")
	bucketTxns      = []byte("txns")
)

// Txn is the record of one committed transaction in a segment.
type Txn struct {
	Xid        uint32
	CommitLSN  pglogrepl.LSN // LSN of the commit record (pgoutput's Begin.FinalLSN)
	EndLSN     pglogrepl.LSN // LSN just past the commit record
	CommitTime time.Time
	Messages   uint64 // messages stored for it, ordinals 0..Messages-1
}

const txnRecordLen = 4 + 8 + 8 + 8

func encodeTxn(t Txn) (key, val []byte) {
	key = binary.BigEndian.AppendUint64(nil, uint64(t.CommitLSN))
	val = make([]byte, 0, txnRecordLen)
	val = binary.BigEndian.AppendUint32(val, t.Xid)
	val = binary.BigEndian.AppendUint64(val, uint64(t.EndLSN))
	val = binary.BigEndian.AppendUint64(val, uint64(t.CommitTime.UnixMicro()))
	val = binary.BigEndian.AppendUint64(val, t.Messages)
	return key, val
}

func decodeTxn(key, val []byte) (Txn, error) {
	if len(key) != 8 || len(val) != txnRecordLen {
		return Txn{}, fmt.Errorf("spool: corrupt transaction record (key %d bytes, value %d bytes)", len(key), len(val))
	}
	return Txn{
		CommitLSN:  pglogrepl.LSN(binary.BigEndian.Uint64(key)),
		Xid:        binary.BigEndian.Uint32(val[0:4]),
		EndLSN:     pglogrepl.LSN(binary.BigEndian.Uint64(val[4:12])),
		CommitTime: time.UnixMicro(int64(binary.BigEndian.Uint64(val[12:20]))).UTC(),
		Messages:   binary.BigEndian.Uint64(val[20:28]),
	}, nil
}

// msgKey is (xid, ordinal), big-endian, so a transaction's messages are
// contiguous and in order.
func msgKey(xid uint32, ordinal uint64) []byte {
	k := make([]byte, 12)
	binary.BigEndian.PutUint32(k, xid)
	binary.BigEndian.PutUint64(k[4:], ordinal)
	return k
}

// Segment is a sealed segment opened for reading.
type Segment struct {
	db   *bolt.DB
	Info SegmentInfo
}

// OpenSegment opens a sealed segment read-only.
func OpenSegment(si SegmentInfo) (*Segment, error) {
	db, err := bolt.Open(si.Path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("spool: open segment %s: %w", si.Name(), err)
	}
	return &Segment{db: db, Info: si}, nil
}

// Close closes the segment.
func (s *Segment) Close() error { return s.db.Close() }

// Relations calls fn with each Relation message the segment starts with.
// msg is valid only during the call.
func (s *Segment) Relations(fn func(msg []byte) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRelations)
		if b == nil {
			return nil
		}
		return b.ForEach(func(_, v []byte) error { return fn(v) })
	})
}

// Txns calls fn for each complete transaction in commit order.
func (s *Segment) Txns(fn func(Txn) error) error {
	var txns []Txn
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTxns)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			t, err := decodeTxn(k, v)
			if err != nil {
				return err
			}
			txns = append(txns, t)
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("spool: read %s: %w", s.Info.Name(), err)
	}
	for _, t := range txns {
		if err := fn(t); err != nil {
			return err
		}
	}
	return nil
}

// Messages calls fn with each message of t in order: the LSN of its change
// record and the raw pgoutput message. msg is valid only during the call.
func (s *Segment) Messages(t Txn, fn func(lsn pglogrepl.LSN, msg []byte) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMsgs)
		if b == nil {
			return fmt.Errorf("spool: %s: no messages bucket", s.Info.Name())
		}
		c := b.Cursor()
		prefix := msgKey(t.Xid, 0)[:4]
		var n uint64
		for k, v := c.Seek(msgKey(t.Xid, 0)); k != nil && bytes.HasPrefix(k, prefix) && n < t.Messages; k, v = c.Next() {
			if got := binary.BigEndian.Uint64(k[4:]); got != n {
				return fmt.Errorf("spool: %s: transaction %d: message %d missing (found %d)", s.Info.Name(), t.Xid, n, got)
			}
			if len(v) < 8 {
				return fmt.Errorf("spool: %s: transaction %d: corrupt message %d", s.Info.Name(), t.Xid, n)
			}
			if err := fn(pglogrepl.LSN(binary.BigEndian.Uint64(v[:8])), v[8:]); err != nil {
				return err
			}
			n++
		}
		if n != t.Messages {
			return fmt.Errorf("spool: %s: transaction %d: %d of %d messages present", s.Info.Name(), t.Xid, n, t.Messages)
		}
		return nil
	})
}
