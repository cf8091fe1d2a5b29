package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// streamBlock appends n messages "<tag>-<i>" of (sub)transaction sub to an
// open stream block of top.
func streamBlock(t *testing.T, w *Writer, top uint32, first bool, parts ...blockPart) {
	t.Helper()
	if err := w.StreamStart(top, first); err != nil {
		t.Fatal(err)
	}
	for _, p := range parts {
		for i := 0; i < p.n; i++ {
			if err := w.StreamAppend(p.sub, 0x100, 'I', []byte(fmt.Sprintf("%s-%d", p.tag, i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := w.StreamStop(); err != nil {
		t.Fatal(err)
	}
}

type blockPart struct {
	sub uint32
	tag string
	n   int
}

func files(t *testing.T, dir, ext string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*"+ext))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestStreamedTransactionInCommitOrder(t *testing.T) {
	t.Parallel()
	sp, err := Open(t.TempDir(), Options{GroupBytes: 64})
	if err != nil {
		t.Fatal(err)
	}
	w, err := sp.OpenWriter()
	if err != nil {
		t.Fatal(err)
	}
	w.Relation(1, []byte("Rrel"))
	writeTxn(t, w, 700, 0x1000, 2)
	streamBlock(t, w, 900, true, blockPart{900, "top", 10}, blockPart{901, "sub", 5})
	writeTxn(t, w, 701, 0x2000, 1) // commits while 900 is still streaming
	streamBlock(t, w, 900, false, blockPart{902, "sub2", 3}, blockPart{900, "top2", 4})
	if err := w.StreamAbort(900, 901); err != nil { // ROLLBACK TO SAVEPOINT
		t.Fatal(err)
	}
	if got := len(files(t, sp.Dir(), streamExt)); got != 1 {
		t.Fatalf("%d stream files while streaming, want 1", got)
	}
	if err := w.StreamCommit(900, 0x3000, 0x3008, time.Unix(1700000000, 0)); err != nil {
		t.Fatal(err)
	}
	if got := w.Held(); got.CommitLSN != 0x3000 || got.EndLSN != 0x3008 {
		t.Errorf("held after stream commit = %+v", got)
	}
	writeTxn(t, w, 702, 0x4000, 1)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got := files(t, sp.Dir(), streamExt); len(got) != 0 {
		t.Fatalf("stream files left: %v", got)
	}

	segs, err := sp.Sealed()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range segs {
		names = append(names, fmt.Sprintf("%s-%s", s.FirstLSN, s.LastLSN))
	}
	if want := "[0/1000-0/2000 0/3000-0/3000 0/4000-0/4000]"; fmt.Sprint(names) != want {
		t.Fatalf("segments %v, want %s", names, want)
	}
	txns, msgs := readAll(t, sp)
	var xids []uint32
	for _, tx := range txns {
		xids = append(xids, tx.Xid)
	}
	if fmt.Sprint(xids) != "[700 701 900 702]" {
		t.Fatalf("transactions in order %v", xids)
	}
	var got []string
	for _, m := range msgs[2] {
		got = append(got, m.b)
	}
	var want []string
	for i := 0; i < 10; i++ {
		want = append(want, fmt.Sprintf("Itop-%d", i))
	}
	for i := 0; i < 3; i++ {
		want = append(want, fmt.Sprintf("Isub2-%d", i))
	}
	for i := 0; i < 4; i++ {
		want = append(want, fmt.Sprintf("Itop2-%d", i))
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("streamed transaction reads back\n%q\nwant\n%q", got, want)
	}
	if txns[2].Messages != 22 {
		t.Errorf("streamed transaction record counts %d messages, want 22 (aborted ones included)", txns[2].Messages)
	}
	seg, _ := OpenSegment(segs[1])
	var rels []string
	seg.Relations(func(m []byte) error { rels = append(rels, string(m)); return nil })
	seg.Close()
	if len(rels) != 1 {
		t.Errorf("stream segment relations snapshot %q", rels)
	}
}

func TestStreamAbortAndRestart(t *testing.T) {
	t.Parallel()
	sp, _ := Open(t.TempDir(), Options{GroupBytes: 64})
	w, err := sp.OpenWriter()
	if err != nil {
		t.Fatal(err)
	}
	streamBlock(t, w, 50, true, blockPart{50, "a", 20})
	if err := w.StreamAbort(50, 50); err != nil {
		t.Fatal(err)
	}
	if got := files(t, sp.Dir(), streamExt); len(got) != 0 {
		t.Fatalf("aborted stream left %v", got)
	}
	if err := w.StreamCommit(50, 0x10, 0x18, time.Now()); err == nil {
		t.Fatal("commit of an aborted stream accepted")
	}
	// The server starts a transaction over (first segment again): what was
	// held for it is dropped.
	streamBlock(t, w, 60, true, blockPart{60, "old", 7})
	streamBlock(t, w, 60, true, blockPart{60, "new", 2})
	if err := w.StreamCommit(60, 0x20, 0x28, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	txns, msgs := readAll(t, sp)
	if len(txns) != 1 || txns[0].Xid != 60 || len(msgs[0]) != 2 || msgs[0][0].b != "Inew-0" {
		t.Fatalf("txns %+v msgs %v", txns, msgs)
	}
}

func TestCrashMidStreamLeavesNothingComplete(t *testing.T) {
	t.Parallel()
	sp, _ := Open(t.TempDir(), Options{GroupBytes: 64})
	w, err := sp.OpenWriter()
	if err != nil {
		t.Fatal(err)
	}
	writeTxn(t, w, 1, 0x100, 1)
	streamBlock(t, w, 2, true, blockPart{2, "x", 30})
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	// Crash: the process dies; the kernel closes the files and the lock.
	w.wait()
	w.seg.Close()
	for _, s := range w.streams {
		s.db.Close()
	}
	w.lock.Unlock()
	if got := files(t, sp.Dir(), streamExt); len(got) != 1 {
		t.Fatalf("stream files before recovery: %v", got)
	}

	w2, err := sp.OpenWriter()
	if err != nil {
		t.Fatal(err)
	}
	if got := files(t, sp.Dir(), streamExt); len(got) != 0 {
		t.Fatalf("recovery left %v", got)
	}
	if got := w2.Held().CommitLSN; got != 0x100 {
		t.Fatalf("held = %s, want 0/100", got)
	}
	if err := w2.StreamStart(2, false); err == nil {
		t.Fatal("continuing a stream the writer never saw was accepted")
	}
	if err := w2.Close(); err != nil {
		t.Fatal(err)
	}
	txns, _ := readAll(t, sp)
	if len(txns) != 1 || txns[0].Xid != 1 {
		t.Fatalf("txns after recovery %+v", txns)
	}
}

func TestLostConnectionDropsPartialChunks(t *testing.T) {
	t.Parallel()
	sp, _ := Open(t.TempDir(), Options{GroupBytes: 64})
	w, err := sp.OpenWriter()
	if err != nil {
		t.Fatal(err)
	}
	w.Begin(11)
	for i := 0; i < 40; i++ { // several chunks, written
		if err := w.Append(0x150, []byte("Ipartial")); err != nil {
			t.Fatal(err)
		}
	}
	streamBlock(t, w, 12, true, blockPart{12, "s", 3})
	w.Abort() // the connection is lost
	if got := files(t, sp.Dir(), streamExt); len(got) != 0 {
		t.Fatalf("lost connection left stream files %v", got)
	}
	writeTxn(t, w, 11, 0x200, 3) // sent again, whole
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	txns, msgs := readAll(t, sp)
	if len(txns) != 1 || len(msgs[0]) != 3 || msgs[0][0].b != "x11-0" {
		t.Fatalf("txns %+v msgs %v", txns, msgs)
	}
	segs, _ := sp.Sealed()
	if got, want := countKeys(t, segs[0], 11), int(txns[0].chunks); got != want {
		t.Fatalf("%d chunks of xid 11 in the segment, want %d", got, want)
	}
}

func TestWriteErrorIsSticky(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sp, _ := Open(dir, Options{BeforeWrite: func() error { return syscall.ENOSPC }})
	w, err := sp.OpenWriter()
	if err != nil {
		t.Fatal(err)
	}
	writeTxn(t, w, 1, 0x10, 2)
	if err := w.Flush(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("flush: %v, want ENOSPC", err)
	}
	w.Begin(2)
	w.Append(0x20, []byte("I"))
	if err := w.Commit(2, 0x20, 0x28, time.Now()); err != nil {
		t.Fatal(err) // buffered: the error shows at the next write
	}
	if err := w.Flush(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("second flush: %v, want ENOSPC", err)
	}
	if err := w.Close(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("close: %v, want ENOSPC", err)
	}
	// The next writer recovers: nothing was written.
	sp2, _ := Open(dir, Options{})
	w2, err := sp2.OpenWriter()
	if err != nil {
		t.Fatal(err)
	}
	if err := w2.Close(); err != nil {
		t.Fatal(err)
	}
	if segs, _ := sp2.Sealed(); len(segs) != 0 {
		t.Fatalf("segments after failed writes: %+v", segs)
	}
}

// A spool written by an earlier wal-cake (one bbolt value per message) still
// reads.
func TestReadsPerMessageFormat(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, sealedName(0x500, 0x500))
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, _ := tx.CreateBucket(bucketMeta)
		meta.Put(keyFormat, []byte(formatPerMessage))
		tx.CreateBucket(bucketRelations)
		msgs, _ := tx.CreateBucket(bucketMsgs)
		for i := uint64(0); i < 3; i++ {
			v := binary.BigEndian.AppendUint64(nil, 0x400+i)
			msgs.Put(msgKey(9, i), append(v, fmt.Sprintf("I%d", i)...))
		}
		txns, _ := tx.CreateBucket(bucketTxns)
		k := binary.BigEndian.AppendUint64(nil, 0x500)
		v := binary.BigEndian.AppendUint32(nil, 9)
		v = binary.BigEndian.AppendUint64(v, 0x508)
		v = binary.BigEndian.AppendUint64(v, uint64(time.Unix(1700000000, 0).UnixMicro()))
		v = binary.BigEndian.AppendUint64(v, 3)
		return txns.Put(k, v)
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	sp, _ := Open(dir, Options{})
	txns, msgs := readAll(t, sp)
	if len(txns) != 1 || len(msgs[0]) != 3 || msgs[0][2] != (msg{0x402, "I2"}) {
		t.Fatalf("txns %+v msgs %v", txns, msgs)
	}
	// A writer opened on it positions itself after it.
	w, err := sp.OpenWriter()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if w.Held().EndLSN != 0x508 {
		t.Fatalf("held %+v", w.Held())
	}
}

func TestStatCountsStreams(t *testing.T) {
	t.Parallel()
	sp, _ := Open(t.TempDir(), Options{})
	w, err := sp.OpenWriter()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	streamBlock(t, w, 3, true, blockPart{3, "x", 1})
	if open, _ := sp.HasOpenSegments(); !open {
		t.Error("a streamed transaction in progress does not count as open")
	}
	st, err := sp.Stat()
	if err != nil || st.Open != 1 {
		t.Errorf("stat %+v, %v", st, err)
	}
}
