package compact

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/wal-cake/wal-cake/capture"
	"github.com/wal-cake/wal-cake/scripts/testenv"
	"github.com/wal-cake/wal-cake/spool"
	"github.com/wal-cake/wal-cake/upload"
)

// Tables of the compaction benchmark: pgbench_accounts-like, and a wide
// one of mixed types.
var benchTables = []struct {
	name, ddl, insert string
}{
	{"narrow", `CREATE TABLE narrow (aid int PRIMARY KEY, bid int NOT NULL, abalance int NOT NULL, filler char(84))`,
		`INSERT INTO narrow SELECT g, 1 + (g - 1) / 100000, 0, '' FROM generate_series($1::int, $2::int) g`},
	{"wide", `CREATE TABLE wide (id bigint PRIMARY KEY, amount numeric(12,2) NOT NULL, created timestamptz NOT NULL,
		note text, doc jsonb, uid uuid NOT NULL, tags int[], qty int, ratio float8, active bool)`,
		`INSERT INTO wide SELECT g, (g % 100000) / 100.0 + 0.01, '2024-01-01T00:00:00Z'::timestamptz + g * interval '1 second',
		'note ' || md5(g::text), jsonb_build_object('k', g, 'tag', 'v' || (g % 10)), md5(g::text)::uuid,
		ARRAY[g % 7, g % 11, g % 13], g % 1000, g / 7.0, g % 2 = 0 FROM generate_series($1::int, $2::int) g`},
}

// BenchmarkCompact measures compaction of a captured spool of
// WALCAKE_BENCH_ROWS rows (default 200,000) in 4 transactions into a
// local-directory lake, per table. Run it with -cpuprofile to see where the
// time goes.
func BenchmarkCompact(b *testing.B) {
	rows := 200_000
	if v := os.Getenv("WALCAKE_BENCH_ROWS"); v != "" {
		fmt.Sscan(v, &rows)
	}
	ctx := context.Background()
	for _, tb := range benchTables {
		b.Run(tb.name, func(b *testing.B) {
			db := testenv.NewDatabase(b)
			db.Exec(b, tb.ddl)
			db.Exec(b, `CREATE PUBLICATION bench FOR TABLE `+tb.name)
			db.Exec(b, `SELECT pg_create_logical_replication_slot('bench', 'pgoutput')`)
			for i := 0; i < 4; i++ {
				db.Exec(b, tb.insert, i*rows/4+1, (i+1)*rows/4)
			}
			captured := filepath.Join(b.TempDir(), "spool")
			sp, err := spool.Open(captured, spool.Options{})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := capture.Run(ctx, capture.Config{ConnString: db.URL, Slot: "bench", Publication: "bench", IdleWait: 100 * time.Millisecond}, sp); err != nil {
				b.Fatal(err)
			}
			var cpu time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				dir := b.TempDir()
				if err := copyFiles(captured, filepath.Join(dir, "spool")); err != nil {
					b.Fatal(err)
				}
				sp, err := spool.Open(filepath.Join(dir, "spool"), spool.Options{})
				if err != nil {
					b.Fatal(err)
				}
				store, err := upload.NewDir(filepath.Join(dir, "lake"))
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				before := cpuTime()
				cfg := Config{Store: store, ConnString: db.URL, Slot: "bench"}
				if os.Getenv("WALCAKE_BENCH_LOG") != "" {
					cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
				}
				st, err := Run(ctx, cfg, sp)
				if err != nil {
					b.Fatal(err)
				}
				cpu += cpuTime() - before
				if n := sumRows(st.Rows); n != int64(rows) {
					b.Fatalf("%d rows written, want %d", n, rows)
				}
			}
			b.ReportMetric(float64(rows)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
			b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
		})
	}
}

func copyFiles(from, to string) error {
	if err := os.MkdirAll(to, 0o700); err != nil {
		return err
	}
	entries, err := os.ReadDir(from)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), data, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
