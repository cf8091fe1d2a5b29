package capture

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// ErrWalLevel is returned when the server's wal_level is not logical.
var ErrWalLevel = errors.New("wal_level is not logical")

// SetupConfig says what Setup prepares.
type SetupConfig struct {
	ConnString  string
	Slot        string
	Publication string
	// Tables to publish as schema.table (schema defaults to public); empty
	// means all tables.
	Tables []string
	// ViaPartitionRoot, when set, makes the publication's
	// publish_via_partition_root that value (on an existing publication too):
	// true publishes the changes of a partitioned table's partitions as the
	// partitioned table, one lake table; false publishes each partition as
	// itself. Nil keeps an existing publication's setting (false for a new
	// one).
	ViaPartitionRoot *bool
	Logger           *slog.Logger
}

// SetupResult reports what Setup found and did.
type SetupResult struct {
	CreatedPublication bool
	AddedTables        []string
	CreatedSlot        bool
	SlotLSN            pglogrepl.LSN // the slot's confirmed_flush_lsn
	// ViaPartitionRoot is the publication's publish_via_partition_root after
	// Setup; ChangedViaPartitionRoot reports that Setup changed it.
	ViaPartitionRoot        bool
	ChangedViaPartitionRoot bool
	// Warnings name published tables whose updates and deletes cannot be
	// captured as they are (no primary key and no usable replica identity).
	Warnings []string
}

// Setup checks wal_level, creates the publication and the pgoutput slot when
// missing, and reports tables without a primary key or replica identity. It
// is idempotent.
func Setup(ctx context.Context, cfg SetupConfig) (SetupResult, error) {
	var res SetupResult
	if err := ValidateSlotName(cfg.Slot); err != nil {
		return res, err
	}
	if cfg.Publication == "" {
		return res, errors.New("no publication name (PG_PUBLICATION)")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pcfg, err := pgx.ParseConfig(cfg.ConnString)
	if err != nil {
		return res, fmt.Errorf("parse PG_CONN_STRING: %w", redactParseError(err))
	}
	conn, err := pgx.ConnectConfig(ctx, pcfg)
	if err != nil {
		return res, fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())

	var walLevel string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&walLevel); err != nil {
		return res, fmt.Errorf("read wal_level: %w", err)
	}
	if walLevel != "logical" {
		return res, fmt.Errorf("%w: the server has wal_level = %s; set wal_level = logical (ALTER SYSTEM SET wal_level = logical, or wal_level in postgresql.conf; on RDS/Aurora rds.logical_replication = 1) and restart PostgreSQL", ErrWalLevel, walLevel)
	}

	tables, err := parseTables(cfg.Tables)
	if err != nil {
		return res, err
	}
	if err := ensurePublication(ctx, conn, cfg.Publication, tables, cfg.ViaPartitionRoot, &res); err != nil {
		return res, err
	}
	if res.CreatedPublication {
		log.Info("created publication", "publication", cfg.Publication, "tables", tableList(tables),
			"via_partition_root", res.ViaPartitionRoot)
	}
	if res.ViaPartitionRoot && (res.CreatedPublication || res.ChangedViaPartitionRoot) {
		log.Warn("with publish_via_partition_root PostgreSQL does not publish a TRUNCATE of a single partition: " +
			"the lake keeps that partition's rows; truncate the partitioned table, or DELETE from the partition")
	}
	if res.ChangedViaPartitionRoot {
		log.Warn("changed the publication's publish_via_partition_root: changes of partitions from now on land in the lake under "+
			map[bool]string{true: "their partitioned table", false: "each partition's own name"}[res.ViaPartitionRoot],
			"publication", cfg.Publication, "via_partition_root", res.ViaPartitionRoot)
	}
	for _, t := range res.AddedTables {
		log.Info("added table to publication", "publication", cfg.Publication, "table", t)
	}

	if err := ensureSlot(ctx, conn, cfg.Slot, &res); err != nil {
		return res, err
	}
	if res.CreatedSlot {
		log.Info("created replication slot", "slot", cfg.Slot, "lsn", res.SlotLSN.String())
	}

	res.Warnings, err = identityWarnings(ctx, conn, cfg.Publication)
	if err != nil {
		return res, err
	}
	for _, w := range res.Warnings {
		log.Warn(w)
	}
	return res, nil
}

func tableList(tables []pgx.Identifier) string {
	if len(tables) == 0 {
		return "ALL TABLES"
	}
	names := make([]string, len(tables))
	for i, t := range tables {
		names[i] = t[0] + "." + t[1]
	}
	return strings.Join(names, ",")
}

// parseTables turns "schema.table" (or "table", meaning public.table) into
// identifiers. A name with a dot in it can be double-quoted: "my.schema".t
func parseTables(names []string) ([]pgx.Identifier, error) {
	var out []pgx.Identifier
	for _, n := range names {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		parts, err := splitQualified(n)
		if err != nil {
			return nil, err
		}
		switch len(parts) {
		case 1:
			out = append(out, pgx.Identifier{"public", parts[0]})
		case 2:
			out = append(out, pgx.Identifier{parts[0], parts[1]})
		default:
			return nil, fmt.Errorf("table %q: want schema.table", n)
		}
	}
	return out, nil
}

// splitQualified splits a.b on dots outside double quotes; unquoted parts
// are taken as written (PostgreSQL would fold them to lower case, so we do
// too), quoted ones exactly.
func splitQualified(s string) ([]string, error) {
	var parts []string
	var cur strings.Builder
	quoted, wasQuoted := false, false
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case ch == '"' && quoted && i+1 < len(s) && s[i+1] == '"':
			cur.WriteByte('"')
			i++
		case ch == '"':
			quoted = !quoted
			wasQuoted = true
		case ch == '.' && !quoted:
			parts = append(parts, finishPart(cur.String(), wasQuoted))
			cur.Reset()
			wasQuoted = false
		default:
			cur.WriteByte(ch)
		}
	}
	if quoted {
		return nil, fmt.Errorf("table %q: unbalanced double quote", s)
	}
	parts = append(parts, finishPart(cur.String(), wasQuoted))
	for _, p := range parts {
		if p == "" {
			return nil, fmt.Errorf("table %q: empty name", s)
		}
	}
	return parts, nil
}

func finishPart(p string, quoted bool) string {
	if quoted {
		return p
	}
	return strings.ToLower(p)
}

func ensurePublication(ctx context.Context, conn *pgx.Conn, pub string, tables []pgx.Identifier, viaRoot *bool, res *SetupResult) error {
	var allTables, pubViaRoot bool
	err := conn.QueryRow(ctx, "SELECT puballtables, pubviaroot FROM pg_publication WHERE pubname = $1", pub).Scan(&allTables, &pubViaRoot)
	if errors.Is(err, pgx.ErrNoRows) {
		sql := "CREATE PUBLICATION " + pgx.Identifier{pub}.Sanitize()
		if len(tables) == 0 {
			sql += " FOR ALL TABLES"
		} else {
			names := make([]string, len(tables))
			for i, t := range tables {
				names[i] = t.Sanitize()
			}
			sql += " FOR TABLE " + strings.Join(names, ", ")
		}
		if viaRoot != nil && *viaRoot {
			sql += " WITH (publish_via_partition_root = true)"
			res.ViaPartitionRoot = true
		}
		if _, err := conn.Exec(ctx, sql); err != nil {
			return fmt.Errorf("create publication %s: %w", pub, err)
		}
		res.CreatedPublication = true
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up publication %s: %w", pub, err)
	}
	res.ViaPartitionRoot = pubViaRoot
	if viaRoot != nil && *viaRoot != pubViaRoot {
		sql := fmt.Sprintf("ALTER PUBLICATION %s SET (publish_via_partition_root = %t)", pgx.Identifier{pub}.Sanitize(), *viaRoot)
		if _, err := conn.Exec(ctx, sql); err != nil {
			return fmt.Errorf("set publish_via_partition_root of publication %s: %w", pub, err)
		}
		res.ViaPartitionRoot, res.ChangedViaPartitionRoot = *viaRoot, true
	}
	if allTables || len(tables) == 0 {
		return nil
	}
	for _, t := range tables {
		var present bool
		err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3)", pub, t[0], t[1]).Scan(&present)
		if err != nil {
			return fmt.Errorf("look up publication %s: %w", pub, err)
		}
		if present {
			continue
		}
		if _, err := conn.Exec(ctx, "ALTER PUBLICATION "+pgx.Identifier{pub}.Sanitize()+" ADD TABLE "+t.Sanitize()); err != nil {
			return fmt.Errorf("add %s.%s to publication %s: %w", t[0], t[1], pub, err)
		}
		res.AddedTables = append(res.AddedTables, t[0]+"."+t[1])
	}
	return nil
}

func ensureSlot(ctx context.Context, conn *pgx.Conn, slot string, res *SetupResult) error {
	var plugin, slotType, database *string
	var confirmed *string
	err := conn.QueryRow(ctx, `SELECT plugin, slot_type, database, confirmed_flush_lsn::text
		FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&plugin, &slotType, &database, &confirmed)
	if errors.Is(err, pgx.ErrNoRows) {
		var lsn string
		if err := conn.QueryRow(ctx, "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", slot).Scan(&lsn); err != nil {
			return fmt.Errorf("create replication slot %s: %w", slot, err)
		}
		res.CreatedSlot = true
		res.SlotLSN, _ = pglogrepl.ParseLSN(lsn)
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up replication slot %s: %w", slot, err)
	}
	if slotType == nil || *slotType != "logical" || plugin == nil || *plugin != "pgoutput" {
		return fmt.Errorf("replication slot %s exists but is not a logical pgoutput slot", slot)
	}
	var current string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&current); err != nil {
		return fmt.Errorf("read current database: %w", err)
	}
	if database != nil && *database != current {
		return fmt.Errorf("replication slot %s belongs to database %s, not %s", slot, *database, current)
	}
	if confirmed != nil {
		res.SlotLSN, _ = pglogrepl.ParseLSN(*confirmed)
	}
	return nil
}

// identityWarnings lists published tables whose UPDATE and DELETE cannot be
// captured: replica identity DEFAULT without a primary key, or NOTHING.
func identityWarnings(ctx context.Context, conn *pgx.Conn, pub string) ([]string, error) {
	rows, err := conn.Query(ctx, `
		SELECT n.nspname, c.relname, c.relreplident::text,
		       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
		FROM pg_publication_tables pt
		JOIN pg_namespace n ON n.nspname = pt.schemaname
		JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
		WHERE pt.pubname = $1
		ORDER BY 1, 2`, pub)
	if err != nil {
		return nil, fmt.Errorf("check replica identities: %w", err)
	}
	defer rows.Close()
	var warnings []string
	for rows.Next() {
		var schema, table, ident string
		var hasPK bool
		if err := rows.Scan(&schema, &table, &ident, &hasPK); err != nil {
			return nil, fmt.Errorf("check replica identities: %w", err)
		}
		name := schema + "." + table
		switch {
		case ident == "n":
			warnings = append(warnings, fmt.Sprintf("table %s has REPLICA IDENTITY NOTHING: PostgreSQL rejects its UPDATE and DELETE while it is published; give it a primary key or ALTER TABLE %s REPLICA IDENTITY FULL", name, pgx.Identifier{schema, table}.Sanitize()))
		case ident == "d" && !hasPK:
			warnings = append(warnings, fmt.Sprintf("table %s has no primary key and no replica identity: PostgreSQL rejects its UPDATE and DELETE while it is published; add a primary key or ALTER TABLE %s REPLICA IDENTITY FULL", name, pgx.Identifier{schema, table}.Sanitize()))
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("check replica identities: %w", err)
	}
	return warnings, nil
}
