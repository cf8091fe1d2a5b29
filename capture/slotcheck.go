package capture

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrSlotLost is returned when the server has invalidated the replication
// slot (wal_status = lost): the WAL it needed is gone, and with it every
// change the lake did not yet hold.
var ErrSlotLost = errors.New("replication slot is lost")

// SlotHealth is what the server reports about a replication slot, read by
// CheckSlot before capture runs and by `walcake status`.
type SlotHealth struct {
	Slot   string
	Exists bool

	Plugin    string
	SlotType  string
	Database  string
	Active    bool
	ActivePID int32 // 0 when no process streams from the slot

	ConfirmedFlushLSN pglogrepl.LSN // 0 when unknown (a lost slot)
	RestartLSN        pglogrepl.LSN // 0 when unknown (a lost slot)
	// ServerLSN is the server's WAL insert position (the replay position
	// on a standby).
	ServerLSN pglogrepl.LSN
	// RetainedBytes is the WAL the slot keeps from being recycled:
	// ServerLSN - RestartLSN.
	RetainedBytes int64
	// LagBytes is the WAL the slot has not confirmed: ServerLSN -
	// ConfirmedFlushLSN. It includes WAL without a published change.
	LagBytes int64
	// WALStatus is reserved, extended, unreserved or lost (PostgreSQL 13+).
	WALStatus string
	// SafeWALSize is how many more bytes of WAL can be written before the
	// slot is in danger of being lost; nil when max_slot_wal_keep_size is
	// -1 (no limit) or the slot is lost.
	SafeWALSize *int64
	// InvalidationReason is PostgreSQL 17's reason for an invalidated slot
	// (wal_removed, rows_removed, wal_level_insufficient), else "".
	InvalidationReason string
	// Failover and Synced are PostgreSQL 17's failover slot flags: the slot
	// is synchronised to standbys, and (on a standby) this copy is one.
	Failover, Synced bool
	InRecovery       bool // the server is a standby
	ServerVersion    int  // server_version_num, e.g. 150004
}

// Lost reports whether the server has invalidated the slot.
func (h SlotHealth) Lost() bool {
	return h.Exists && (h.WALStatus == "lost" || h.InvalidationReason != "")
}

// Err returns an error wrapping ErrSlotMissing or ErrSlotLost, with what to
// do about it, or nil when capture can stream from the slot.
func (h SlotHealth) Err() error {
	switch {
	case !h.Exists:
		return fmt.Errorf("%w: %s (run walcake setup; if it existed before, see \"Lost slot\" in docs/operations.md)", ErrSlotMissing, h.Slot)
	case h.Lost():
		reason := "wal_status = lost"
		if h.InvalidationReason != "" {
			reason += ", invalidation_reason = " + h.InvalidationReason
		}
		return fmt.Errorf("%w: %s (%s): the server removed WAL the slot still needed, so changes made since the lake's last commit cannot be read any more; "+
			"drop and re-create the slot (SELECT pg_drop_replication_slot('%s'); walcake setup), then backfill the published tables "+
			"(see \"Lost slot\" in docs/operations.md)", ErrSlotLost, h.Slot, reason, h.Slot)
	}
	return nil
}

// CheckSlot reads the slot's state and the server's WAL position on an
// ordinary (non-replication) connection. A missing slot is not an error:
// Exists is false. It works for any role that may log in: it reads only
// pg_replication_slots and WAL positions.
func CheckSlot(ctx context.Context, connString, slot string) (SlotHealth, error) {
	h := SlotHealth{Slot: slot}
	if err := ValidateSlotName(slot); err != nil {
		return h, err
	}
	conn, err := connectSQL(ctx, connString)
	if err != nil {
		return h, err
	}
	defer conn.Close(context.Background())
	return checkSlot(ctx, conn, slot)
}

func checkSlot(ctx context.Context, conn *pgx.Conn, slot string) (SlotHealth, error) {
	h := SlotHealth{Slot: slot}
	var server string
	err := conn.QueryRow(ctx, `
		SELECT current_setting('server_version_num')::int, pg_is_in_recovery(),
		       (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END)::text`).
		Scan(&h.ServerVersion, &h.InRecovery, &server)
	if err != nil {
		return h, fmt.Errorf("capture: read server WAL position: %w", err)
	}
	if h.ServerLSN, err = pglogrepl.ParseLSN(server); err != nil {
		return h, fmt.Errorf("capture: server WAL position %q: %w", server, err)
	}
	// to_jsonb reads whatever columns this server version has: wal_status
	// and safe_wal_size (13+), invalidation_reason, failover, synced (17+).
	var row []byte
	err = conn.QueryRow(ctx, "SELECT to_jsonb(s) FROM pg_replication_slots s WHERE slot_name = $1", slot).Scan(&row)
	if errors.Is(err, pgx.ErrNoRows) {
		return h, nil
	}
	if err != nil {
		return h, fmt.Errorf("capture: look up slot %s: %w", slot, err)
	}
	var s struct {
		Plugin             *string          `json:"plugin"`
		SlotType           *string          `json:"slot_type"`
		Database           *string          `json:"database"`
		Active             bool             `json:"active"`
		ActivePID          *int32           `json:"active_pid"`
		ConfirmedFlushLSN  *string          `json:"confirmed_flush_lsn"`
		RestartLSN         *string          `json:"restart_lsn"`
		WALStatus          *string          `json:"wal_status"`
		SafeWALSize        *json.RawMessage `json:"safe_wal_size"`
		InvalidationReason *string          `json:"invalidation_reason"`
		Failover           bool             `json:"failover"`
		Synced             bool             `json:"synced"`
	}
	if err := json.Unmarshal(row, &s); err != nil {
		return h, fmt.Errorf("capture: parse slot %s: %w", slot, err)
	}
	h.Exists = true
	h.Plugin, h.SlotType, h.Database = slotText(s.Plugin), slotText(s.SlotType), slotText(s.Database)
	h.Active, h.WALStatus, h.InvalidationReason = s.Active, slotText(s.WALStatus), slotText(s.InvalidationReason)
	h.Failover, h.Synced = s.Failover, s.Synced
	if s.ActivePID != nil {
		h.ActivePID = *s.ActivePID
	}
	if h.ConfirmedFlushLSN, err = parseOptionalLSN(s.ConfirmedFlushLSN); err != nil {
		return h, fmt.Errorf("capture: slot %s: confirmed_flush_lsn: %w", slot, err)
	}
	if h.RestartLSN, err = parseOptionalLSN(s.RestartLSN); err != nil {
		return h, fmt.Errorf("capture: slot %s: restart_lsn: %w", slot, err)
	}
	if h.RestartLSN != 0 {
		h.RetainedBytes = max(0, int64(h.ServerLSN)-int64(h.RestartLSN))
	}
	if h.ConfirmedFlushLSN != 0 {
		h.LagBytes = max(0, int64(h.ServerLSN)-int64(h.ConfirmedFlushLSN))
	}
	if s.SafeWALSize != nil && string(*s.SafeWALSize) != "null" {
		// A bigint in JSON: parse it exactly, not through float64.
		n, err := strconv.ParseInt(string(*s.SafeWALSize), 10, 64)
		if err != nil {
			return h, fmt.Errorf("capture: slot %s: safe_wal_size %s: %w", slot, *s.SafeWALSize, err)
		}
		h.SafeWALSize = &n
	}
	return h, nil
}

// EmitHeartbeat writes a non-transactional logical decoding message with the
// prefix "walcake" into the WAL of the slot's database and returns its LSN.
// Capture ignores it; it gives the slot a record of its own database to
// decode and confirm when the published tables are idle and other databases
// on the server make all the WAL.
func EmitHeartbeat(ctx context.Context, connString string) (pglogrepl.LSN, error) {
	conn, err := connectSQL(ctx, connString)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	var text string
	err = conn.QueryRow(ctx, "SELECT pg_logical_emit_message(false, 'walcake', 'heartbeat ' || now()::text)::text").Scan(&text)
	if err != nil {
		return 0, fmt.Errorf("capture: emit heartbeat: %w", err)
	}
	lsn, err := pglogrepl.ParseLSN(text)
	if err != nil {
		return 0, fmt.Errorf("capture: heartbeat LSN %q: %w", text, err)
	}
	return lsn, nil
}

func connectSQL(ctx context.Context, connString string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("capture: parse PG_CONN_STRING: %w", parseErrorWithoutConnString(err))
	}
	cfg.RuntimeParams["application_name"] = "walcake"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("capture: connect: %w", err)
	}
	return conn, nil
}

// parseErrorWithoutConnString keeps what pgconn says is wrong with a
// connection string, without the string (and the password pgconn may fail
// to redact in one it cannot parse).
func parseErrorWithoutConnString(err error) error {
	var pe *pgconn.ParseConfigError
	if !errors.As(err, &pe) {
		return err
	}
	if inner := pe.Unwrap(); inner != nil {
		return inner
	}
	// "cannot parse `<redacted string>`: <what is wrong>"
	msg := pe.Error()
	if i := strings.LastIndex(msg, "`: "); i >= 0 {
		return errors.New(msg[i+3:])
	}
	return errors.New("invalid connection string")
}

func parseOptionalLSN(s *string) (pglogrepl.LSN, error) {
	if s == nil {
		return 0, nil
	}
	return pglogrepl.ParseLSN(*s)
}

func slotText(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
