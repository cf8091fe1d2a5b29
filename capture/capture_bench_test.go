package capture

import (
	"bufio"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/wal-cake/wal-cake/spool"
)

// A pgbench_accounts-like Insert message (protocol 1 layout).
func insertMessage(aid int) []byte {
	m := []byte{'I', 0, 0, 0x40, 0, 'N', 0, 4}
	filler := make([]byte, 84)
	for i := range filler {
		filler[i] = ' '
	}
	for _, v := range [][]byte{[]byte("1234567"), []byte("13"), []byte("0"), filler} {
		m = append(m, 't')
		m = binary.BigEndian.AppendUint32(m, uint32(len(v)))
		m = append(m, v...)
	}
	return m
}

// copyData wraps a pgoutput message as the server sends it: CopyData of an
// XLogData message.
func copyData(buf []byte, lsn pglogrepl.LSN, msg []byte) []byte {
	buf = append(buf, 'd')
	buf = binary.BigEndian.AppendUint32(buf, uint32(4+25+len(msg)))
	buf = append(buf, 'w')
	buf = binary.BigEndian.AppendUint64(buf, uint64(lsn))
	buf = binary.BigEndian.AppendUint64(buf, uint64(lsn))
	buf = binary.BigEndian.AppendUint64(buf, 0)
	return append(buf, msg...)
}

// replayConn serves a recorded replication stream over and over; writes
// (status updates) are discarded.
type replayConn struct {
	net.Conn
	data []byte
	off  int
}

func (c *replayConn) Read(p []byte) (int, error) {
	if c.off == len(c.data) {
		c.off = 0
	}
	n := copy(p, c.data[c.off:])
	c.off += n
	return n, nil
}
func (c *replayConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *replayConn) SetReadDeadline(time.Time) error  { return nil }
func (c *replayConn) SetWriteDeadline(time.Time) error { return nil }
func (c *replayConn) Close() error                     { return nil }

// recordedStream is one transaction of n inserts: Begin, a Relation, the
// inserts, Commit.
func recordedStream(xid uint32, n int) []byte {
	var buf []byte
	lsn := pglogrepl.LSN(0x1000000)
	begin := []byte{'B'}
	begin = binary.BigEndian.AppendUint64(begin, uint64(lsn)+uint64(n+2)*0x100) // final LSN
	begin = binary.BigEndian.AppendUint64(begin, 0)
	begin = binary.BigEndian.AppendUint32(begin, xid)
	buf = copyData(buf, lsn, begin)
	rel := []byte{'R', 0, 0, 0x40, 0}
	rel = append(rel, "public\x00t\x00d"...)
	rel = binary.BigEndian.AppendUint16(rel, 0)
	buf = copyData(buf, lsn, rel)
	for i := 0; i < n; i++ {
		lsn += 0x100
		buf = copyData(buf, lsn, insertMessage(i))
	}
	lsn += 0x100
	commit := []byte{'C', 0}
	commit = binary.BigEndian.AppendUint64(commit, uint64(lsn))
	commit = binary.BigEndian.AppendUint64(commit, uint64(lsn)+0x30)
	commit = binary.BigEndian.AppendUint64(commit, 0)
	return copyData(buf, lsn, commit)
}

// BenchmarkCaptureChange measures capture's work per change: reading the
// message off the connection, dispatching it and appending it to the spool
// (fsync of each group included, commits every 10,000 changes). The
// walsender's work and the network are not included.
func BenchmarkCaptureChange(b *testing.B) {
	sp, err := spool.Open(b.TempDir(), spool.Options{SegmentMaxBytes: 1 << 40})
	if err != nil {
		b.Fatal(err)
	}
	w, err := sp.OpenWriter()
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	const perTxn = 10_000
	rs := &replStream{nc: &replayConn{data: recordedStream(700, perTxn)}}
	rs.in = &bulkReader{s: rs}
	rs.br = bufio.NewReaderSize(rs.in, readBufferSize)
	cfg := Config{ConnString: "x", Slot: "s", Publication: "p", Follow: true}
	if err := cfg.Validate(); err != nil {
		b.Fatal(err)
	}
	c := &capturer{cfg: cfg, sp: sp, w: w, log: slog.New(slog.DiscardHandler), streams: map[uint32]*streamCounts{}}

	b.ReportAllocs()
	b.ResetTimer()
	cycle := uint64(0)
	for changes := 0; changes < b.N; {
		typ, body, err := rs.next(time.Second)
		if err != nil {
			b.Fatal(err)
		}
		if typ != 'd' {
			b.Fatalf("message %q", typ)
		}
		// Each replay of the recorded transaction is a new transaction:
		// move its commit positions on.
		switch body[25] {
		case 'I':
			changes++
		case 'B':
			cycle++
			shift(body[26:34], cycle)
		case 'C':
			shift(body[27:35], cycle)
			shift(body[35:43], cycle)
		}
		if _, err := c.handleCopyData(rs, body); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
}

func shift(lsn []byte, cycle uint64) {
	binary.BigEndian.PutUint64(lsn, binary.BigEndian.Uint64(lsn)&0xFFFFFFF+cycle<<28)
}

// BenchmarkParseChange is what capture avoids: pglogrepl's Parse and
// TupleData decode of each change.
func BenchmarkParseChange(b *testing.B) {
	msg := insertMessage(1)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		m, err := pglogrepl.Parse(msg)
		if err != nil {
			b.Fatal(err)
		}
		ins := m.(*pglogrepl.InsertMessage)
		for _, col := range ins.Tuple.Columns {
			_ = string(col.Data)
		}
	}
}

var _ io.Reader = (*replayConn)(nil)
