package compact

import (
	"context"
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
		{"_commit_lsn", parquet.Leaf(parquet.Int64Type)},
		{"_seq", parquet.Leaf(parquet.Int64Type)},
		{"_lsn", parquet.Leaf(parquet.Int64Type)},
		{"_xid", parquet.Leaf(parquet.Int64Type)},
		{"_commit_ts", parquet.TimestampAdjusted(parquet.Microsecond, true)},
		{"_unchanged", parquet.List(parquet.String())},
	}
}

// column is one table column as of a Relation message.
type column struct {
	Name string
	Type pgType
	Key  bool // part of the replica identity (primary key, index or FULL)
	conv converter
}

// tableSchema is one version of a table's columns.
type tableSchema struct {
	Table           string // lake name, <schema>.<table>
	Schema, Name    string // PostgreSQL names
	ReplicaIdentity byte   // d, n, f, i
	Columns         []column
	fingerprint     string
	parquet         *parquet.Schema
	Version         string // lake schema version, set when first written
}

// schemaDoc is the JSON written to _walcake/schemas/<table>/<version>.json.
type schemaDoc struct {
	Format          int            `json:"format"`
	Table           string         `json:"table"`
	Schema          string         `json:"schema"`
	Name            string         `json:"name"`
	Version         string         `json:"version"`
	FirstCommitLSN  string         `json:"first_commit_lsn"`
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
}

func (ts *tableSchema) doc(firstCommit pglogrepl.LSN) schemaDoc {
	d := schemaDoc{
		Format: 1, Table: ts.Table, Schema: ts.Schema, Name: ts.Name, Version: ts.Version,
		FirstCommitLSN:  firstCommit.String(),
		ReplicaIdentity: string(ts.ReplicaIdentity),
	}
	for _, c := range ts.Columns {
		d.Columns = append(d.Columns, schemaColumn{
			Name: c.Name, Type: c.Type.Name, OID: c.Type.OID, Typmod: c.Type.Typmod,
			Dims: c.Type.Dims, ElemOID: c.Type.Elem, Key: c.Key,
			Parquet: strings.TrimSpace(c.conv.node().String()),
		})
	}
	return d
}

// fingerprintOf identifies a schema version by what changes the files:
// column names, types and keys.
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

// newTableSchema resolves a Relation message's columns through the catalog.
func newTableSchema(ctx context.Context, cat *catalog, rel *pglogrepl.RelationMessage) (*tableSchema, error) {
	ts := &tableSchema{
		Table:           tableName(rel.Namespace, rel.RelationName),
		Schema:          rel.Namespace,
		Name:            rel.RelationName,
		ReplicaIdentity: rel.ReplicaIdentity,
	}
	fields := metadataFields()
	for _, rc := range rel.Columns {
		t, err := cat.columnType(ctx, rel.RelationID, rc.Name, rc.DataType, rc.TypeModifier)
		if err != nil {
			return nil, fmt.Errorf("table %s column %s: %w", ts.Table, rc.Name, err)
		}
		c := column{Name: rc.Name, Type: t, Key: rc.Flags&1 == 1, conv: newConverter(t)}
		ts.Columns = append(ts.Columns, c)
		fields = append(fields, field{name: rc.Name, node: c.conv.node()})
	}
	ts.parquet = parquet.NewSchema(ts.Table, orderedGroup(fields))
	ts.fingerprint = fingerprintOf(ts.doc(0).Columns)
	return ts, nil
}
