package compact

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// advanceSlot moves the slot's confirmed position up to target, unless a
// capture is streaming from it (PostgreSQL refuses then; capture confirms the
// same position through its status updates). It returns the slot's position.
func advanceSlot(ctx context.Context, conn *pgx.Conn, slot string, target pglogrepl.LSN, log *slog.Logger) (pglogrepl.LSN, error) {
	var confirmedText *string
	var active bool
	err := conn.QueryRow(ctx, "SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&confirmedText, &active)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("replication slot %s does not exist (run walcake setup)", slot)
	}
	if err != nil {
		return 0, fmt.Errorf("look up slot %s: %w", slot, err)
	}
	var confirmed pglogrepl.LSN
	if confirmedText != nil {
		confirmed, _ = pglogrepl.ParseLSN(*confirmedText)
	}
	if target <= confirmed {
		return confirmed, nil
	}
	if active {
		log.Info("slot is streaming to capture, which confirms the lake position itself", "slot", slot, "lsn", target.String())
		return confirmed, nil
	}
	var movedText string
	err = conn.QueryRow(ctx, "SELECT end_lsn::text FROM pg_replication_slot_advance($1, $2::pg_lsn)", slot, target.String()).Scan(&movedText)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "55006" {
		log.Info("slot became active; capture confirms the lake position itself", "slot", slot, "lsn", target.String())
		return confirmed, nil
	}
	if err != nil {
		return confirmed, fmt.Errorf("advance slot %s to %s: %w", slot, target, err)
	}
	moved, _ := pglogrepl.ParseLSN(movedText)
	log.Debug("advanced slot", "slot", slot, "lsn", moved.String())
	return moved, nil
}
