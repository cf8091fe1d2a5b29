package spool

import (
	"encoding/binary"
	"fmt"
	"os"
	"time"
	"unsafe"

	"github.com/jackc/pglogrepl"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

var (
	bucketMeta      = []byte("meta")
	bucketRelations = []byte("relations")
	bucketMsgs      = []byte("msgs")
	bucketTxns      = []byte("txns")
	// bucketAborted holds (xid, subxid) keys: subtransactions of a streamed
	// transaction that rolled back. Their messages stay in the file and are
	// skipped when read.
	bucketAborted = []byte("aborted")

	keyFormat = []byte("format")
)

// Segment formats, in the meta bucket under "format".
const (
	// formatPerMessage: one bbolt value per message, keyed (xid, ordinal),
	// each value the change's LSN then the message.
	formatPerMessage = "1"
	// formatChunked: a transaction's messages are packed into chunks keyed
	// (xid, chunk); see appendRecord.
	formatChunked = "2"
)

// Txn is the record of one committed transaction in a segment.
type Txn struct {
	Xid        uint32
	CommitLSN  pglogrepl.LSN // LSN of the commit record (pgoutput's Begin.FinalLSN)
	EndLSN     pglogrepl.LSN // LSN just past the commit record
	CommitTime time.Time
	Messages   uint64 // messages stored for it

	chunks uint64 // chunks holding them (chunked format); 0 in the per-message format
}

const (
	txnRecordLenV1 = 4 + 8 + 8 + 8
	txnRecordLen   = txnRecordLenV1 + 8
)

func encodeTxn(t Txn) (key, val []byte) {
	key = binary.BigEndian.AppendUint64(nil, uint64(t.CommitLSN))
	val = make([]byte, 0, txnRecordLen)
	val = binary.BigEndian.AppendUint32(val, t.Xid)
	val = binary.BigEndian.AppendUint64(val, uint64(t.EndLSN))
	val = binary.BigEndian.AppendUint64(val, uint64(t.CommitTime.UnixMicro()))
	val = binary.BigEndian.AppendUint64(val, t.Messages)
	val = binary.BigEndian.AppendUint64(val, t.chunks)
	return key, val
}

func decodeTxn(key, val []byte) (Txn, error) {
	if len(key) != 8 || (len(val) != txnRecordLen && len(val) != txnRecordLenV1) {
		return Txn{}, fmt.Errorf("spool: corrupt transaction record (key %d bytes, value %d bytes)", len(key), len(val))
	}
	t := Txn{
		CommitLSN:  pglogrepl.LSN(binary.BigEndian.Uint64(key)),
		Xid:        binary.BigEndian.Uint32(val[0:4]),
		EndLSN:     pglogrepl.LSN(binary.BigEndian.Uint64(val[4:12])),
		CommitTime: time.UnixMicro(int64(binary.BigEndian.Uint64(val[12:20]))).UTC(),
		Messages:   binary.BigEndian.Uint64(val[20:28]),
	}
	if len(val) == txnRecordLen {
		t.chunks = binary.BigEndian.Uint64(val[28:36])
	}
	return t, nil
}

// msgKey is (xid, n), big-endian, so a transaction's messages (or chunks)
// are contiguous and in order.
func msgKey(xid uint32, n uint64) []byte {
	k := make([]byte, 12)
	putMsgKey(k, xid, n)
	return k
}

func putMsgKey(k []byte, xid uint32, n uint64) {
	binary.BigEndian.PutUint32(k, xid)
	binary.BigEndian.PutUint64(k[4:], n)
}

// A chunk is a run of records, each a 16-byte header and the message:
//
//	length  uint32  of the message
//	lsn     uint64  of the change record
//	xid     uint32  (sub)transaction the message belongs to
//	message [length]byte, a pgoutput message in the protocol 1 layout
const recordHeaderLen = 4 + 8 + 4

func appendRecord(buf []byte, lsn pglogrepl.LSN, xid uint32, typ byte, body []byte) []byte {
	var h [recordHeaderLen + 1]byte
	binary.BigEndian.PutUint32(h[0:4], uint32(1+len(body)))
	binary.BigEndian.PutUint64(h[4:12], uint64(lsn))
	binary.BigEndian.PutUint32(h[12:16], xid)
	h[16] = typ
	buf = append(buf, h[:]...)
	return append(buf, body...)
}

// Segment is a sealed segment opened for reading.
type Segment struct {
	db     *bolt.DB
	format string
	Info   SegmentInfo
}

// OpenSegment opens a sealed segment read-only.
func OpenSegment(si SegmentInfo) (*Segment, error) {
	db, err := bolt.Open(si.Path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("spool: open segment %s: %w", si.Name(), err)
	}
	s := &Segment{db: db, Info: si}
	err = db.View(func(tx *bolt.Tx) error {
		s.format, err = segmentFormat(tx)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("spool: open segment %s: %w", si.Name(), err)
	}
	return s, nil
}

func segmentFormat(tx *bolt.Tx) (string, error) {
	meta := tx.Bucket(bucketMeta)
	if meta == nil {
		return "", fmt.Errorf("no meta bucket")
	}
	switch f := string(meta.Get(keyFormat)); f {
	case formatPerMessage, formatChunked:
		return f, nil
	default:
		return "", fmt.Errorf("unknown segment format %q", f)
	}
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
// record and the raw pgoutput message (protocol 1 layout, also for a
// transaction streamed under protocol 2). Messages of a rolled-back
// subtransaction are skipped. msg is valid only during the call.
func (s *Segment) Messages(t Txn, fn func(lsn pglogrepl.LSN, msg []byte) error) error {
	return s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMsgs)
		if b == nil {
			return fmt.Errorf("spool: %s: no messages bucket", s.Info.Name())
		}
		if s.format == formatPerMessage {
			return s.messagesV1(b, t, fn)
		}
		aborted := abortedSubxacts(tx, t.Xid)
		var key [12]byte
		var n uint64
		for chunk := uint64(0); chunk < t.chunks; chunk++ {
			putMsgKey(key[:], t.Xid, chunk)
			v := getChunk(b, key[:])
			val := v
			if v == nil {
				return fmt.Errorf("spool: %s: transaction %d: chunk %d of %d missing", s.Info.Name(), t.Xid, chunk, t.chunks)
			}
			for len(v) > 0 {
				if len(v) < recordHeaderLen {
					return fmt.Errorf("spool: %s: transaction %d: corrupt chunk %d", s.Info.Name(), t.Xid, chunk)
				}
				size := int(binary.BigEndian.Uint32(v[0:4]))
				if len(v) < recordHeaderLen+size {
					return fmt.Errorf("spool: %s: transaction %d: corrupt chunk %d", s.Info.Name(), t.Xid, chunk)
				}
				n++
				if aborted == nil || !aborted[binary.BigEndian.Uint32(v[12:16])] {
					lsn := pglogrepl.LSN(binary.BigEndian.Uint64(v[4:12]))
					if err := fn(lsn, v[recordHeaderLen:recordHeaderLen+size]); err != nil {
						return err
					}
				}
				v = v[recordHeaderLen+size:]
			}
			releasePages(val)
		}
		if n != t.Messages {
			return fmt.Errorf("spool: %s: transaction %d: %d of %d messages present", s.Info.Name(), t.Xid, n, t.Messages)
		}
		return nil
	})
}

// releasePages tells the kernel that the pages of a large chunk just read
// through the read-only memory map are no longer needed, so that reading a
// segment of any size does not grow the process's resident memory. The
// pages stay in the page cache; the mapping faults them in again if needed.
func releasePages(b []byte) {
	if len(b) < releaseMin {
		return
	}
	page := uintptr(os.Getpagesize())
	start := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	from := (start + page - 1) &^ (page - 1)
	to := (start + uintptr(len(b))) &^ (page - 1)
	if to <= from {
		return
	}
	_ = unix.Madvise(unsafe.Slice((*byte)(unsafe.Add(unsafe.Pointer(unsafe.SliceData(b)), from-start)), to-from), unix.MADV_DONTNEED)
}

// releaseMin is the smallest chunk whose pages are released after reading.
const releaseMin = 256 << 10

// messagesV1 reads a transaction of the per-message format.
func (s *Segment) messagesV1(b *bolt.Bucket, t Txn, fn func(lsn pglogrepl.LSN, msg []byte) error) error {
	c := b.Cursor()
	prefix := msgKey(t.Xid, 0)[:4]
	var n uint64
	for k, v := c.Seek(msgKey(t.Xid, 0)); k != nil && string(k[:4]) == string(prefix) && n < t.Messages; k, v = c.Next() {
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
}

// abortedSubxacts returns the rolled-back subtransactions of xid, or nil.
func abortedSubxacts(tx *bolt.Tx, xid uint32) map[uint32]bool {
	b := tx.Bucket(bucketAborted)
	if b == nil {
		return nil
	}
	var prefix [4]byte
	binary.BigEndian.PutUint32(prefix[:], xid)
	var set map[uint32]bool
	c := b.Cursor()
	for k, _ := c.Seek(prefix[:]); len(k) == 8 && string(k[:4]) == string(prefix[:]); k, _ = c.Next() {
		if set == nil {
			set = map[uint32]bool{}
		}
		set[binary.BigEndian.Uint32(k[4:])] = true
	}
	return set
}
