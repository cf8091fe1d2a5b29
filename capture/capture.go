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
	"github.com/jackc/pgx/v5/pgproto3"

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
	c := &capturer{cfg: cfg, sp: sp, w: w, log: cfg.Logger.With("slot", cfg.Slot)}
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
	defer conn.Close(context.Background())

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
	start := c.w.Held().EndLSN
	args := []string{"proto_version '1'", publicationNamesArg(c.cfg.Publication)}
	if err := pglogrepl.StartReplication(ctx, conn, c.cfg.Slot, start, pglogrepl.StartReplicationOptions{PluginArgs: args}); err != nil {
		return fmt.Errorf("start replication on slot %s: %w", c.cfg.Slot, err)
	}
	c.log.Info("streaming", "from", start.String(), "target", c.target.String(), "follow", c.cfg.Follow)

	nextStatus := time.Now().Add(c.cfg.StatusInterval)
	askedServer := false
	for {
		if time.Now().After(nextStatus) {
			if err := c.sendStatus(ctx, conn, false); err != nil {
				return err
			}
			nextStatus = time.Now().Add(c.cfg.StatusInterval)
			if c.cfg.Progress != nil {
				c.cfg.Progress(c.stats)
			}
		}
		recvCtx, cancel := context.WithTimeout(ctx, min(c.cfg.IdleWait, time.Until(nextStatus)))
		raw, err := conn.ReceiveMessage(recvCtx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			if pgconn.Timeout(err) {
				// Idle: make what we hold durable, seal when due, and ask
				// the server for its position so a batch run can end.
				if err := c.idle(); err != nil {
					return err
				}
				if !askedServer || !c.cfg.Follow {
					if err := c.sendStatus(ctx, conn, true); err != nil {
						return err
					}
					askedServer = true
				}
				continue
			}
			return fmt.Errorf("receive: %w", err)
		}
		switch msg := raw.(type) {
		case *pgproto3.ErrorResponse:
			return pgconn.ErrorResponseToPgError(msg)
		case *pgproto3.CopyData:
			done, err := c.handleCopyData(ctx, conn, msg.Data)
			if err != nil {
				return err
			}
			if done {
				c.caughtUp = true
				return c.sendStatus(ctx, conn, false)
			}
		case *pgproto3.CopyDone:
			return errors.New("server ended the replication stream")
		default:
			// NoticeResponse, ParameterStatus: nothing to do.
		}
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

func (c *capturer) handleCopyData(ctx context.Context, conn *pgconn.PgConn, data []byte) (done bool, err error) {
	if len(data) == 0 {
		return false, nil
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return false, fmt.Errorf("parse keepalive: %w", err)
		}
		c.noteServerPos(ka.ServerWALEnd)
		if ka.ReplyRequested {
			if err := c.sendStatus(ctx, conn, false); err != nil {
				return false, err
			}
		}
		return !c.cfg.Follow && !c.w.InTxn() && c.serverPos >= c.target, nil
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return false, fmt.Errorf("parse XLogData: %w", err)
		}
		if xld.WALStart > c.received {
			c.received = xld.WALStart
		}
		return c.handleMessage(xld.WALStart, xld.WALData)
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
// reaches the target position.
func (c *capturer) handleMessage(lsn pglogrepl.LSN, msg []byte) (done bool, err error) {
	if len(msg) == 0 {
		return false, nil
	}
	switch pglogrepl.MessageType(msg[0]) {
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

	case pglogrepl.MessageTypeInsert, pglogrepl.MessageTypeUpdate, pglogrepl.MessageTypeDelete, pglogrepl.MessageTypeTruncate:
		return false, c.appendMsg(lsn, msg, true)

	case pglogrepl.MessageTypeOrigin, pglogrepl.MessageTypeMessage:
		// Replication origins and logical decoding messages (heartbeats)
		// carry no table change.
		return false, nil
	}
	return false, fmt.Errorf("unexpected pgoutput message %q at %s", msg[0], lsn)
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

func (c *capturer) sendStatus(ctx context.Context, conn *pgconn.PgConn, replyRequested bool) error {
	flush, err := c.feedback()
	if err != nil {
		return err
	}
	write := max(c.received, flush)
	err = pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: write,
		WALFlushPosition: flush,
		WALApplyPosition: flush,
		ClientTime:       time.Now(),
		ReplyRequested:   replyRequested,
	})
	if err != nil {
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
