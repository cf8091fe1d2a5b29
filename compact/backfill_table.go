package compact

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// ErrNotPublished is returned for a table that the publication does not
// include: its changes would not reach the lake, so its rows must not either.
var ErrNotPublished = errors.New("table is not in the publication")

// ErrBackfillBusy is returned when another process backfills the same table.
var ErrBackfillBusy = errors.New("another process is backfilling the table")

// bfTable is one table to backfill.
type bfTable struct {
	name     string // lake name, <schema>.<table>
	schema   string
	rel      string
	oid      uint32
	relkind  byte
	ident    pgx.Identifier
	keys     []keyColumn // empty: keyless, ctid mode
	pubCols  map[string]bool
	filter   string // the publication's row filter, or ""
	estRows  int64  // pg_class.reltuples; <0 unknown
	relpages int64

	run *bfRunRecord

	// The snapshot of a ctid-mode run (shared by its chunks), held by the
	// exporter's session until every chunk has read its rows.
	snapLSN     pglogrepl.LSN
	snapName    string
	snapAt      time.Time
	exporter    *pgx.Conn
	readsLeft   chan struct{} // closed when every chunk has been read
	reads       int
	readsClosed bool

	// sampledToEnd: the sample's bounds cover the table to its end; after
	// the last one, one chunk takes the rest. Planner only.
	sampledToEnd bool

	mu        sync.Mutex
	versions  map[string]string // schema fingerprint → lake version
	planned   int               // chunks handed out (or found done)
	planDone  bool
	finished  int // chunks finished (done, or done earlier)
	finalized bool
	files     []ManifestFile
	rowsAll   int64 // rows of the chunks this process committed

	// Progress, read by the reporter.
	rows        atomic.Int64 // rows read by this process
	chunksDone  atomic.Int64
	chunksTotal atomic.Int64 // planned so far
	resumed     atomic.Int64 // chunks done by an earlier process
	bytes       atomic.Int64
	nfiles      atomic.Int64
	firstSnap   atomic.Uint64
	lastSnap    atomic.Uint64
	started     atomic.Int64 // unix nanos when this process began reading the table
	ended       atomic.Int64 // unix nanos when finished
	skipped     bool         // done earlier: nothing to do
}

type keyColumn struct {
	name string
	typ  string // format_type without typmod, for casts of the text bounds
}

// start notes when this process began reading t, for its rate.
func (t *bfTable) start() { t.started.CompareAndSwap(0, time.Now().UnixNano()) }

// elapsed is how long this process has been reading t (until it finished).
func (t *bfTable) elapsed() time.Duration {
	s := t.started.Load()
	if s == 0 {
		return 0
	}
	end := time.Now().UnixNano()
	if e := t.ended.Load(); e != 0 {
		end = e
	}
	return time.Duration(end - s)
}

// keyed reports whether t is read in key ranges.
func (t *bfTable) keyed() bool { return len(t.keys) > 0 }

// from is the table in a FROM clause: ONLY for a plain table (pgoutput
// publishes an inheritance parent's own rows; its children are tables of
// their own), the whole tree for a partitioned table (published through its
// root).
func (t *bfTable) from() string {
	if t.relkind == 'p' {
		return t.ident.Sanitize()
	}
	return "ONLY " + t.ident.Sanitize()
}

// publishedTables lists the tables of a publication, with what backfill
// needs to read them.
func publishedTables(ctx context.Context, conn *pgx.Conn, pub string) ([]*bfTable, error) {
	var version int
	if err := conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&version); err != nil {
		return nil, fmt.Errorf("read server version: %w", err)
	}
	// Column lists and row filters of publications came with PostgreSQL 15.
	extra := "NULL::text[], NULL::text"
	if version >= 150000 {
		extra = "pt.attnames::text[], pt.rowfilter"
	}
	rows, err := conn.Query(ctx, `
		SELECT pt.schemaname::text, pt.tablename::text, c.oid::int8, c.relkind::text,
		       c.reltuples::int8, c.relpages::int8, `+extra+`
		FROM pg_publication_tables pt
		JOIN pg_namespace n ON n.nspname = pt.schemaname
		JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
		WHERE pt.pubname = $1
		ORDER BY 1, 2`, pub)
	if err != nil {
		return nil, fmt.Errorf("list tables of publication %s: %w", pub, err)
	}
	var out []*bfTable
	for rows.Next() {
		t := &bfTable{versions: map[string]string{}}
		var oid int64
		var relkind string
		var attnames []string
		var filter *string
		if err := rows.Scan(&t.schema, &t.rel, &oid, &relkind, &t.estRows, &t.relpages, &attnames, &filter); err != nil {
			rows.Close()
			return nil, fmt.Errorf("list tables of publication %s: %w", pub, err)
		}
		t.oid, t.relkind = uint32(oid), pgChar(relkind)
		t.name = tableName(t.schema, t.rel)
		t.ident = pgx.Identifier{t.schema, t.rel}
		if attnames != nil {
			t.pubCols = map[string]bool{}
			for _, a := range attnames {
				t.pubCols[a] = true
			}
		}
		if filter != nil {
			t.filter = *filter
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list tables of publication %s: %w", pub, err)
	}
	for _, t := range out {
		if err := t.loadKey(ctx, conn); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// loadKey finds the columns the lake keys t by: its primary key, else the
// index of REPLICA IDENTITY USING INDEX; none for a keyless table.
func (t *bfTable) loadKey(ctx context.Context, conn *pgx.Conn) error {
	for _, cond := range []string{"i.indisprimary", "i.indisreplident"} {
		rows, err := conn.Query(ctx, `
			SELECT a.attname::text, format_type(a.atttypid, NULL)
			FROM pg_index i
			CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
			JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
			WHERE i.indrelid = $1::oid AND `+cond+`
			ORDER BY k.ord`, t.oid)
		if err != nil {
			return fmt.Errorf("read the key of %s: %w", t.name, err)
		}
		var keys []keyColumn
		var k keyColumn
		_, err = pgx.ForEachRow(rows, []any{&k.name, &k.typ}, func() error {
			keys = append(keys, k)
			return nil
		})
		if err != nil {
			return fmt.Errorf("read the key of %s: %w", t.name, err)
		}
		if len(keys) > 0 {
			t.keys = keys
			return nil
		}
	}
	return nil
}

// selectTables picks the requested tables out of the published ones. names
// are schema.table (or table, meaning public.table); a part in double quotes
// is taken exactly, others are folded to lower case as PostgreSQL does.
func selectTables(published []*bfTable, names []string, pub string) ([]*bfTable, error) {
	byName := map[[2]string]*bfTable{}
	for _, t := range published {
		byName[[2]string{t.schema, t.rel}] = t
	}
	var out []*bfTable
	seen := map[*bfTable]bool{}
	for _, n := range names {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		schema, rel, err := parseTableName(n)
		if err != nil {
			return nil, err
		}
		t := byName[[2]string{schema, rel}]
		if t == nil {
			return nil, fmt.Errorf("%s.%s: %w %s (add it with walcake setup --tables, or ALTER PUBLICATION ... ADD TABLE)", schema, rel, ErrNotPublished, pub)
		}
		if !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	return out, nil
}

// parseTableName splits schema.table on the dot outside double quotes.
func parseTableName(s string) (schema, table string, err error) {
	var parts []string
	var cur strings.Builder
	quoted, wasQuoted := false, false
	finish := func() {
		p := cur.String()
		if !wasQuoted {
			p = strings.ToLower(p)
		}
		parts = append(parts, p)
		cur.Reset()
		wasQuoted = false
	}
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
			finish()
		default:
			cur.WriteByte(ch)
		}
	}
	if quoted {
		return "", "", fmt.Errorf("table %q: unbalanced double quote", s)
	}
	finish()
	for _, p := range parts {
		if p == "" {
			return "", "", fmt.Errorf("table %q: empty name", s)
		}
	}
	switch len(parts) {
	case 1:
		return "public", parts[0], nil
	case 2:
		return parts[0], parts[1], nil
	}
	return "", "", fmt.Errorf("table %q: want schema.table", s)
}

// lock takes a session advisory lock on (slot, table), so that two
// processes never backfill the same table into the same lake at once.
func (t *bfTable) lock(ctx context.Context, conn *pgx.Conn, slot string) error {
	// A process that was just killed holds its lock until the server
	// notices: wait a little before giving up.
	for try := 0; ; try++ {
		var ok bool
		err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock(hashtextextended('walcake backfill ' || $1 || ' ' || $2, 0))",
			slot, fmt.Sprint(t.oid)).Scan(&ok)
		if err != nil {
			return fmt.Errorf("lock %s for backfill: %w", t.name, err)
		}
		if ok {
			return nil
		}
		if try == 20 {
			return fmt.Errorf("%s: %w", t.name, ErrBackfillBusy)
		}
		select {
		case <-time.After(250 * time.Millisecond):
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
}

// quoteLiteral quotes s as an SQL string literal (standard_conforming_strings
// is on in backfill sessions).
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// keyTuple is the key columns as a row: (a, b).
func (t *bfTable) keyTuple() string {
	names := make([]string, len(t.keys))
	for i, k := range t.keys {
		names[i] = pgx.Identifier{k.name}.Sanitize()
	}
	return "(" + strings.Join(names, ", ") + ")"
}

// keyLiteral is a key value as a row of typed literals.
func (t *bfTable) keyLiteral(vals []string) string {
	parts := make([]string, len(vals))
	for i, v := range vals {
		parts[i] = quoteLiteral(v) + "::text::" + t.keys[i].typ
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

// chunkWhere is the WHERE clause that selects a chunk's rows (and the
// publication's row filter), or "".
func (t *bfTable) chunkWhere(p *bfChunkPlan) string {
	var conds []string
	switch {
	case t.keyed():
		if p.Lo != nil {
			conds = append(conds, t.keyTuple()+" > "+t.keyLiteral(p.Lo))
		}
		if p.Hi != nil {
			conds = append(conds, t.keyTuple()+" <= "+t.keyLiteral(p.Hi))
		}
	case !p.Whole:
		if p.FromPage != nil && *p.FromPage > 0 {
			conds = append(conds, fmt.Sprintf("ctid >= '(%d,0)'::tid", *p.FromPage))
		}
		if p.ToPage != nil {
			conds = append(conds, fmt.Sprintf("ctid < '(%d,0)'::tid", *p.ToPage))
		}
	}
	if t.filter != "" {
		conds = append(conds, "("+t.filter+")")
	}
	if len(conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(conds, " AND ")
}

// nextBound finds the upper bound of the chunk after lo: the key of the
// chunkRows-th row above lo, or nil when no row is left after that one (the
// chunk is the last and takes the rest of the key space).
func (t *bfTable) nextBound(ctx context.Context, conn *pgx.Conn, lo []string, chunkRows int64) ([]string, error) {
	// Columns are qualified: in ORDER BY a bare name would be the text
	// output column of the same name, which sorts differently.
	cols := make([]string, len(t.keys))
	for i, k := range t.keys {
		cols[i] = "t." + pgx.Identifier{k.name}.Sanitize()
	}
	var args []any
	where := ""
	if lo != nil {
		params := make([]string, len(lo))
		for i, v := range lo {
			args = append(args, v)
			params[i] = fmt.Sprintf("$%d::text::%s", i+1, t.keys[i].typ)
		}
		where = " WHERE (" + strings.Join(cols, ", ") + ") > (" + strings.Join(params, ", ") + ")"
	}
	// Two rows: the bound, and whether anything follows it.
	q := fmt.Sprintf("SELECT %s::text FROM %s AS t%s ORDER BY %s OFFSET %d LIMIT 2",
		strings.Join(cols, "::text, "), t.from(), where, strings.Join(cols, ", "), chunkRows-1)
	rows, err := conn.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("plan chunks of %s: %w", t.name, err)
	}
	defer rows.Close()
	var bound []string
	n := 0
	for rows.Next() {
		n++
		if n > 1 {
			continue
		}
		bound = make([]string, len(t.keys))
		ptrs := make([]any, len(bound))
		for i := range bound {
			ptrs[i] = &bound[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return nil, fmt.Errorf("plan chunks of %s: %w", t.name, err)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("plan chunks of %s: %w", t.name, err)
	}
	if n < 2 {
		return nil, nil
	}
	return bound, nil
}

// Sampled planning: a table much larger than a chunk gets its bounds from a
// sample of its blocks (TABLESAMPLE SYSTEM), which reads a fraction of a
// percent of it, instead of a walk over its whole key index, which on a
// table being written also visits the heap. Chunks then hold about
// ChunkRows rows rather than exactly.
const (
	samplesPerChunk = 1000 // sampled rows per chunk: the bounds' precision
	maxSamplePct    = 10   // above this, the walk is about as cheap
)

// sampledBounds returns chunk bounds above lo from a sample of the table, in
// key order, or none when the table is small or its size unknown (the
// caller walks the index then).
func (t *bfTable) sampledBounds(ctx context.Context, conn *pgx.Conn, lo []string, chunkRows int64) ([][]string, error) {
	if t.estRows < 4*chunkRows || t.relpages <= 0 || t.relkind == 'p' {
		return nil, nil
	}
	pct := 100 * float64(samplesPerChunk) / float64(chunkRows)
	if pct > maxSamplePct {
		return nil, nil
	}
	cols := make([]string, len(t.keys))
	for i, k := range t.keys {
		cols[i] = "t." + pgx.Identifier{k.name}.Sanitize()
	}
	args := []any{pct}
	where := ""
	if lo != nil {
		params := make([]string, len(lo))
		for i, v := range lo {
			args = append(args, v)
			params[i] = fmt.Sprintf("$%d::text::%s", i+2, t.keys[i].typ)
		}
		where = " WHERE (" + strings.Join(cols, ", ") + ") > (" + strings.Join(params, ", ") + ")"
	}
	q := fmt.Sprintf("SELECT %s::text FROM %s AS t TABLESAMPLE SYSTEM ($1::float8)%s ORDER BY %s",
		strings.Join(cols, "::text, "), t.from(), where, strings.Join(cols, ", "))
	rows, err := conn.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("sample the keys of %s: %w", t.name, err)
	}
	var sample [][]string
	for rows.Next() {
		key := make([]string, len(t.keys))
		ptrs := make([]any, len(key))
		for i := range key {
			ptrs[i] = &key[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			rows.Close()
			return nil, fmt.Errorf("sample the keys of %s: %w", t.name, err)
		}
		sample = append(sample, key)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sample the keys of %s: %w", t.name, err)
	}
	// Each sampled row stands for 100/pct rows of the table.
	step := max(1, int(float64(chunkRows)*pct/100))
	if len(sample) < 2*step {
		return nil, nil // too few rows above lo: walk
	}
	var bounds [][]string
	for i := step - 1; i < len(sample)-step/2; i += step {
		bounds = append(bounds, sample[i])
	}
	t.sampledToEnd = true
	return bounds, nil
}
