package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	bolt "go.etcd.io/bbolt"
)

type msg struct {
	lsn pglogrepl.LSN
	b   string
}

// readAll returns every transaction of every sealed segment with its messages.
func readAll(t *testing.T, sp *Spool) (txns []Txn, msgs [][]msg) {
	t.Helper()
	segs, err := sp.Sealed()
	if err != nil {
		t.Fatal(err)
	}
	for _, si := range segs {
		seg, err := OpenSegment(si)
		if err != nil {
			t.Fatal(err)
		}
		err = seg.Txns(func(tx Txn) error {
			txns = append(txns, tx)
			var ms []msg
			err := seg.Messages(tx, func(lsn pglogrepl.LSN, m []byte) error {
				ms = append(ms, msg{lsn, string(m)})
				return nil
			})
			msgs = append(msgs, ms)
			return err
		})
		seg.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	return txns, msgs
}

func writeTxn(t *testing.T, w *Writer, xid uint32, commit pglogrepl.LSN, n int) {
	t.Helper()
	w.Begin(xid)
	for i := 0; i < n; i++ {
		if err := w.Append(commit-pglogrepl.LSN(n-i), []byte(fmt.Sprintf("x%d-%d", xid, i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Commit(xid, commit, commit+8, time.Unix(1700000000, 0)); err != nil {
		t.Fatal(err)
	}
}

func TestWriteSealRead(t *testing.T) {
	t.Parallel()
	sp, err := Open(t.TempDir(), Options{GroupBytes: 64})
	if err != nil {
		t.Fatal(err)
	}
	w, err := sp.OpenWriter()
	if err != nil {
		t.Fatal(err)
	}
	w.Relation(16384, []byte("Rrel"))
	writeTxn(t, w, 700, 0x1000, 3)
	writeTxn(t, w, 701, 0x2000, 50) // spans several flush groups
	if err := w.Seal(); err != nil {
		t.Fatal(err)
	}
	writeTxn(t, w, 702, 0x3000, 1)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	segs, err := sp.Sealed()
	if err != nil {
		t.Fatal(err)
	}
	if len(segs) != 2 || segs[0].FirstLSN != 0x1000 || segs[0].LastLSN != 0x2000 || segs[1].FirstLSN != 0x3000 {
		t.Fatalf("segments = %+v", segs)
	}
	seg, _ := OpenSegment(segs[1])
	var rels []string
	seg.Relations(func(m []byte) error { rels = append(rels, string(m)); return nil })
	seg.Close()
	if len(rels) != 1 || rels[0] != "Rrel" {
		t.Fatalf("relations snapshot of second segment = %q", rels)
	}

	txns, msgs := readAll(t, sp)
	if got, want := len(txns), 3; got != want {
		t.Fatalf("txns = %d, want %d", got, want)
	}
	for i, want := range []int{3, 50, 1} {
		if len(msgs[i]) != want {
			t.Errorf("txn %d: %d messages, want %d", i, len(msgs[i]), want)
		}
	}
	if got, want := msgs[1][49].b, "x701-49"; got != want {
		t.Errorf("last message = %q, want %q", got, want)
	}
	if got, want := msgs[1][0].lsn, pglogrepl.LSN(0x2000-50); got != want {
		t.Errorf("lsn = %s, want %s", got, want)
	}
	if txns[2].EndLSN != 0x3008 || !txns[2].CommitTime.Equal(time.Unix(1700000000, 0)) {
		t.Errorf("txn record = %+v", txns[2])
	}
}

func TestRecoverDropsIncompleteTransaction(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sp, _ := Open(dir, Options{GroupBytes: 16})
	w, err := sp.OpenWriter()
	if err != nil {
		t.Fatal(err)
	}
	writeTxn(t, w, 10, 0x100, 2)
	w.Begin(11)
	for i := 0; i < 20; i++ { // flushed in groups, never committed
		w.Append(0x150, []byte("partial"))
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	// Simulate a crash: the process dies without Close. Release the lock and
	// the bbolt handle the way the kernel would.
	w.wait()
	w.seg.Close()
	w.lock.Unlock()

	w2, err := sp.OpenWriter()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := w2.Held().CommitLSN, pglogrepl.LSN(0x100); got != want {
		t.Fatalf("held = %s, want %s", got, want)
	}
	writeTxn(t, w2, 11, 0x200, 1) // the server sends it again, whole
	if err := w2.Close(); err != nil {
		t.Fatal(err)
	}
	txns, msgs := readAll(t, sp)
	if len(txns) != 2 || len(msgs[0]) != 2 || len(msgs[1]) != 1 {
		t.Fatalf("txns %+v msgs %v", txns, msgs)
	}
	// No chunk of the partial transaction survived.
	segs, _ := sp.Sealed()
	if n := countKeys(t, segs[0], 11); n != 0 {
		t.Fatalf("%d chunks of the partial transaction left in the recovered segment", n)
	}
}

// countKeys counts the message keys of xid in a sealed segment.
func countKeys(t *testing.T, si SegmentInfo, xid uint32) int {
	t.Helper()
	seg, err := OpenSegment(si)
	if err != nil {
		t.Fatal(err)
	}
	defer seg.Close()
	var n int
	err = seg.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMsgs).ForEach(func(k, _ []byte) error {
			if binary.BigEndian.Uint32(k) == xid {
				n++
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestEmptySegmentIsRemoved(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sp, _ := Open(dir, Options{})
	w, err := sp.OpenWriter()
	if err != nil {
		t.Fatal(err)
	}
	w.Begin(5)
	w.Append(1, []byte("a"))
	w.Flush()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if filepath.Ext(e.Name()) == sealedExt || filepath.Ext(e.Name()) == openExt {
			t.Fatalf("left %s", e.Name())
		}
	}
}

func TestCaptureLockIsExclusive(t *testing.T) {
	t.Parallel()
	sp, _ := Open(t.TempDir(), Options{})
	w, err := sp.OpenWriter()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := sp.OpenWriter(); !errors.Is(err, ErrLocked) {
		t.Fatalf("second writer: err = %v, want ErrLocked", err)
	}
}

func TestMarks(t *testing.T) {
	t.Parallel()
	sp, _ := Open(t.TempDir(), Options{})
	if p, err := sp.Committed(); err != nil || p != (Position{}) {
		t.Fatalf("fresh committed = %v, %v", p, err)
	}
	want := Position{CommitLSN: 0x10, EndLSN: 0x18}
	if err := sp.SetCommitted(want); err != nil {
		t.Fatal(err)
	}
	if got, _ := sp.Committed(); got != want {
		t.Fatalf("committed = %+v, want %+v", got, want)
	}
	sp.SetScanned(0x99)
	if got, _ := sp.Scanned(); got != 0x99 {
		t.Fatalf("scanned = %s", got)
	}
	sp.ClearScanned()
	if got, _ := sp.Scanned(); got != 0 {
		t.Fatalf("scanned after clear = %s", got)
	}
}

func TestSpoolDirIsPrivate(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "spool")
	sp, _ := Open(dir, Options{})
	w, _ := sp.OpenWriter()
	writeTxn(t, w, 1, 0x10, 1)
	w.Close()
	fi, _ := os.Stat(dir)
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("spool dir mode %v", fi.Mode().Perm())
	}
	segs, _ := sp.Sealed()
	fi, _ = os.Stat(segs[0].Path)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("segment mode %v", fi.Mode().Perm())
	}
}
