package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Main runs the tests of a package and then stops the servers they shared.
// Every package that uses NewDatabase (or the S3 helpers) calls it from
// TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }
func Main(m *testing.M) int {
	mainRunning.Store(true)
	code := m.Run()
	if err := stopSharedPostgres(); err != nil {
		fmt.Fprintf(os.Stderr, "testenv: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	StopS3()
	return code
}

// mainRunning tells NewDatabase that Main will stop the shared server.
var mainRunning atomic.Bool

// sharedAttempts bounds how often a test binary tries to start the shared
// server: a failed start is retried by the next test, but a server that cannot
// start must not cost every test of the package a full attempt.
const sharedAttempts = 3

var shared struct {
	mu       sync.Mutex
	srv      *PostgresServer
	attempts int
	err      error
}

// SharedPostgres starts the test binary's shared PostgreSQL server on first
// use and returns it. Main stops it.
func SharedPostgres(ctx context.Context) (*PostgresServer, error) {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.srv != nil {
		return shared.srv, nil
	}
	if shared.attempts >= sharedAttempts {
		return nil, fmt.Errorf("gave up after %d attempts: %w", shared.attempts, shared.err)
	}
	shared.attempts++
	srv, err := StartPostgres(ctx, PostgresOptions{})
	if err != nil {
		shared.err = err
		return nil, err
	}
	shared.srv = srv
	return srv, nil
}

func stopSharedPostgres() error {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.srv == nil {
		return nil
	}
	err := shared.srv.Stop()
	shared.srv = nil
	return err
}

// Database is a fresh database on the shared server, dropped when its test
// ends.
type Database struct {
	Name   string // unquoted name
	URL    string // postgres:// URL
	DSN    string // key=value connection string
	Server *PostgresServer

	mu   sync.Mutex
	conn *pgx.Conn // shared by Exec and QueryRow
}

// NewDatabase creates a database for t on the shared server, starting the
// server first if needed. At cleanup it terminates the database's sessions
// (walsenders included), drops the logical replication slots on it and drops
// it. When no server can be started the test is skipped, or fails if the
// environment variable CI is "true".
func NewDatabase(t testing.TB) *Database {
	t.Helper()
	if !mainRunning.Load() {
		t.Fatal("testenv: NewDatabase needs TestMain to call testenv.Main, which stops the shared server")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	srv, err := SharedPostgres(ctx)
	if err != nil {
		unavailable(t, "PostgreSQL", err)
	}

	name := databaseName(t.Name())
	admin, err := pgx.Connect(ctx, srv.URL("postgres"))
	if err != nil {
		t.Fatalf("testenv: connect to %s: %v", srv.URL("postgres"), err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("testenv: create database %s: %v", name, err)
	}
	d := &Database{Name: name, URL: srv.URL(name), DSN: srv.DSN(name), Server: srv}
	t.Cleanup(func() {
		d.mu.Lock()
		if d.conn != nil {
			_ = d.conn.Close(context.Background())
			d.conn = nil
		}
		d.mu.Unlock()
		if err := dropDatabase(srv, name); err != nil {
			t.Errorf("testenv: %v", err)
		}
	})
	return d
}

// unavailable skips the test, or fails it under CI=true.
func unavailable(t testing.TB, what string, err error) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("testenv: %s unavailable (CI=true, so this fails rather than skips): %v", what, err)
	}
	t.Skipf("testenv: %s unavailable: %v", what, err)
}

// databaseName derives a unique, valid database name from a test name.
func databaseName(testName string) string {
	const maxBase = 40 // PostgreSQL truncates identifiers at 63 bytes
	var b strings.Builder
	b.WriteString("t_")
	underscore := true
	for _, r := range strings.ToLower(testName) {
		if b.Len() >= maxBase {
			break
		}
		switch {
		case r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			b.WriteRune(r)
			underscore = false
		case !underscore:
			b.WriteByte('_')
			underscore = true
		}
	}
	base := strings.TrimRight(b.String(), "_")
	if len(base) > maxBase {
		base = strings.TrimRight(base[:maxBase], "_")
	}
	var suffix [4]byte
	_, _ = rand.Read(suffix[:])
	return base + "_" + hex.EncodeToString(suffix[:])
}

// dropDatabase removes database name and everything that would keep it
// alive: its sessions, walsenders and logical replication slots.
func dropDatabase(srv *PostgresServer, name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin, err := pgx.Connect(ctx, srv.URL("postgres"))
	if err != nil {
		return fmt.Errorf("drop database %s: connect: %w", name, err)
	}
	defer admin.Close(ctx)

	// A slot in use by a walsender cannot be dropped, and a terminated
	// walsender takes a moment to release it: retry until it is gone.
	for {
		if _, err := admin.Exec(ctx,
			`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`,
			name); err != nil {
			return fmt.Errorf("drop database %s: terminate sessions: %w", name, err)
		}
		var remaining int
		err := admin.QueryRow(ctx, `
			SELECT count(*) FROM (
				SELECT pg_drop_replication_slot(slot_name)
				FROM pg_replication_slots
				WHERE database = $1 AND NOT active
			) dropped`, name).Scan(new(int))
		if err == nil {
			err = admin.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE database = $1`, name).Scan(&remaining)
		}
		if err == nil && remaining == 0 {
			break
		}
		if ctx.Err() != nil {
			return fmt.Errorf("drop database %s: drop replication slots (%d left): %w", name, remaining, errors.Join(err, context.Cause(ctx)))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	return nil
}

// Conn opens a connection to the database, closed when t ends.
func (d *Database) Conn(t testing.TB) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, d.URL)
	if err != nil {
		t.Fatalf("testenv: connect to %s: %v", d.Name, err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// Exec runs sql (with no args, several statements may be given) and fails t
// on error.
func (d *Database) Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	err := d.withConn(t, func(ctx context.Context, conn *pgx.Conn) error {
		_, err := conn.Exec(ctx, sql, args...)
		return err
	})
	if err != nil {
		t.Fatalf("testenv: exec %q: %v", sql, err)
	}
}

// QueryRow returns a row that runs sql when scanned:
//
//	var n int
//	db.QueryRow(t, "SELECT count(*) FROM t").Scan(&n)
func (d *Database) QueryRow(t testing.TB, sql string, args ...any) *Row {
	return &Row{t: t, d: d, sql: sql, args: args}
}

// Row is a query waiting for Scan.
type Row struct {
	t    testing.TB
	d    *Database
	sql  string
	args []any
}

// Scan runs the query and scans its single row into dest, failing the test on
// any error, including no rows.
func (r *Row) Scan(dest ...any) {
	r.t.Helper()
	err := r.d.withConn(r.t, func(ctx context.Context, conn *pgx.Conn) error {
		return conn.QueryRow(ctx, r.sql, r.args...).Scan(dest...)
	})
	if err != nil {
		r.t.Fatalf("testenv: query %q: %v", r.sql, err)
	}
}

// withConn runs f on the database's helper connection, reconnecting when the
// server went away (say, after Restart).
func (d *Database) withConn(t testing.TB, f func(context.Context, *pgx.Conn) error) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conn != nil && (d.conn.IsClosed() || d.conn.Ping(ctx) != nil) {
		_ = d.conn.Close(ctx)
		d.conn = nil
	}
	if d.conn == nil {
		conn, err := pgx.Connect(ctx, d.URL)
		if err != nil {
			return fmt.Errorf("connect to %s: %w", d.Name, err)
		}
		d.conn = conn
	}
	return f(ctx, d.conn)
}
