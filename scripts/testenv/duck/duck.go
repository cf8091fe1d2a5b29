// Package duck opens DuckDB as an independent reader of the Parquet files that
// wal-cake writes. Tests only: it needs cgo, and the walcake binary never
// imports it.
//
// The database is in memory and offline: extensions are never downloaded
// (parquet, json and icu are built in) and DuckDB's home directory is the
// test's temp dir, so nothing is written under ~/.duckdb. Object-store files
// are read from local copies (httpfs is not available).
package duck

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"net/url"
	"testing"

	"github.com/duckdb/duckdb-go/v2"
)

// Open returns an in-memory DuckDB, closed when t ends. Sessions use UTC.
func Open(t testing.TB) *sql.DB {
	t.Helper()
	// Set as database configuration (the DSN's query), so the settings hold
	// from the start and for every connection of the pool, not just the one
	// that would run a SET.
	config := url.Values{
		"home_directory":               {t.TempDir()},
		"autoinstall_known_extensions": {"false"},
		"autoload_known_extensions":    {"true"},
	}
	// TimeZone needs icu, which is loaded only once the database exists:
	// set it per connection.
	connector, err := duckdb.NewConnector("?"+config.Encode(), func(execer driver.ExecerContext) error {
		_, err := execer.ExecContext(context.Background(), "SET TimeZone = 'UTC'", nil)
		return err
	})
	if err != nil {
		t.Fatalf("duck: open: %v", err)
	}
	db := sql.OpenDB(connector) // closes connector on Close
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Errorf("duck: close: %v", err)
		}
	})
	return db
}

// Rows runs query and returns all its rows, each as the driver's values
// (int64, float64, string, []byte, time.Time, duckdb.Decimal, maps, slices …).
// Any error fails t.
func Rows(t testing.TB, db *sql.DB, query string, args ...any) [][]any {
	t.Helper()
	rows, err := db.QueryContext(context.Background(), query, args...)
	if err != nil {
		t.Fatalf("duck: %s: %v", query, err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		t.Fatalf("duck: %s: %v", query, err)
	}
	var out [][]any
	for rows.Next() {
		row := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range row {
			ptrs[i] = &row[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatalf("duck: %s: %v", query, err)
		}
		out = append(out, row)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("duck: %s: %v", query, err)
	}
	return out
}
