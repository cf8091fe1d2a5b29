package testenv

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

func TestNewDatabase(t *testing.T) {
	t.Parallel()
	db := NewDatabase(t)

	var walLevel string
	db.QueryRow(t, "SHOW wal_level").Scan(&walLevel)
	if got, want := walLevel, "logical"; got != want {
		t.Errorf("wal_level = %q, want %q", got, want)
	}

	// Several statements in one Exec, then a parameterised one.
	db.Exec(t, "CREATE TABLE items (id int PRIMARY KEY, name text); INSERT INTO items VALUES (1, 'one')")
	db.Exec(t, "INSERT INTO items VALUES ($1, $2)", 2, "two")
	var n int
	db.QueryRow(t, "SELECT count(*) FROM items WHERE id > $1", 0).Scan(&n)
	if got, want := n, 2; got != want {
		t.Errorf("count = %d, want %d", got, want)
	}

	// The URL, the DSN and Conn all reach the same database.
	ctx := t.Context()
	for _, connString := range []string{db.URL, db.DSN} {
		conn, err := pgx.Connect(ctx, connString)
		if err != nil {
			t.Fatalf("connect %q: %v", connString, err)
		}
		var got string
		if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&got); err != nil {
			t.Fatal(err)
		}
		conn.Close(ctx)
		if got != db.Name {
			t.Errorf("%q: current_database() = %q, want %q", connString, got, db.Name)
		}
	}
	var name string
	if err := db.Conn(t).QueryRow(ctx, "SELECT name FROM items WHERE id = 2").Scan(&name); err != nil {
		t.Fatal(err)
	}
	if name != "two" {
		t.Errorf("name = %q, want %q", name, "two")
	}
}

// TestCleanupDropsSlots checks that a database's cleanup gets rid of its
// logical slots, idle and streaming, and of the database itself.
func TestCleanupDropsSlots(t *testing.T) {
	t.Parallel()
	observer := NewDatabase(t)
	ctx := t.Context()

	// The replication connection outlives the subtest, so that the
	// subtest's cleanup meets a streaming walsender.
	var repl *pgconn.PgConn
	t.Cleanup(func() {
		if repl != nil {
			_ = repl.Close(context.Background())
		}
	})

	var dropped string
	t.Run("slots", func(t *testing.T) {
		db := NewDatabase(t)
		dropped = db.Name
		db.Exec(t, "CREATE TABLE items (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE items")
		var lsn string
		db.QueryRow(t, "SELECT lsn::text FROM pg_create_logical_replication_slot('idle_slot', 'pgoutput')").Scan(&lsn)
		db.QueryRow(t, "SELECT lsn::text FROM pg_create_logical_replication_slot('busy_slot', 'pgoutput')").Scan(&lsn)

		var err error
		repl, err = pgconn.Connect(ctx, db.URL+"&replication=database")
		if err != nil {
			t.Fatal(err)
		}
		err = pglogrepl.StartReplication(ctx, repl, "busy_slot", 0, pglogrepl.StartReplicationOptions{
			PluginArgs: []string{"proto_version '1'", "publication_names 'pub'"},
		})
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool {
			var active bool
			db.QueryRow(t, "SELECT active FROM pg_replication_slots WHERE slot_name = 'busy_slot'").Scan(&active)
			return active
		})

		var slots int
		db.QueryRow(t, "SELECT count(*) FROM pg_replication_slots WHERE database = current_database() AND slot_type = 'logical'").Scan(&slots)
		if got, want := slots, 2; got != want {
			t.Fatalf("logical slots = %d, want %d", got, want)
		}
	})
	if dropped == "" {
		t.Fatal("subtest did not create a database")
	}

	var slots, dbs int
	observer.QueryRow(t, "SELECT count(*) FROM pg_replication_slots WHERE database = $1", dropped).Scan(&slots)
	observer.QueryRow(t, "SELECT count(*) FROM pg_database WHERE datname = $1", dropped).Scan(&dbs)
	if slots != 0 || dbs != 0 {
		t.Errorf("after cleanup of %s: %d slots and %d databases left, want none", dropped, slots, dbs)
	}
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestStartPostgres runs a server of its own: settings, restart, stop.
func TestStartPostgres(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	// A value with a space and a quote exercises the quoting of pg_ctl -o.
	const prefix = "%m [%p] it's "
	srv, err := StartPostgres(ctx, PostgresOptions{ExtraConfig: map[string]string{
		"work_mem":        "5MB",
		"log_line_prefix": prefix,
	}})
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_ = srv.Stop()
		}
	})

	query := func(sql string) string {
		t.Helper()
		conn, err := pgx.Connect(ctx, srv.DSN("postgres"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var s string
		if strings.HasPrefix(sql, "CREATE") {
			_, err = conn.Exec(ctx, sql)
		} else {
			err = conn.QueryRow(ctx, sql).Scan(&s)
		}
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return s
	}
	for setting, want := range map[string]string{
		"wal_level":             "logical",
		"max_replication_slots": "40",
		"fsync":                 "off",
		"work_mem":              "5MB",
		"log_line_prefix":       prefix,
		"port":                  strconv.Itoa(srv.Port),
	} {
		if got := query("SHOW " + setting); got != want {
			t.Errorf("SHOW %s = %q, want %q", setting, got, want)
		}
	}
	query("CREATE TABLE kept AS SELECT 'still here'::text AS v")

	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := query("SELECT v FROM kept"), "still here"; got != want {
		t.Errorf("after restart: %q, want %q", got, want)
	}
	for setting, want := range map[string]string{"work_mem": "5MB", "log_line_prefix": prefix, "wal_level": "logical"} {
		if got := query("SHOW " + setting); got != want {
			t.Errorf("after restart: SHOW %s = %q, want %q", setting, got, want)
		}
	}
	if fi, err := os.Stat(srv.LogPath()); err != nil || fi.Size() == 0 {
		t.Errorf("log %s: %v (empty: %v)", srv.LogPath(), err, err == nil)
	}

	pidFile, err := os.ReadFile(filepath.Join(srv.Dir, "data", "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.SplitN(string(pidFile), "\n", 2)[0])
	stopped = true
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(srv.Dir); !os.IsNotExist(err) {
		t.Errorf("%s still exists after Stop (%v)", srv.Dir, err)
	}
	if pid > 0 && processAlive(pid) {
		t.Errorf("postmaster %d still running after Stop", pid)
	}
}

func TestDatabaseName(t *testing.T) {
	t.Parallel()
	valid := regexp.MustCompile(`^t_[a-z0-9_]+_[0-9a-f]{8}$`)
	for _, tc := range []struct{ test, wantBase string }{
		{"TestFoo", "t_testfoo"},
		{"TestFoo/Sub_Case#01", "t_testfoo_sub_case_01"},
		{"TestÜber--weird  Name/", "t_test_ber_weird_name"},
		{strings.Repeat("TestVeryLongName", 10), ("t_" + strings.Repeat("testverylongname", 3))[:40]},
	} {
		got := databaseName(tc.test)
		if !valid.MatchString(got) || len(got) > 63 {
			t.Errorf("databaseName(%q) = %q: not a valid name", tc.test, got)
		}
		if base := got[:len(got)-9]; base != tc.wantBase {
			t.Errorf("databaseName(%q) = %q, want base %q", tc.test, got, tc.wantBase)
		}
	}
	if a, b := databaseName("TestX"), databaseName("TestX"); a == b {
		t.Errorf("two names for the same test are equal: %q", a)
	}
}
