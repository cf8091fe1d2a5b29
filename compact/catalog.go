package compact

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// querier runs a catalog query. *pgx.Conn and *pgxpool.Pool satisfy it.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// catalog resolves the type of a column, as a pgoutput Relation message
// describes it (type OID and typmod), to the pgType that picks its
// converter: domains are followed to their base type, array types get their
// element type and declared dimensions. Built-in types are known statically;
// other types (domains, enums, composites, arrays of those, extension types
// such as citext) are looked up in pg_type when the catalog has a querier
// and kept as text when it has none. Results are cached per type OID and per
// column; a catalog is safe for concurrent use.
//
// The catalog describes the database as it is when asked, which may be later
// than the changes being compacted: a column or type dropped since then reads
// as text, and an array column dropped since then as one dimension.
type catalog struct {
	q        querier
	builtins *pgtype.Map

	mu    sync.Mutex
	types map[uint32]typeRow // pg_type rows by OID
	dims  map[attKey]int     // attndims by column
}

type attKey struct {
	relid   uint32
	attname string
}

// typeRow is the part of a pg_type row the catalog uses.
type typeRow struct {
	name     string
	typtype  byte // b base, c composite, d domain, e enum, p pseudo, r range, m multirange
	category byte // typcategory: 'A' for arrays
	elem     uint32
	base     uint32 // typbasetype, for domains
	typmod   int32  // typtypmod, for domains
	ndims    int    // typndims, for domains over arrays
	delim    byte
	length   int16
	missing  bool // no such type (dropped since)
}

func newCatalog(q querier) *catalog {
	return &catalog{
		q:        q,
		builtins: pgtype.NewMap(),
		types:    make(map[uint32]typeRow),
		dims:     make(map[attKey]int),
	}
}

// forget drops what the catalog cached about the columns of relation relid,
// for when a Relation message shows that its definition changed (ALTER
// COLUMN TYPE can change attndims while the type OID stays the same).
func (c *catalog) forget(relid uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range c.dims {
		if k.relid == relid {
			delete(c.dims, k)
		}
	}
}

// columnType returns the pgType of column attname of relation relid, whose
// type is typeOID with modifier typmod (both as in the Relation message).
func (c *catalog) columnType(ctx context.Context, relid uint32, attname string, typeOID uint32, typmod int32) (pgType, error) {
	oid, typmod, domainDims, err := c.resolveDomain(ctx, typeOID, typmod)
	if err != nil {
		return pgType{}, err
	}
	t, err := c.typeRow(ctx, oid)
	if err != nil {
		return pgType{}, err
	}
	name := t.name
	if t.missing {
		name = fmt.Sprintf("oid %d", oid)
	}
	if !isArrayType(oid, t) {
		return pgType{OID: oid, Typmod: typmod, Name: name}, nil
	}
	// An array column's typmod is its element's (numeric(10,2)[] has the
	// typmod of numeric(10,2)); an array of a domain takes the domain's.
	elem, typmod, _, err := c.resolveDomain(ctx, t.elem, typmod)
	if err != nil {
		return pgType{}, err
	}
	if t.delim != ',' && elem != pgtype.BoxOID {
		// A user-defined element type with its own delimiter: keep the
		// array's text rather than split it wrongly.
		return pgType{OID: oid, Typmod: typmod, Name: name}, nil
	}
	dims, err := c.attndims(ctx, relid, attname)
	if err != nil {
		return pgType{}, err
	}
	if dims == 0 {
		dims = domainDims
	}
	if dims == 0 {
		dims = 1
	}
	return pgType{OID: oid, Typmod: typmod, Dims: dims, Elem: elem, Name: name}, nil
}

// isArrayType reports whether t prints as an array literal "{...}".
// int2vector and oidvector are in the array category but print their
// elements separated by spaces: they stay text.
func isArrayType(oid uint32, t typeRow) bool {
	const int2vectorOID, oidvectorOID = 22, 30
	return !t.missing && t.category == 'A' && t.elem != 0 && t.length == -1 &&
		oid != int2vectorOID && oid != oidvectorOID
}

// resolveDomain follows domains down to their base type. A domain's typmod
// applies when the column has none (the nearest domain's wins), and so does
// its typndims for arrays.
func (c *catalog) resolveDomain(ctx context.Context, oid uint32, typmod int32) (uint32, int32, int, error) {
	ndims := 0
	for range 64 { // domains cannot form cycles; this bounds a broken catalog
		t, err := c.typeRow(ctx, oid)
		if err != nil {
			return 0, 0, 0, err
		}
		if t.typtype != 'd' || t.base == 0 {
			return oid, typmod, ndims, nil
		}
		if typmod == -1 {
			typmod = t.typmod
		}
		if ndims == 0 {
			ndims = t.ndims
		}
		oid = t.base
	}
	return 0, 0, 0, fmt.Errorf("compact: catalog: type %d: domain chain too long", oid)
}

// userTypesStart is FirstNormalObjectId: OIDs below it are built in.
const userTypesStart = 16384

// typeRow returns pg_type's row for oid, from the built-in table, the cache,
// or the server.
func (c *catalog) typeRow(ctx context.Context, oid uint32) (typeRow, error) {
	if t, ok := c.builtinType(oid); ok {
		return t, nil
	}
	c.mu.Lock()
	t, ok := c.types[oid]
	c.mu.Unlock()
	if ok {
		return t, nil
	}
	if c.q == nil {
		return typeRow{missing: true}, nil
	}
	t, err := c.queryType(ctx, oid)
	if err != nil {
		return typeRow{}, err
	}
	c.mu.Lock()
	c.types[oid] = t
	c.mu.Unlock()
	return t, nil
}

// builtinType describes a built-in type that pgx knows. Built-in types pgx
// does not know are looked up like user types.
func (c *catalog) builtinType(oid uint32) (typeRow, bool) {
	if oid >= userTypesStart {
		return typeRow{}, false
	}
	pt, ok := c.builtins.TypeForOID(oid)
	if !ok {
		return typeRow{}, false
	}
	t := typeRow{name: pt.Name, typtype: 'b', category: 'U', delim: ',', length: -1}
	if ac, ok := pt.Codec.(*pgtype.ArrayCodec); ok && ac.ElementType != nil {
		t.category, t.elem = 'A', ac.ElementType.OID
		if ac.Delimiter != 0 {
			t.delim = ac.Delimiter
		}
	}
	return t, true
}

func (c *catalog) queryType(ctx context.Context, oid uint32) (typeRow, error) {
	const q = `SELECT typname::text, typtype::text, typcategory::text, typelem::int8,
	typbasetype::int8, typtypmod, typndims, typdelim::text, typlen
FROM pg_catalog.pg_type WHERE oid = $1::oid`
	rows, err := c.q.Query(ctx, q, oid)
	if err != nil {
		return typeRow{}, fmt.Errorf("compact: catalog: type %d: %w", oid, err)
	}
	var (
		t                        typeRow
		typtype, category, delim string
		elem, base               int64
		typmod, ndims            int32
	)
	_, err = pgx.ForEachRow(rows, []any{&t.name, &typtype, &category, &elem, &base, &typmod, &ndims, &delim, &t.length}, func() error {
		return nil
	})
	if err != nil {
		return typeRow{}, fmt.Errorf("compact: catalog: type %d: %w", oid, err)
	}
	if t.name == "" {
		return typeRow{missing: true}, nil
	}
	t.typtype, t.category, t.delim = pgChar(typtype), pgChar(category), pgChar(delim)
	t.elem, t.base = uint32(elem), uint32(base)
	t.typmod, t.ndims = typmod, int(ndims)
	return t, nil
}

func pgChar(s string) byte {
	if s == "" {
		return 0
	}
	return s[0]
}

// attndims returns the declared dimensions of a column (0 when not declared
// or unknown).
func (c *catalog) attndims(ctx context.Context, relid uint32, attname string) (int, error) {
	if c.q == nil {
		return 0, nil
	}
	key := attKey{relid, attname}
	c.mu.Lock()
	n, ok := c.dims[key]
	c.mu.Unlock()
	if ok {
		return n, nil
	}
	const q = `SELECT attndims FROM pg_catalog.pg_attribute
WHERE attrelid = $1::oid AND attname = $2 AND NOT attisdropped`
	rows, err := c.q.Query(ctx, q, relid, attname)
	if err != nil {
		return 0, fmt.Errorf("compact: catalog: dimensions of %d.%s: %w", relid, attname, err)
	}
	var dims int32
	if _, err := pgx.ForEachRow(rows, []any{&dims}, func() error { return nil }); err != nil {
		return 0, fmt.Errorf("compact: catalog: dimensions of %d.%s: %w", relid, attname, err)
	}
	if dims < 0 {
		return 0, errors.New("compact: catalog: negative attndims")
	}
	c.mu.Lock()
	c.dims[key] = int(dims)
	c.mu.Unlock()
	return int(dims), nil
}

// stableOutput reports whether the text output of a column of type t
// depends only on the stored value: true for base types and arrays of them,
// false for enums (a label can be renamed), composites and ranges of user
// types (their parts can be), money (lc_monetary) and the OID alias types
// (reg*: object names). The TOAST state store keeps values of stable types
// only, so that a value it fills is the text PostgreSQL would send.
func (c *catalog) stableOutput(ctx context.Context, t pgType) (bool, error) {
	oid := t.OID
	for range 2 { // the type, then an array's element
		switch oid {
		case 790, 791, // money, _money
			24, 2202, 2203, 2204, 2205, 2206, 3734, 3769, 4089, 4096, 4191: // regproc … regcollation
			return false, nil
		}
		row, err := c.typeRow(ctx, oid)
		if err != nil {
			return false, err
		}
		if row.missing || row.typtype != 'b' {
			return false, nil
		}
		if row.category != 'A' || row.elem == 0 {
			return true, nil
		}
		elem, _, _, err := c.resolveDomain(ctx, row.elem, -1)
		if err != nil {
			return false, err
		}
		oid = elem
	}
	return false, nil // an array of arrays: not a type PostgreSQL has
}
