package compact

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/parquet-go/parquet-go"
)

// Metadata columns, in file order; table columns follow them.
const (
	colOp = iota
	colCommitLSN
	colSeq
	colLSN
	colXid
	colCommitTS
	colUnchanged
	metaColumns
)

func metadataFields() []field {
	return []field{
		{"_op", parquet.String()},
		// Runs of equal or increasing numbers: delta encoding stores them
		// in a bit or two per row where plain stores 8 bytes before
		// compression (a pgbench_accounts-like file is half the size, and
		// cheaper to write). [issue 7]
		{"_commit_lsn", deltaEncoded(parquet.Leaf(parquet.Int64Type))},
		{"_seq", deltaEncoded(parquet.Leaf(parquet.Int64Type))},
		{"_lsn", deltaEncoded(parquet.Leaf(parquet.Int64Type))},
		{"_xid", deltaEncoded(parquet.Leaf(parquet.Int64Type))},
		{"_commit_ts", deltaEncoded(parquet.TimestampAdjusted(parquet.Microsecond, true))},
		{"_unchanged", parquet.List(parquet.String())},
	}
}

func deltaEncoded(n parquet.Node) parquet.Node {
	return parquet.Encoded(n, &parquet.DeltaBinaryPacked)
}

// column is one table column as of a Relation message.
type column struct {
	Name string
	Type pgType
	Key  bool // part of the replica identity (primary key, index or FULL)
	conv converter

	// Field is the column's name in the lake: Name, unless a metadata column
	// has that name (see fieldNames).
	Field     string
	nameBytes []byte // Field, for _unchanged
	// stable: the column's text output depends only on the stored value
	// (not on an enum's labels, a composite's fields or lc_monetary), so a
	// value the state store kept can fill a later unchanged TOAST value.
	stable bool
}

// Replica identities, as in pg_class.relreplident and the Relation message.
const (
	identityDefault = 'd' // the primary key, if any
	identityNothing = 'n'
	identityFull    = 'f' // the whole row
	identityIndex   = 'i' // REPLICA IDENTITY USING INDEX
)

// tableSchema is one version of a table's columns.
type tableSchema struct {
	Table           string // lake name, <schema>.<table>
	Schema, Name    string // PostgreSQL names
	RelationID      uint32 // pg_class OID: differs when a table is dropped and re-created
	ReplicaIdentity byte   // d, n, f, i
	Columns         []column
	fingerprint     string
	parquet         *parquet.Schema
	Version         string // lake schema version, set when first written
	hasKey          bool   // some column is part of the replica identity
}

// keyed reports whether the table's rows have an identity narrower than the
// whole row (a primary key or a replica identity index), so that an UPDATE
// can omit unchanged TOAST values that only the row's earlier versions hold.
func (ts *tableSchema) keyed() bool {
	return ts.hasKey && ts.ReplicaIdentity != identityFull
}

// appendKey appends an encoding of the replica identity columns of vals to
// dst: per key column, its name and value. It returns nil when a key value
// is unknown (an unchanged TOAST value that could not be filled).
func (ts *tableSchema) appendKey(dst []byte, vals []colValue) []byte {
	for i, c := range ts.Columns {
		if !c.Key {
			continue
		}
		v := vals[i]
		if v.unchanged {
			return nil
		}
		dst = binary.AppendUvarint(dst, uint64(len(c.Name)))
		dst = append(dst, c.Name...)
		if v.null {
			dst = append(dst, 'n')
			continue
		}
		dst = append(dst, 't')
		dst = binary.AppendUvarint(dst, uint64(len(v.data)))
		dst = append(dst, v.data...)
	}
	return dst
}

// schemaDoc is the JSON written to _walcake/schemas/<table>/<version>.json.
type schemaDoc struct {
	Format          int            `json:"format"`
	Table           string         `json:"table"`
	Schema          string         `json:"schema"`
	Name            string         `json:"name"`
	Version         string         `json:"version"`
	FirstCommitLSN  string         `json:"first_commit_lsn"`
	RelationOID     uint32         `json:"relation_oid,omitempty"` // pg_class OID of the table
	ReplicaIdentity string         `json:"replica_identity"`
	Columns         []schemaColumn `json:"columns"`
}

type schemaColumn struct {
	Name    string `json:"name"`
	Type    string `json:"type"`
	OID     uint32 `json:"oid"`
	Typmod  int32  `json:"typmod"`
	Dims    int    `json:"dims,omitempty"`
	ElemOID uint32 `json:"elem_oid,omitempty"`
	Key     bool   `json:"key,omitempty"`
	Parquet string `json:"parquet"`
	// Field is the column's name in the data files when it differs from
	// Name (a table column named like a metadata column, e.g. "_op", is
	// "__op").
	Field string `json:"field,omitempty"`
}

func (ts *tableSchema) doc(firstCommit pglogrepl.LSN) schemaDoc {
	d := schemaDoc{
		Format: 1, Table: ts.Table, Schema: ts.Schema, Name: ts.Name, Version: ts.Version,
		FirstCommitLSN:  firstCommit.String(),
		RelationOID:     ts.RelationID,
		ReplicaIdentity: string(ts.ReplicaIdentity),
	}
	for _, c := range ts.Columns {
		sc := schemaColumn{
			Name: c.Name, Type: c.Type.Name, OID: c.Type.OID, Typmod: c.Type.Typmod,
			Dims: c.Type.Dims, ElemOID: c.Type.Elem, Key: c.Key,
			Parquet: strings.TrimSpace(c.conv.node().String()),
		}
		if c.Field != c.Name {
			sc.Field = c.Field
		}
		d.Columns = append(d.Columns, sc)
	}
	return d
}

// fingerprint identifies a schema version by what changes the files
// (column names, types and keys) and by the table's relation OID, so that a
// table dropped and re-created starts a new version.
func (d schemaDoc) fingerprint() string {
	return fmt.Sprintf("%d:%s", d.RelationOID, fingerprintOf(d.Columns))
}

// fingerprintOf identifies a list of columns: names, types and keys.
func fingerprintOf(cols []schemaColumn) string {
	type fp struct {
		Name      string
		OID, Elem uint32
		Typmod    int32
		Dims      int
		Key       bool
	}
	v := make([]fp, len(cols))
	for i, c := range cols {
		v[i] = fp{c.Name, c.OID, c.ElemOID, c.Typmod, c.Dims, c.Key}
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// latestSchemaDoc reads the newest schema version of a lake table; ok is
// false when the lake has none.
func latestSchemaDoc(ctx context.Context, store Store, table string) (doc schemaDoc, ok bool, err error) {
	var last string
	err = store.List(ctx, schemaPrefix+table+"/", func(o Object) error {
		if strings.HasSuffix(o.Key, ".json") {
			last = o.Key
		}
		return nil
	})
	if err != nil {
		return doc, false, fmt.Errorf("list schemas of %s: %w", table, err)
	}
	if last == "" {
		return doc, false, nil
	}
	b, err := getAll(ctx, store, last)
	if err != nil {
		return doc, false, fmt.Errorf("read schema %s: %w", last, err)
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return doc, false, fmt.Errorf("parse schema %s: %w", last, err)
	}
	return doc, true, nil
}

// newTableSchema resolves a Relation message's columns through the catalog.
func newTableSchema(ctx context.Context, cat *catalog, rel *pglogrepl.RelationMessage) (*tableSchema, error) {
	ts := &tableSchema{
		Table:           tableName(rel.Namespace, rel.RelationName),
		Schema:          rel.Namespace,
		Name:            rel.RelationName,
		RelationID:      rel.RelationID,
		ReplicaIdentity: rel.ReplicaIdentity,
	}
	fields := metadataFields()
	names := fieldNames(rel.Columns)
	for i, rc := range rel.Columns {
		t, err := cat.columnType(ctx, rel.RelationID, rc.Name, rc.DataType, rc.TypeModifier)
		if err != nil {
			return nil, fmt.Errorf("table %s column %s: %w", ts.Table, rc.Name, err)
		}
		stable, err := cat.stableOutput(ctx, t)
		if err != nil {
			return nil, fmt.Errorf("table %s column %s: %w", ts.Table, rc.Name, err)
		}
		c := column{Name: rc.Name, Field: names[i], Type: t, Key: rc.Flags&1 == 1, conv: newConverter(t),
			nameBytes: []byte(names[i]), stable: stable}
		ts.hasKey = ts.hasKey || c.Key
		ts.Columns = append(ts.Columns, c)
		fields = append(fields, field{name: c.Field, node: c.conv.node()})
	}
	ts.parquet = parquet.NewSchema(ts.Table, orderedGroup(fields))
	ts.fingerprint = ts.doc(0).fingerprint()
	return ts, nil
}

// newVersionName names a new schema version of table first written by the
// transaction that commits at commit: the commit LSN in fixed-width hex, so
// that versions sort like the stream. A second version in the same
// transaction (DDL between two changes of the table) takes the next LSN up,
// and so on: no other transaction commits there, a commit record being
// longer than a byte.
func (c *committer) newVersionName(table string, commit pglogrepl.LSN) string {
	for {
		v, taken := lsnHex(commit), false
		for _, d := range c.newSchemas {
			taken = taken || (d.Table == table && d.Version == v)
		}
		if !taken {
			return v
		}
		commit++
	}
}

// unboundedPaths lists the leaf columns of the table's columns whose values
// can be of any length (BYTE_ARRAY: text, json, bytea, numeric as text,
// arrays of those). Their min and max are not written to page headers or
// column chunk statistics: parquet-go would copy whole values there, up to
// eight times each (a 64 MiB value made an 865 MiB file), and readers load
// the footer whole. The column index keeps their bounds, truncated.
func (ts *tableSchema) unboundedPaths() [][]string {
	var out [][]string
	for _, path := range ts.parquet.Columns() {
		if len(path) == 0 || strings.HasPrefix(path[0], "_") && ts.isMetadata(path[0]) {
			continue
		}
		leaf, ok := ts.parquet.Lookup(path...)
		if ok && leaf.Node.Type().Kind() == parquet.ByteArray {
			out = append(out, path)
		}
	}
	return out
}

func (ts *tableSchema) isMetadata(name string) bool {
	for _, f := range metadataFields() {
		if f.name == name {
			return true
		}
	}
	return false
}

// fieldNames returns the lake names of a table's columns: their own, except
// that a column named like a metadata column (a table may well have a column
// "_op" or "_lsn") gets one more leading underscore until no metadata column
// and no other column of the table has the name.
func fieldNames(cols []*pglogrepl.RelationMessageColumn) []string {
	taken := map[string]bool{}
	for _, f := range metadataFields() {
		taken[f.name] = true
	}
	own := map[string]bool{}
	for _, c := range cols {
		own[c.Name] = true
	}
	names := make([]string, len(cols))
	for i, c := range cols {
		name := c.Name
		if taken[name] {
			for taken[name] || own[name] {
				name = "_" + name
			}
		}
		taken[name] = true
		names[i] = name
	}
	return names
}
