package spool

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
)

// A pgbench_accounts-like Insert message: 'I', relation id, 'N', 4 columns
// of text (aid, bid, abalance, an 84-character filler).
var benchInsert = func() []byte {
	m := []byte{'I', 0, 0, 0x40, 0, 'N', 0, 4}
	for _, v := range []string{"123456", "2", "0", string(make([]byte, 84))} {
		m = append(m, 't', 0, 0, 0, byte(len(v)))
		m = append(m, v...)
	}
	return m
}()

// BenchmarkWriterAppend measures appending committed transactions of 10,000
// inserts each, fsync included, and reports the segment bytes on disk per
// message.
func BenchmarkWriterAppend(b *testing.B) {
	for _, group := range []int{256 << 10, 1 << 20, 4 << 20} {
		b.Run(fmt.Sprintf("group=%dKiB", group>>10), func(b *testing.B) { benchAppend(b, group) })
	}
}

func benchAppend(b *testing.B, groupBytes int) {
	dir := b.TempDir()
	sp, err := Open(dir, Options{SegmentMaxBytes: 1 << 40, GroupBytes: groupBytes})
	if err != nil {
		b.Fatal(err)
	}
	w, err := sp.OpenWriter()
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(benchInsert)))
	b.ReportAllocs()
	b.ResetTimer()
	xid := uint32(1000)
	lsn := pglogrepl.LSN(0x1000000)
	for i := 0; i < b.N; {
		w.Begin(xid)
		for j := 0; j < 10_000 && i < b.N; j++ {
			lsn += 0x100
			if err := w.Append(lsn, benchInsert); err != nil {
				b.Fatal(err)
			}
			i++
		}
		lsn += 0x100
		if err := w.Commit(xid, lsn, lsn+8, time.Now()); err != nil {
			b.Fatal(err)
		}
		xid++
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(diskBytes(b, dir))/float64(b.N), "disk-B/msg")
	b.ReportMetric(float64(apparentBytes(b, dir))/float64(b.N), "file-B/msg")
}

// diskBytes is the space the segment files take on disk (allocated blocks).
func diskBytes(tb testing.TB, dir string) int64 {
	tb.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, "*"+sealedExt))
	var n int64
	for _, p := range m {
		fi, err := os.Stat(p)
		if err != nil {
			tb.Fatal(err)
		}
		n += fi.Sys().(*syscall.Stat_t).Blocks * 512
	}
	return n
}

func apparentBytes(tb testing.TB, dir string) int64 {
	m, _ := filepath.Glob(filepath.Join(dir, "*"+sealedExt))
	var n int64
	for _, p := range m {
		fi, err := os.Stat(p)
		if err != nil {
			tb.Fatal(err)
		}
		n += fi.Size()
	}
	return n
}
