package compact

// The TOAST state store: the newest large values wal-cake wrote to the lake,
// per table and replica identity, kept beside the spool so that an UPDATE
// which leaves a TOASTed column unchanged (pgoutput sends 'u', not the value)
// gets the value instead of NULL and an entry in _unchanged.
//
// It must never fill a wrong value, whatever crashes:
//
//   - The store records the lake head (the last commit LSN of the newest
//     stream manifest) it reflects, and the lake it belongs to. Compaction
//     opens it with the lake's head; on any mismatch it starts empty.
//   - A batch writes its entries while it is decoded, each tagged with the
//     commit LSN of the transaction that wrote it, after marking the store
//     dirty in the same bbolt transaction as the first write. Once the batch's
//     manifest is written, the store records the new head and clears the
//     mark. A batch cut short before its manifest leaves the mark: the next
//     compaction deletes every entry newer than the head (the values they
//     replaced are lost, so those keys are forgotten, never wrong). A crash
//     between the manifest and the new head leaves a head that does not match
//     the lake: the store starts empty.
//   - Every full value seen for a key replaces or removes the entry's value,
//     a DELETE removes the key, a TRUNCATE (or the table dropped and
//     re-created) the table, a key change moves the entry: an entry holds the
//     newest value of each column it has, or not the column.
//   - A value fills an unchanged column only under the same column name and
//     type (OID and typmod), and only for types whose text output depends on
//     the stored value alone (column.stable).
//   - A store that is missing or discarded fills nothing until it has seen a
//     key's full value again (an INSERT or an UPDATE that sends it).
//
// It keeps a value only when it could be stored out of line by PostgreSQL:
// in a row whose values total at least toastRowMin bytes of text, a value of
// at least toastValueMin bytes; values over toastValueMax are not kept (they
// stay unfilled). Values are zstd-compressed. Tables under REPLICA IDENTITY
// FULL need no store (the old row carries every value), nor tables without a
// replica identity (PostgreSQL rejects their updates).

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/klauspost/compress/zstd"
	bolt "go.etcd.io/bbolt"
)

const (
	toastFileName = "toast.db"

	// PostgreSQL moves values out of line only from rows over
	// TOAST_TUPLE_THRESHOLD (about 2 kB), and never a value shorter than a
	// TOAST pointer. Text forms are rarely shorter than the stored datum.
	toastRowMin   = 2000
	toastValueMin = 128
	toastValueMax = 16 << 20

	// A batch's writes are committed to the store in bbolt transactions of
	// about this size, so that memory stays bounded.
	toastTxBytes = 8 << 20
	toastTxOps   = 4096

	// Past this much space in use the store keeps no new values (it shares
	// the spool's disk with capture); the keys it holds stay, and their
	// entries are removed as their values change, so that it stays about
	// this size.
	toastMaxFileBytes = 2 << 30
)

var (
	toastMeta     = []byte("meta")
	toastKeyHead  = []byte("head")  // 8 bytes: commit LSN of the lake head the store reflects
	toastKeyLake  = []byte("lake")  // the lake's location
	toastKeyDirty = []byte("dirty") // present while entries newer than head may exist
)

// Value encodings in an entry.
const (
	toastRaw  = 0
	toastZstd = 1
)

// toastStore is the TOAST state store. A nil *toastStore is an empty store
// that remembers nothing. Not safe for concurrent use.
type toastStore struct {
	db    *bolt.DB
	dirty bool // the dirty mark is set in the file

	tx      *bolt.Tx // the open write transaction, if any
	txDirty bool     // tx has changes
	txBytes int
	txOps   int

	rels    map[uint32]bool // relations that have a bucket
	maxFile int64           // toastMaxFileBytes; tests lower it
	full    bool            // the file has passed maxFile
	enc     *zstd.Encoder
	dec     *zstd.Decoder
	buf     []byte // scratch: the entry being encoded
	log     *slog.Logger

	// Figures, for the debug log.
	kept, forgotten int64
}

// openToastStore opens (or creates) the store in dir for the lake at lake
// whose head is head, and brings it in step with that head: a store that
// reflects another head or lake starts empty, and the entries of a batch
// cut short before its lake commit are deleted.
func openToastStore(dir, lake string, head pglogrepl.LSN, log *slog.Logger) (*toastStore, error) {
	path := filepath.Join(dir, toastFileName)
	opts := &bolt.Options{Timeout: 10 * time.Second, FreelistType: bolt.FreelistMapType, NoFreelistSync: true}
	db, err := bolt.Open(path, 0o600, opts)
	if err != nil && !errors.Is(err, bolt.ErrTimeout) {
		// An unreadable store is only a cache of the lake: start over.
		log.Warn("TOAST state store unreadable; starting an empty one", "path", path, "err", err)
		if rmErr := os.Remove(path); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) {
			return nil, fmt.Errorf("toast state: remove %s: %w", path, rmErr)
		}
		db, err = bolt.Open(path, 0o600, opts)
	}
	if err != nil {
		return nil, fmt.Errorf("toast state: open %s: %w", path, err)
	}
	s := &toastStore{db: db, rels: map[uint32]bool{}, log: log, maxFile: toastMaxFileBytes}
	if err := db.Update(func(tx *bolt.Tx) error { return s.reconcile(tx, lake, head) }); err != nil {
		db.Close()
		return nil, fmt.Errorf("toast state: %w", err)
	}
	s.enc, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	s.dec, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(2*toastValueMax))
	return s, nil
}

func (s *toastStore) reconcile(tx *bolt.Tx, lake string, head pglogrepl.LSN) error {
	meta := tx.Bucket(toastMeta)
	var storedHead pglogrepl.LSN
	valid, dirty := false, false
	var storedLake string
	if meta != nil {
		if h := meta.Get(toastKeyHead); len(h) == 8 {
			storedHead, valid = pglogrepl.LSN(binary.BigEndian.Uint64(h)), true
		}
		storedLake = string(meta.Get(toastKeyLake))
		dirty = meta.Get(toastKeyDirty) != nil
	}
	inStep := valid && storedLake == lake && storedHead == head
	switch {
	case inStep && !dirty:
	case inStep && dirty:
		n, err := purgeAfter(tx, head)
		if err != nil {
			return err
		}
		s.log.Info("TOAST state store: forgot the values of a lake commit that did not happen", "entries", n, "head", head.String())
	default:
		n := 0
		var names [][]byte
		err := tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
			if !bytes.Equal(name, toastMeta) {
				names = append(names, bytes.Clone(name))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, name := range names {
			n++
			if err := tx.DeleteBucket(name); err != nil {
				return err
			}
		}
		if n > 0 || valid {
			s.log.Info("TOAST state store does not match the lake; starting empty",
				"store_head", storedHead.String(), "lake_head", head.String(), "tables", n)
		}
	}
	meta, err := tx.CreateBucketIfNotExists(toastMeta)
	if err != nil {
		return err
	}
	if err := meta.Put(toastKeyHead, binary.BigEndian.AppendUint64(nil, uint64(head))); err != nil {
		return err
	}
	if err := meta.Put(toastKeyLake, []byte(lake)); err != nil {
		return err
	}
	if err := meta.Delete(toastKeyDirty); err != nil {
		return err
	}
	return tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
		if relid, ok := parseRelBucket(name); ok {
			s.rels[relid] = true
		}
		return nil
	})
}

// purgeAfter deletes every entry written by a transaction after head.
func purgeAfter(tx *bolt.Tx, head pglogrepl.LSN) (int, error) {
	n := 0
	err := tx.ForEach(func(name []byte, b *bolt.Bucket) error {
		if _, ok := parseRelBucket(name); !ok {
			return nil
		}
		var stale [][]byte
		err := b.ForEach(func(k, v []byte) error {
			if len(v) < 8 || pglogrepl.LSN(binary.BigEndian.Uint64(v)) > head {
				stale = append(stale, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range stale {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		n += len(stale)
		return nil
	})
	return n, err
}

func relBucket(relid uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{'r'}, relid)
}

func parseRelBucket(name []byte) (uint32, bool) {
	if len(name) != 5 || name[0] != 'r' {
		return 0, false
	}
	return binary.BigEndian.Uint32(name[1:]), true
}

// begin returns the open write transaction, opening one if needed.
func (s *toastStore) begin() (*bolt.Tx, error) {
	if s.tx != nil {
		return s.tx, nil
	}
	tx, err := s.db.Begin(true)
	if err != nil {
		return nil, fmt.Errorf("toast state: begin: %w", err)
	}
	s.tx, s.txDirty, s.txBytes, s.txOps = tx, false, 0, 0
	return tx, nil
}

// modify returns the write transaction for a change, setting the dirty mark
// with the first change after a lake commit.
func (s *toastStore) modify() (*bolt.Tx, error) {
	tx, err := s.begin()
	if err != nil {
		return nil, err
	}
	if !s.dirty {
		if err := tx.Bucket(toastMeta).Put(toastKeyDirty, []byte{1}); err != nil {
			return nil, fmt.Errorf("toast state: %w", err)
		}
		s.dirty = true
	}
	s.txDirty = true
	return tx, nil
}

// changed accounts for one change and commits the transaction once it is
// large.
func (s *toastStore) changed(bytes int) error {
	s.txOps++
	s.txBytes += bytes
	if s.txOps < toastTxOps && s.txBytes < toastTxBytes {
		return nil
	}
	return s.flush()
}

// flush commits the open transaction (or rolls back one that only read).
func (s *toastStore) flush() error {
	if s == nil || s.tx == nil {
		return nil
	}
	tx := s.tx
	s.tx = nil
	if !s.txDirty {
		return tx.Rollback()
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("toast state: commit: %w", err)
	}
	return nil
}

// get reads the entry of key into ent; false when there is none.
func (s *toastStore) get(ts *tableSchema, key []byte, ent *toastEntry) (bool, error) {
	if s == nil || key == nil || !s.rels[ts.RelationID] {
		return false, nil
	}
	tx, err := s.begin()
	if err != nil {
		return false, err
	}
	v := tx.Bucket(relBucket(ts.RelationID)).Get(key)
	if v == nil {
		return false, nil
	}
	if err := ent.decode(v); err != nil {
		return false, fmt.Errorf("toast state: table %s: %w", ts.Table, err)
	}
	ent.dec = s.dec
	return true, nil
}

// remember records the values of a row of ts with identity key, written by
// the transaction that commits at commit. prev is the entry the row's
// unchanged values were filled from, if any; sameKey reports that it is
// key's own entry (not the old key's, on a key change).
func (s *toastStore) remember(ts *tableSchema, key []byte, vals []colValue, prev *toastEntry, sameKey bool, commit pglogrepl.LSN) error {
	if s == nil || key == nil || len(key) > bolt.MaxKeySize {
		return nil
	}
	total := 0
	for _, v := range vals {
		total += len(v.data)
	}
	keep := total >= toastRowMin
	if keep {
		tx, err := s.begin()
		if err != nil {
			return err
		}
		// The file never shrinks: what counts is the space in use, as of
		// the last commit (free pages are reused).
		if size := tx.Size(); size > s.maxFile {
			used := size - int64(s.db.Stats().FreeAlloc)
			switch {
			case used > s.maxFile && !s.full:
				s.log.Warn("TOAST state store is full: new large values are not kept (unchanged ones are named in _unchanged)",
					"bytes", used, "limit", s.maxFile)
				s.full = true
			case used <= s.maxFile && s.full:
				s.full = false
			}
			keep = keep && !s.full
		}
	}
	b := binary.BigEndian.AppendUint64(s.buf[:0], uint64(commit))
	ncols, reused := 0, 0
	for i := range ts.Columns {
		c, v := &ts.Columns[i], vals[i]
		if !keep || c.Key || !c.stable || v.null || v.unchanged || len(v.data) < toastValueMin || len(v.data) > toastValueMax {
			continue
		}
		ncols++
		b = binary.AppendUvarint(b, uint64(len(c.Name)))
		b = append(b, c.Name...)
		b = binary.AppendUvarint(b, uint64(c.Type.OID))
		b = binary.AppendVarint(b, int64(c.Type.Typmod))
		if v.stored && prev != nil {
			if pc := prev.find(c); pc != nil {
				// Unchanged and from the store: keep its bytes as they are.
				b = append(b, pc.enc)
				b = binary.AppendUvarint(b, uint64(len(pc.stored)))
				b = append(b, pc.stored...)
				reused++
				continue
			}
		}
		enc, data := byte(toastRaw), v.data
		if z := s.enc.EncodeAll(v.data, nil); len(z) < len(v.data) {
			enc, data = toastZstd, z
		}
		b = append(b, enc)
		b = binary.AppendUvarint(b, uint64(len(data)))
		b = append(b, data...)
	}
	s.buf = b
	if ncols == 0 {
		return s.forget(ts, key)
	}
	if sameKey && prev != nil && reused == ncols && ncols == len(prev.cols) {
		return nil // the entry stays as it is
	}
	tx, err := s.modify()
	if err != nil {
		return err
	}
	bucket, err := tx.CreateBucketIfNotExists(relBucket(ts.RelationID))
	if err != nil {
		return fmt.Errorf("toast state: table %s: %w", ts.Table, err)
	}
	s.rels[ts.RelationID] = true
	// bbolt keeps the slices until the transaction commits.
	if err := bucket.Put(bytes.Clone(key), bytes.Clone(b)); err != nil {
		return fmt.Errorf("toast state: table %s: %w", ts.Table, err)
	}
	s.kept++
	return s.changed(len(key) + len(b))
}

// forget removes the entry of key.
func (s *toastStore) forget(ts *tableSchema, key []byte) error {
	if s == nil || key == nil || !s.rels[ts.RelationID] {
		return nil
	}
	tx, err := s.begin()
	if err != nil {
		return err
	}
	if tx.Bucket(relBucket(ts.RelationID)).Get(key) == nil {
		return nil
	}
	if tx, err = s.modify(); err != nil {
		return err
	}
	if err := tx.Bucket(relBucket(ts.RelationID)).Delete(key); err != nil {
		return fmt.Errorf("toast state: table %s: %w", ts.Table, err)
	}
	s.forgotten++
	return s.changed(len(key))
}

// dropRelation forgets every entry of a relation (truncated, or dropped).
func (s *toastStore) dropRelation(relid uint32) error {
	if s == nil || !s.rels[relid] {
		return nil
	}
	tx, err := s.modify()
	if err != nil {
		return err
	}
	if err := tx.DeleteBucket(relBucket(relid)); err != nil && !errors.Is(err, bolt.ErrBucketNotFound) {
		return fmt.Errorf("toast state: drop relation %d: %w", relid, err)
	}
	delete(s.rels, relid)
	return s.changed(0)
}

// committed records that the lake's head is now head: everything the store
// holds is in the lake.
func (s *toastStore) committed(head pglogrepl.LSN) error {
	if s == nil {
		return nil
	}
	tx, err := s.begin()
	if err != nil {
		return err
	}
	meta := tx.Bucket(toastMeta)
	if err := meta.Put(toastKeyHead, binary.BigEndian.AppendUint64(nil, uint64(head))); err != nil {
		return fmt.Errorf("toast state: %w", err)
	}
	if err := meta.Delete(toastKeyDirty); err != nil {
		return fmt.Errorf("toast state: %w", err)
	}
	s.txDirty = true
	if err := s.flush(); err != nil {
		return err
	}
	s.dirty = false
	return nil
}

// close rolls back uncommitted changes (the dirty mark, when set, is already
// in the file) and closes the store.
func (s *toastStore) close() error {
	if s == nil {
		return nil
	}
	if s.tx != nil {
		s.tx.Rollback()
		s.tx = nil
	}
	s.log.Debug("TOAST state store closed", "values_kept", s.kept, "keys_forgotten", s.forgotten)
	if s.enc != nil {
		s.enc.Close()
	}
	if s.dec != nil {
		s.dec.Close()
	}
	return s.db.Close()
}

// toastEntry is one key's entry: the values it holds, by column.
type toastEntry struct {
	commit pglogrepl.LSN
	cols   []toastCol
	raw    []byte // owned copy of the stored entry; cols point into it
	dec    *zstd.Decoder
}

type toastCol struct {
	name   []byte
	oid    uint32
	typmod int32
	enc    byte
	stored []byte // as stored (compressed or raw)
	value  []byte // decompressed, on first use
}

var errCorruptEntry = errors.New("corrupt entry")

func (e *toastEntry) decode(v []byte) error {
	e.raw = append(e.raw[:0], v...)
	e.cols = e.cols[:0]
	b := e.raw
	if len(b) < 8 {
		return errCorruptEntry
	}
	e.commit = pglogrepl.LSN(binary.BigEndian.Uint64(b))
	b = b[8:]
	for len(b) > 0 {
		var c toastCol
		n, k := binary.Uvarint(b)
		if k <= 0 || uint64(len(b)-k) < n {
			return errCorruptEntry
		}
		c.name, b = b[k:k+int(n)], b[k+int(n):]
		oid, k1 := binary.Uvarint(b)
		if k1 <= 0 {
			return errCorruptEntry
		}
		b = b[k1:]
		typmod, k2 := binary.Varint(b)
		if k2 <= 0 || len(b) < k2+1 {
			return errCorruptEntry
		}
		c.oid, c.typmod, c.enc = uint32(oid), int32(typmod), b[k2]
		b = b[k2+1:]
		n, k = binary.Uvarint(b)
		if k <= 0 || uint64(len(b)-k) < n {
			return errCorruptEntry
		}
		c.stored, b = b[k:k+int(n)], b[k+int(n):]
		e.cols = append(e.cols, c)
	}
	return nil
}

// find returns the entry's value for column c: the same name and type.
func (e *toastEntry) find(c *column) *toastCol {
	for i := range e.cols {
		tc := &e.cols[i]
		if string(tc.name) == c.Name && tc.oid == c.Type.OID && tc.typmod == c.Type.Typmod {
			return tc
		}
	}
	return nil
}

// value returns the text the entry holds for column c.
func (e *toastEntry) value(c *column) ([]byte, bool) {
	tc := e.find(c)
	if tc == nil || !c.stable {
		return nil, false
	}
	if tc.value == nil {
		switch tc.enc {
		case toastRaw:
			tc.value = tc.stored
		case toastZstd:
			v, err := e.dec.DecodeAll(tc.stored, nil)
			if err != nil {
				return nil, false // never a wrong value: leave it unfilled
			}
			tc.value = v
		default:
			return nil, false
		}
	}
	return tc.value, true
}
