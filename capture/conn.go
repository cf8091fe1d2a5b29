package capture

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"golang.org/x/sys/unix"
)

// sessionParams fix the text formats pgoutput uses for values, whatever the
// server's defaults: compaction parses timestamps as UTC in ISO style.
var sessionParams = map[string]string{
	"TimeZone":           "UTC",
	"DateStyle":          "ISO, YMD",
	"IntervalStyle":      "postgres",
	"extra_float_digits": "3",
	"application_name":   "walcake",
}

// connectReplication opens a logical replication connection (replication =
// database) with wal-cake's session settings.
func connectReplication(ctx context.Context, connString string) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("parse PG_CONN_STRING: %w", redactParseError(err))
	}
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	for k, v := range sessionParams {
		cfg.RuntimeParams[k] = v
	}
	cfg.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect for replication: %w", err)
	}
	return conn, nil
}

// redactParseError drops the connection string that pgconn's parse errors
// may quote.
func redactParseError(err error) error {
	// pe.Unwrap() is nil for some strings (port=x): see slotcheck.go.
	return parseErrorWithoutConnString(err)
}

var slotNameRE = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// ValidateSlotName checks a replication slot name the way PostgreSQL does.
func ValidateSlotName(name string) error {
	if !slotNameRE.MatchString(name) {
		return fmt.Errorf("slot name %q: use 1 to 63 lower-case letters, digits and underscores", name)
	}
	return nil
}

// quoteLiteral quotes s as an SQL string literal.
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// publicationNamesArg is the pgoutput option naming one publication; the
// server splits its value as a list of identifiers, so the name is
// double-quoted inside the literal.
func publicationNamesArg(pub string) string {
	return "publication_names " + quoteLiteral(`"`+strings.ReplaceAll(pub, `"`, `""`)+`"`)
}

// retriable reports whether a replication error is worth reconnecting for.
func retriable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	if errors.Is(err, errServerDraining) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case strings.HasPrefix(pgErr.Code, "08"), // connection exception
			pgErr.Code == "57P01", // admin_shutdown (pg_terminate_backend, fast shutdown)
			pgErr.Code == "57P02", // crash_shutdown
			pgErr.Code == "57P03", // cannot_connect_now (starting up)
			pgErr.Code == "53300", // too_many_connections
			pgErr.Code == "55006": // slot active: a previous walsender not yet gone
			return true
		}
		return false
	}
	var netErr net.Error
	if errors.As(err, &netErr) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) {
		return true
	}
	return pgconn.SafeToRetry(err)
}

// Reading the replication stream. The walsender sets the pace: it spends a
// few microseconds per TCP segment it sends, and a consumer that takes every
// message the moment it arrives makes it send one segment per message. So
// the stream is read in bulk: a large buffer, a receive low-water mark on the
// socket so that a read wakes for 64 KiB rather than for each segment, and a
// short deadline to take the tail when the server goes quiet.
const (
	readBufferSize = 256 << 10
	lowWater       = 64 << 10
	tailWait       = 5 * time.Millisecond
	writeTimeout   = 30 * time.Second
)

// replStream is a replication connection in COPY BOTH mode, taken over from
// pgconn after START_REPLICATION is sent: per message, pgconn's context
// handling costs more than the message. It is owned by one goroutine.
type replStream struct {
	nc    net.Conn
	in    *bulkReader
	br    *bufio.Reader
	skip  int // bytes of the previous message still to discard
	wbuf  []byte
	raw   syscall.RawConn // nil when the low-water mark cannot be set
	lowat int

	// A message larger than the read buffer is collected here, across
	// read timeouts.
	big     []byte
	bigType byte
	bigNeed int
	inBig   bool
}

// bulkReader notes when bytes last arrived and restores the low-water mark
// once data flows again.
type bulkReader struct {
	s    *replStream
	last time.Time
}

func (r *bulkReader) Read(p []byte) (int, error) {
	n, err := r.s.nc.Read(p)
	if n > 0 {
		r.last = time.Now()
		if r.s.lowat == 1 {
			r.s.setLowWater(lowWater)
		}
	}
	return n, err
}

// startReplication sends START_REPLICATION on conn, which must be idle, and
// takes the connection over once the server has switched to COPY BOTH.
func startReplication(ctx context.Context, conn *pgconn.PgConn, slot string, start pglogrepl.LSN, args []string) (*replStream, error) {
	if err := conn.SyncConn(ctx); err != nil {
		return nil, err
	}
	hc, err := conn.Hijack()
	if err != nil {
		return nil, err
	}
	s := &replStream{nc: hc.Conn}
	s.in = &bulkReader{s: s, last: time.Now()}
	s.br = bufio.NewReaderSize(s.in, readBufferSize)
	s.raw = rawConn(hc.Conn)
	stop := context.AfterFunc(ctx, s.interrupt)
	defer stop()

	sql := fmt.Sprintf("START_REPLICATION SLOT %s LOGICAL %s (%s)", slot, start, strings.Join(args, ", "))
	q := append([]byte{'Q', 0, 0, 0, 0}, sql...)
	q = append(q, 0)
	binary.BigEndian.PutUint32(q[1:5], uint32(len(q)-1))
	if err := s.write(q); err != nil {
		s.close()
		return nil, err
	}
	for {
		typ, body, err := s.next(writeTimeout)
		if err != nil {
			s.close()
			if ctx.Err() != nil {
				return nil, context.Cause(ctx)
			}
			return nil, err
		}
		switch typ {
		case 'W': // CopyBothResponse: streaming starts
			s.setLowWater(lowWater)
			return s, nil
		case 'E':
			s.close()
			return nil, pgError(body)
		case 'N', 'S': // notice, parameter status
		default:
			s.close()
			return nil, fmt.Errorf("unexpected message %q in reply to START_REPLICATION", typ)
		}
	}
}

// rawConn returns the socket of a TCP connection (under TLS or not), or nil.
func rawConn(nc net.Conn) syscall.RawConn {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	tcp, ok := nc.(*net.TCPConn)
	if !ok {
		return nil
	}
	raw, err := tcp.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}

// setLowWater sets the socket's SO_RCVLOWAT: how many bytes must be queued
// before a blocked read wakes (a deadline still ends the wait).
func (s *replStream) setLowWater(n int) {
	if s.raw == nil {
		return
	}
	var serr error
	if err := s.raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT, n)
	}); err != nil || serr != nil {
		s.raw = nil // not supported here: plain reads
		return
	}
	s.lowat = n
}

// idle lets the next message, however small, wake a blocked read.
func (s *replStream) idle() {
	if s.lowat > 1 {
		s.setLowWater(1)
	}
}

// lastData is when bytes last arrived.
func (s *replStream) lastData() time.Time { return s.in.last }

// interrupt makes a blocked read return at once (the context was cancelled).
func (s *replStream) interrupt() { s.nc.SetReadDeadline(time.Unix(1, 0)) }

// next returns the next protocol message: its type and body, valid until the
// following call. It waits at most wait for bytes to arrive; a timeout
// leaves what was read buffered for the next call.
func (s *replStream) next(wait time.Duration) (byte, []byte, error) {
	if s.skip > 0 {
		s.br.Discard(s.skip)
		s.skip = 0
	}
	if s.inBig {
		return s.readBig(wait)
	}
	if s.br.Buffered() < 5 {
		s.nc.SetReadDeadline(time.Now().Add(wait))
	}
	hdr, err := s.br.Peek(5)
	if err != nil {
		return 0, nil, err
	}
	typ := hdr[0]
	n := int(binary.BigEndian.Uint32(hdr[1:5]))
	if n < 4 {
		return 0, nil, fmt.Errorf("replication stream: message %q of length %d", typ, n)
	}
	if total := 1 + n; total <= s.br.Size() {
		if s.br.Buffered() < total {
			s.nc.SetReadDeadline(time.Now().Add(wait))
		}
		b, err := s.br.Peek(total)
		if err != nil {
			return 0, nil, err
		}
		s.skip = total
		return typ, b[5:], nil
	}
	s.br.Discard(5)
	s.inBig, s.bigType, s.bigNeed = true, typ, n-4
	if cap(s.big) < s.bigNeed || cap(s.big) > 4*s.bigNeed {
		s.big = make([]byte, 0, s.bigNeed)
	}
	s.big = s.big[:0]
	return s.readBig(wait)
}

func (s *replStream) readBig(wait time.Duration) (byte, []byte, error) {
	for len(s.big) < s.bigNeed {
		if s.br.Buffered() == 0 {
			s.nc.SetReadDeadline(time.Now().Add(wait))
		}
		n, err := s.br.Read(s.big[len(s.big):s.bigNeed])
		s.big = s.big[:len(s.big)+n]
		if err != nil {
			return 0, nil, err
		}
	}
	s.inBig = false
	return s.bigType, s.big, nil
}

// pgEpoch is PostgreSQL's time zero, in Unix microseconds.
const pgEpoch = 946684800 * 1_000_000

// sendStatus sends a standby status update. All three positions are always
// set explicitly.
func (s *replStream) sendStatus(write, flush, apply pglogrepl.LSN, now time.Time, replyRequested bool) error {
	b := append(s.wbuf[:0], 'd', 0, 0, 0, 0, 'r')
	b = binary.BigEndian.AppendUint64(b, uint64(write))
	b = binary.BigEndian.AppendUint64(b, uint64(flush))
	b = binary.BigEndian.AppendUint64(b, uint64(apply))
	b = binary.BigEndian.AppendUint64(b, uint64(now.UnixMicro()-pgEpoch))
	reply := byte(0)
	if replyRequested {
		reply = 1
	}
	b = append(b, reply)
	binary.BigEndian.PutUint32(b[1:5], uint32(len(b)-1))
	s.wbuf = b
	return s.write(b)
}

func (s *replStream) write(b []byte) error {
	s.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err := s.nc.Write(b)
	return err
}

// close sends Terminate and closes the connection.
func (s *replStream) close() {
	s.nc.SetWriteDeadline(time.Now().Add(time.Second))
	s.nc.Write([]byte{'X', 0, 0, 0, 4})
	s.nc.Close()
}

// pgError decodes an ErrorResponse body.
func pgError(body []byte) error {
	var er pgproto3.ErrorResponse
	if err := er.Decode(body); err != nil {
		return fmt.Errorf("decode server error: %w", err)
	}
	return pgconn.ErrorResponseToPgError(&er)
}

// isTimeout reports whether err is a read deadline passing.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// serverMajor is the major version in a server_version parameter ("15.4
// (Debian ...)", "9.6.24"), or 0.
func serverMajor(v string) int {
	n := 0
	for i := 0; i < len(v) && v[i] >= '0' && v[i] <= '9'; i++ {
		n = n*10 + int(v[i]-'0')
	}
	return n
}
