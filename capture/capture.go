package capture

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/wal-cake/wal-cake/spool"
)

// ErrSlotMissing is returned when the replication slot does not exist.
var ErrSlotMissing = errors.New("replication slot does not exist")

// Config configures a capture run.
type Config struct {
	ConnString  string
	Slot        string
	Publication string
	// Follow keeps streaming until ctx is cancelled; otherwise Run returns
	// once it has caught up with the server's WAL position seen at start.
	Follow bool
	// StatusInterval is how often a status update goes to the server.
	// Default 10 s.
	StatusInterval time.Duration
	// IdleWait is how long without a message before capture flushes its
	// buffer and asks the server where it is. Default 500 ms.
	IdleWait time.Duration
	// MaxReconnects bounds reconnection attempts in a row without progress
	// when not following. Default 5. Following retries forever.
	MaxReconnects int
	Logger        *slog.Logger
	// Progress, when set, is called from the streaming goroutine at every
	// status interval with the figures so far (metrics, progress logs). It
	// must not block.
	Progress func(Stats)
	// Protocol is the pgoutput protocol version. 0 picks 2 with streaming
	// of large in-progress transactions on PostgreSQL 14 and later, and 1
	// before; 1 forces protocol 1 (a large transaction then spills to disk
	// on the server until it commits).
	Protocol int
}

// Validate checks the configuration and fills in defaults.
func (c *Config) Validate() error {
	if c.ConnString == "" {
		return errors.New("no PostgreSQL connection string (PG_CONN_STRING)")
	}
	if err := ValidateSlotName(c.Slot); err != nil {
		return err
	}
	if c.Publication == "" {
		return errors.New("no publication name (PG_PUBLICATION)")
	}
	if c.StatusInterval <= 0 {
		c.StatusInterval = 10 * time.Second
	}
	if c.IdleWait <= 0 {
		c.IdleWait = 500 * time.Millisecond
	}
	if c.MaxReconnects <= 0 {
		c.MaxReconnects = 5
	}
	if c.Protocol < 0 || c.Protocol > 2 {
		return fmt.Errorf("pgoutput protocol %d: want 1 or 2 (0 picks)", c.Protocol)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Stats are the figures of a capture run.
type Stats struct {
	Txns       int64         // transactions written to the spool
	Changes    int64         // insert, update, delete and truncate messages written
	Bytes      int64         // bytes of messages written
	Skipped    int64         // transactions skipped because the spool held them
	StartLSN   pglogrepl.LSN // server position when the run started (its target)
	EndLSN     pglogrepl.LSN // newest server position seen
	Reconnects int
}

// Run streams the slot into the spool until caught up (or, with Follow,
// until ctx is cancelled, then returns ctx's cause).
func Run(ctx context.Context, cfg Config, sp *spool.Spool) (Stats, error) {
	if err := cfg.Validate(); err != nil {
		return Stats{}, err
	}
	w, err := sp.OpenWriter()
	if err != nil {
		return Stats{}, err
	}
	if err := sp.ClearScanned(); err != nil {
		w.Close()
		return Stats{}, err
	}
	c := &capturer{cfg: cfg, sp: sp, w: w, log: cfg.Logger.With("slot", cfg.Slot), streams: map[uint32]*streamCounts{}}
	err = c.run(ctx)
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err == nil && c.caughtUp {
		// Every transaction that committed before the server's position is
		// now in a sealed segment: compaction may confirm up to it.
		err = sp.SetScanned(c.serverPos)
	}
	return c.stats, err
}

type capturer struct {
	cfg Config
	sp  *spool.Spool
	w   *spool.Writer
	log *slog.Logger

	stats     Stats
	target    pglogrepl.LSN // stop once the server has sent up to here
	serverPos pglogrepl.LSN // server's sent position at the last transaction boundary
	received  pglogrepl.LSN // end of the newest message received
	caughtUp  bool
	// slotConfirmed is the slot's confirmed_flush_lsn when we connected:
	// repeating it to the server confirms nothing new.
	slotConfirmed pglogrepl.LSN

	skipping bool // the current transaction is already in the spool
	curXid   uint32

	// XLogData messages received, and when their count last changed: the
	// stream is idle once it has not for IdleWait.
	xlogCount, xlogSeen uint64
	lastXLog            time.Time

	// Protocol 2: the open stream block and the streamed transactions in
	// progress.
	inStream  bool
	streamXid uint32
	cur       *streamCounts
	streams   map[uint32]*streamCounts

	// Reply-requested keepalives in a row with no XLogData between them,
	// and when the row began (see shutdownSpin).
	pings     int
	pingStart time.Time
	pingXLog  uint64
}

// A server shutting down (pg_ctl stop -m fast or smart) lets a walsender
// exit only once its client confirms every WAL byte sent. Capture confirms
// only what the lake holds, so while its spool holds changes the lake lacks
// the walsender asks again the moment each reply arrives, and the shutdown
// waits forever (compaction cannot connect to a server shutting down). A
// burst of drainPings reply-requested keepalives within drainWindow with no
// data between them is that loop: capture then ends the stream, which lets
// the walsender exit, and reconnects with backoff. A healthy walsender asks
// at most once per wal_sender_timeout/2 (30 s by default).
const (
	drainPings  = 20
	drainWindow = time.Second
)

// errServerDraining ends a stream whose server is shutting down; it is
// retried like a lost connection.
var errServerDraining = errors.New("server is shutting down and waits for a confirmation the lake does not allow yet; disconnecting")

// shutdownSpin counts a reply-requested keepalive and reports whether it
// completes a shutdown burst.
func (c *capturer) shutdownSpin() bool {
	now := time.Now()
	if c.xlogCount != c.pingXLog || now.Sub(c.pingStart) > drainWindow {
		c.pings, c.pingStart, c.pingXLog = 0, now, c.xlogCount
	}
	c.pings++
	return c.pings >= drainPings
}

func (c *capturer) run(ctx context.Context) error {
	failures := 0
	for {
		progress := c.stats.Txns
		err := c.stream(ctx)
		if err == nil {
			return nil
		}
		c.w.Abort()
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if !retriable(err) {
			return err
		}
		if c.stats.Txns > progress {
			failures = 0
		}
		failures++
		if !c.cfg.Follow && failures > c.cfg.MaxReconnects {
			return fmt.Errorf("capture: giving up after %d reconnects: %w", failures-1, err)
		}
		c.stats.Reconnects++
		delay := backoff(failures)
		c.log.Warn("replication connection lost, reconnecting", "err", err, "attempt", failures, "in", delay.Round(time.Millisecond))
		if err := sleepCtx(ctx, delay); err != nil {
			return err
		}
	}
}

// backoff is exponential from 500 ms to 30 s with full jitter above half.
func backoff(attempt int) time.Duration {
	d := 500 * time.Millisecond << min(attempt-1, 6)
	d = min(d, 30*time.Second)
	return d/2 + rand.N(d/2+1)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

// stream runs one replication connection. It returns nil once caught up
// (never when following).
func (c *capturer) stream(ctx context.Context) error {
	conn, err := connectReplication(ctx, c.cfg.ConnString)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background()) // a no-op once taken over

	if err := c.checkSlot(ctx, conn); err != nil {
		return err
	}
	if c.target == 0 {
		target, err := currentInsertLSN(ctx, conn)
		if err != nil {
			return err
		}
		c.target = target
		c.stats.StartLSN = target
	}
	proto := c.cfg.Protocol
	if proto == 0 {
		proto = 1
		if serverMajor(conn.ParameterStatus("server_version")) >= 14 {
			proto = 2
		}
	}
	start := c.w.Held().EndLSN
	args := []string{fmt.Sprintf("proto_version '%d'", proto), publicationNamesArg(c.cfg.Publication)}
	if proto >= 2 {
		// Large transactions stream into the spool as they happen instead
		// of spilling to disk on the server until they commit.
		args = append(args, "streaming 'on'")
	}
	rs, err := startReplication(ctx, conn, c.cfg.Slot, start, args)
	if err != nil {
		return fmt.Errorf("start replication on slot %s: %w", c.cfg.Slot, err)
	}
	defer rs.close()
	stop := context.AfterFunc(ctx, rs.interrupt)
	defer stop()
	c.inStream = false
	c.lastXLog = time.Now()
	c.log.Info("streaming", "from", start.String(), "target", c.target.String(), "follow", c.cfg.Follow, "protocol", proto)

	nextStatus := time.Now().Add(c.cfg.StatusInterval)
	askedServer := false
	var lastIdle time.Time
	wait := tailWait
	for n := 1; ; n++ {
		typ, body, err := rs.next(wait)
		if err != nil {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			if !isTimeout(err) {
				return fmt.Errorf("receive: %w", err)
			}
		} else {
			switch typ {
			case 'd': // CopyData
				done, err := c.handleCopyData(rs, body)
				if err != nil {
					return err
				}
				if done {
					c.caughtUp = true
					c.log.Debug("caught up", "server_lsn", c.serverPos.String(), "txns", c.stats.Txns, "changes", c.stats.Changes)
					return c.sendStatus(rs, false)
				}
			case 'E':
				return pgError(body)
			case 'c':
				return errors.New("server ended the replication stream")
			default:
				// NoticeResponse, ParameterStatus: nothing to do.
			}
			if typ == 'd' && len(body) > 0 && body[0] == pglogrepl.XLogDataByteID {
				// Changes flow: take the tail of a burst soon, and keep
				// the housekeeping below off the hot path.
				wait = tailWait
				if n%1024 != 0 {
					continue
				}
			}
		}

		// A read timed out, a keepalive came, or another 1024 messages
		// passed: status updates and, once no change has come for
		// IdleWait, the idle work.
		now := time.Now()
		if c.xlogCount != c.xlogSeen {
			c.xlogSeen, c.lastXLog = c.xlogCount, now
		}
		if !now.Before(nextStatus) {
			if err := c.sendStatus(rs, false); err != nil {
				return err
			}
			nextStatus = now.Add(c.cfg.StatusInterval)
			if c.cfg.Progress != nil {
				c.cfg.Progress(c.stats)
			}
		}
		if now.Sub(c.lastXLog) < c.cfg.IdleWait {
			continue // changes flowed a moment ago
		}
		// Idle: no change for IdleWait (keepalives, which the server sends
		// after each status update, do not count). At most once per
		// IdleWait: make what we hold durable, seal when due, and ask the
		// server for its position so a batch run can end.
		if now.Sub(lastIdle) >= c.cfg.IdleWait {
			lastIdle = now
			c.log.Debug("idle", "received", c.received.String(), "server_lsn", c.serverPos.String())
			if err := c.idle(); err != nil {
				return err
			}
			if !askedServer || !c.cfg.Follow {
				if err := c.sendStatus(rs, true); err != nil {
					return err
				}
				askedServer = true
			}
			rs.idle()
		}
		wait = max(min(c.cfg.IdleWait-time.Since(lastIdle), time.Until(nextStatus)), tailWait)
	}
}

// idle flushes buffered messages and seals the segment when it is due.
func (c *capturer) idle() error {
	if err := c.w.Flush(); err != nil {
		return err
	}
	if c.w.SealDue() {
		return c.w.Seal()
	}
	return nil
}

func (c *capturer) handleCopyData(rs *replStream, data []byte) (done bool, err error) {
	if len(data) == 0 {
		return false, nil
	}
	switch data[0] {
	case pglogrepl.XLogDataByteID:
		c.xlogCount++
		if len(data) < 25 {
			return false, fmt.Errorf("short XLogData message (%d bytes)", len(data))
		}
		lsn := pglogrepl.LSN(binary.BigEndian.Uint64(data[1:9]))
		if lsn > c.received {
			c.received = lsn
		}
		return c.handleMessage(lsn, data[25:])
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		if len(data) < 18 {
			return false, fmt.Errorf("short keepalive message (%d bytes)", len(data))
		}
		c.noteServerPos(pglogrepl.LSN(binary.BigEndian.Uint64(data[1:9])))
		if data[17] != 0 {
			if c.shutdownSpin() {
				return false, errServerDraining
			}
			if err := c.sendStatus(rs, false); err != nil {
				return false, err
			}
		}
		return !c.cfg.Follow && !c.w.InTxn() && c.serverPos >= c.target, nil
	}
	return false, nil
}

func (c *capturer) noteServerPos(pos pglogrepl.LSN) {
	if !c.w.InTxn() && pos > c.serverPos {
		c.serverPos = pos
	}
	if pos > c.stats.EndLSN {
		c.stats.EndLSN = pos
	}
}

// handleMessage stores one pgoutput message. It reports done once a commit
// reaches the target position. Changes are stored raw, undecoded.
func (c *capturer) handleMessage(lsn pglogrepl.LSN, msg []byte) (done bool, err error) {
	if len(msg) == 0 {
		return false, nil
	}
	if c.inStream {
		return false, c.handleStreamed(lsn, msg)
	}
	switch pglogrepl.MessageType(msg[0]) {
	case pglogrepl.MessageTypeInsert, pglogrepl.MessageTypeUpdate, pglogrepl.MessageTypeDelete, pglogrepl.MessageTypeTruncate:
		return false, c.appendMsg(lsn, msg, true)

	case pglogrepl.MessageTypeBegin:
		var b pglogrepl.BeginMessage
		if err := b.Decode(msg[1:]); err != nil {
			return false, fmt.Errorf("decode begin at %s: %w", lsn, err)
		}
		held := c.w.Held()
		c.skipping = held.CommitLSN != 0 && b.FinalLSN <= held.CommitLSN
		if c.skipping {
			c.stats.Skipped++
		}
		c.w.Begin(b.Xid)
		c.curXid = b.Xid
		return false, nil

	case pglogrepl.MessageTypeCommit:
		var cm pglogrepl.CommitMessage
		if err := cm.Decode(msg[1:]); err != nil {
			return false, fmt.Errorf("decode commit at %s: %w", lsn, err)
		}
		if c.skipping {
			c.w.Abort()
			c.skipping = false
		} else {
			if err := c.w.Commit(c.curXid, cm.CommitLSN, cm.TransactionEndLSN, cm.CommitTime); err != nil {
				return false, err
			}
			c.stats.Txns++
			if c.w.SealDue() {
				if err := c.w.Seal(); err != nil {
					return false, err
				}
			}
		}
		c.noteServerPos(cm.TransactionEndLSN)
		return !c.cfg.Follow && cm.TransactionEndLSN >= c.target, nil

	case pglogrepl.MessageTypeRelation:
		if len(msg) < 5 {
			return false, fmt.Errorf("short relation message at %s", lsn)
		}
		c.w.Relation(binary.BigEndian.Uint32(msg[1:5]), msg)
		return false, c.appendMsg(lsn, msg, false)

	case pglogrepl.MessageTypeType:
		return false, c.appendMsg(lsn, msg, false)

	case pglogrepl.MessageTypeOrigin, pglogrepl.MessageTypeMessage:
		// Replication origins and logical decoding messages (heartbeats)
		// carry no table change.
		return false, nil

	case pglogrepl.MessageTypeStreamStart:
		if len(msg) < 6 {
			return false, fmt.Errorf("short stream start message at %s", lsn)
		}
		xid := binary.BigEndian.Uint32(msg[1:5])
		if err := c.w.StreamStart(xid, msg[5] == 1); err != nil {
			return false, err
		}
		c.inStream, c.streamXid = true, xid
		if msg[5] == 1 || c.streams[xid] == nil {
			c.streams[xid] = &streamCounts{}
		}
		c.cur = c.streams[xid]
		return false, nil

	case pglogrepl.MessageTypeStreamCommit:
		var sc pglogrepl.StreamCommitMessageV2
		if err := sc.DecodeV2(msg[1:], false); err != nil {
			return false, fmt.Errorf("decode stream commit at %s: %w", lsn, err)
		}
		counts := c.streams[sc.Xid]
		delete(c.streams, sc.Xid)
		if counts != nil {
			// The server counts a committed stream's Relation messages as
			// sent for the session and does not repeat them: later
			// segments must start with them.
			for _, rel := range counts.relations {
				c.w.Relation(binary.BigEndian.Uint32(rel[1:5]), rel)
			}
		}
		if held := c.w.Held(); held.CommitLSN != 0 && sc.CommitLSN <= held.CommitLSN {
			c.stats.Skipped++
			if err := c.w.StreamAbort(sc.Xid, sc.Xid); err != nil {
				return false, err
			}
		} else {
			if err := c.w.StreamCommit(sc.Xid, sc.CommitLSN, sc.TransactionEndLSN, sc.CommitTime); err != nil {
				return false, err
			}
			c.stats.Txns++
			if counts != nil {
				c.stats.Changes += counts.changes
				c.stats.Bytes += counts.bytes
			}
		}
		c.noteServerPos(sc.TransactionEndLSN)
		return !c.cfg.Follow && sc.TransactionEndLSN >= c.target, nil

	case pglogrepl.MessageTypeStreamAbort:
		if len(msg) < 9 {
			return false, fmt.Errorf("short stream abort message at %s", lsn)
		}
		xid, subxid := binary.BigEndian.Uint32(msg[1:5]), binary.BigEndian.Uint32(msg[5:9])
		if subxid == xid {
			delete(c.streams, xid)
		}
		return false, c.w.StreamAbort(xid, subxid)
	}
	return false, fmt.Errorf("unexpected pgoutput message %q at %s", msg[0], lsn)
}

// streamCounts are the figures of a streamed transaction, added to the
// run's when it commits.
type streamCounts struct {
	changes, bytes int64
	relations      [][]byte // its Relation messages, protocol 1 layout
}

// handleStreamed stores one message of an open stream block (protocol 2).
// Its messages carry the (sub)transaction's xid after the type byte; they
// are stored in the protocol 1 layout, the xid kept beside them so that a
// rolled-back subtransaction's changes can be skipped.
func (c *capturer) handleStreamed(lsn pglogrepl.LSN, msg []byte) error {
	typ := pglogrepl.MessageType(msg[0])
	switch typ {
	case pglogrepl.MessageTypeInsert, pglogrepl.MessageTypeUpdate, pglogrepl.MessageTypeDelete, pglogrepl.MessageTypeTruncate:
		if len(msg) < 5 {
			return fmt.Errorf("short streamed %q message at %s", msg[0], lsn)
		}
		c.cur.changes++
		c.cur.bytes += int64(len(msg) - 4)
		return c.w.StreamAppend(binary.BigEndian.Uint32(msg[1:5]), lsn, msg[0], msg[5:])
	case pglogrepl.MessageTypeRelation, pglogrepl.MessageTypeType:
		if len(msg) < 5 {
			return fmt.Errorf("short streamed %q message at %s", msg[0], lsn)
		}
		// Kept whatever subtransaction sent it: the server does not send a
		// relation twice in one streamed transaction.
		c.cur.bytes += int64(len(msg) - 4)
		if typ == pglogrepl.MessageTypeRelation && len(msg) >= 9 {
			c.cur.relations = append(c.cur.relations, append([]byte{msg[0]}, msg[5:]...))
		}
		return c.w.StreamAppend(c.streamXid, lsn, msg[0], msg[5:])
	case pglogrepl.MessageTypeStreamStop:
		c.inStream, c.cur = false, nil
		return c.w.StreamStop()
	case pglogrepl.MessageTypeMessage:
		return nil
	}
	return fmt.Errorf("unexpected pgoutput message %q at %s inside the stream of transaction %d", msg[0], lsn, c.streamXid)
}

func (c *capturer) appendMsg(lsn pglogrepl.LSN, msg []byte, change bool) error {
	if !c.w.InTxn() {
		return fmt.Errorf("pgoutput message %q at %s outside a transaction", msg[0], lsn)
	}
	if c.skipping {
		return nil
	}
	if change {
		c.stats.Changes++
	}
	c.stats.Bytes += int64(len(msg))
	return c.w.Append(lsn, msg)
}

// feedback is the position the server may consider flushed: never past a
// change the lake does not hold.
func (c *capturer) feedback() (pglogrepl.LSN, error) {
	committed, err := c.sp.Committed()
	if err != nil {
		return 0, err
	}
	// Never zero: pglogrepl would send the write position in its place.
	pos := max(committed.EndLSN, c.slotConfirmed)
	if c.serverPos > pos && c.w.Empty() && c.w.Held().EndLSN <= pos {
		sealed, err := c.sp.Sealed()
		if err != nil {
			return 0, err
		}
		if len(sealed) == 0 {
			// Nothing pending anywhere: what the server sent up to here is
			// in the lake or was never ours.
			pos = c.serverPos
		}
	}
	return pos, nil
}

func (c *capturer) sendStatus(rs *replStream, replyRequested bool) error {
	flush, err := c.feedback()
	if err != nil {
		return err
	}
	write := max(c.received, flush)
	if err := rs.sendStatus(write, flush, flush, time.Now(), replyRequested); err != nil {
		return fmt.Errorf("send status update: %w", err)
	}
	return nil
}

// checkSlot makes sure the slot exists and uses pgoutput.
func (c *capturer) checkSlot(ctx context.Context, conn *pgconn.PgConn) error {
	res := conn.Exec(ctx, "SELECT plugin, slot_type, confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = "+quoteLiteral(c.cfg.Slot))
	rs, err := res.ReadAll()
	if err != nil {
		return fmt.Errorf("look up slot %s: %w", c.cfg.Slot, err)
	}
	if len(rs) == 0 || len(rs[0].Rows) == 0 {
		return fmt.Errorf("%w: %s (run walcake setup)", ErrSlotMissing, c.cfg.Slot)
	}
	row := rs[0].Rows[0]
	if string(row[1]) != "logical" || string(row[0]) != "pgoutput" {
		return fmt.Errorf("slot %s is a %s slot with plugin %q; wal-cake needs a logical slot with pgoutput", c.cfg.Slot, row[1], row[0])
	}
	if row[2] != nil {
		confirmed, err := pglogrepl.ParseLSN(string(row[2]))
		if err != nil {
			return fmt.Errorf("slot %s: confirmed_flush_lsn %q: %w", c.cfg.Slot, row[2], err)
		}
		c.slotConfirmed = max(c.slotConfirmed, confirmed)
	}
	return nil
}

// currentInsertLSN is the server's WAL insert position: with
// synchronous_commit off, pg_current_wal_lsn() can lag the last commit.
func currentInsertLSN(ctx context.Context, conn *pgconn.PgConn) (pglogrepl.LSN, error) {
	rs, err := conn.Exec(ctx, "SELECT pg_current_wal_insert_lsn()").ReadAll()
	if err != nil {
		return 0, fmt.Errorf("read server WAL position: %w", err)
	}
	if len(rs) == 0 || len(rs[0].Rows) == 0 {
		return 0, errors.New("read server WAL position: no row")
	}
	lsn, err := pglogrepl.ParseLSN(string(rs[0].Rows[0][0]))
	if err != nil {
		return 0, fmt.Errorf("read server WAL position: %w", err)
	}
	return lsn, nil
}
