// Command bench-backfill measures walcake backfill against PostgreSQL's own
// COPY ... TO STDOUT on the same table in the same run: it starts a
// throwaway PostgreSQL, loads a pgbench_accounts-like table (aid int primary
// key, bid int, abalance int, filler char(84)), then alternates a COPY of the
// whole table into io.Discard with a backfill of it into a local lake of
// ZSTD Parquet, and prints the rows/s of each, their medians and the ratio.
//
//	go run ./scripts/bench-backfill [-rows 1000000] [-pairs 3] [-parallel 2] [-chunk-rows 250000]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/wal-cake/wal-cake/compact"
	"github.com/wal-cake/wal-cake/scripts/testenv"
	"github.com/wal-cake/wal-cake/upload"
)

func main() {
	rows := flag.Int("rows", 1_000_000, "rows of the table")
	pairs := flag.Int("pairs", 3, "alternating COPY / backfill pairs")
	parallel := flag.Int("parallel", 2, "backfill --parallel")
	chunkRows := flag.Int64("chunk-rows", 250_000, "backfill --chunk-rows")
	verbose := flag.Bool("v", false, "log the backfill's steps (debug level) to stderr")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the backfills to this file")
	flag.Parse()
	if *verbose {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench-backfill:", err)
			os.Exit(1)
		}
		defer f.Close()
		profile = f
	}
	if err := run(context.Background(), *rows, *pairs, *parallel, *chunkRows); err != nil {
		fmt.Fprintln(os.Stderr, "bench-backfill:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, rows, pairs, parallel int, chunkRows int64) error {
	srv, err := testenv.StartPostgres(ctx, testenv.PostgresOptions{})
	if err != nil {
		return err
	}
	defer srv.Stop()
	url := srv.URL("postgres")
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	fmt.Printf("machine: %d CPUs, %s; PostgreSQL %s\n", runtime.NumCPU(), runtime.Version(), conn.PgConn().ParameterStatus("server_version"))
	started := time.Now()
	for _, sql := range []string{
		"CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84)) WITH (fillfactor = 100)",
		fmt.Sprintf("INSERT INTO pgbench_accounts SELECT g, (g - 1) / 100000 + 1, 0, '' FROM generate_series(1, %d) g", rows),
		"VACUUM ANALYZE pgbench_accounts",
		"CREATE PUBLICATION bench FOR TABLE pgbench_accounts",
		"SELECT pg_create_logical_replication_slot('bench', 'pgoutput')",
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			return fmt.Errorf("%s: %w", sql, err)
		}
	}
	fmt.Printf("loaded %d rows in %.1f s\n", rows, time.Since(started).Seconds())
	pidText, err := os.ReadFile(filepath.Join(srv.Dir, "data", "postmaster.pid"))
	if err != nil {
		return err
	}
	postmaster, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(pidText), "\n", 2)[0]))
	if err != nil {
		return fmt.Errorf("postmaster.pid: %w", err)
	}

	tmp, err := os.MkdirTemp("", "bench-backfill-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	var copyRates, bfRates, ratios, idleRatios []float64
	for i := range pairs {
		// COPY of the whole table into io.Discard: what the server can send.
		srv0 := serverCPU(postmaster)
		t0 := time.Now()
		tag, err := conn.PgConn().CopyTo(ctx, io.Discard, "COPY pgbench_accounts TO STDOUT")
		if err != nil {
			return fmt.Errorf("copy: %w", err)
		}
		copyRate := float64(tag.RowsAffected()) / time.Since(t0).Seconds()
		copyRates = append(copyRates, copyRate)
		copyCPU := serverCPU(postmaster) - srv0

		lake := filepath.Join(tmp, fmt.Sprintf("lake-%d", i))
		store, err := upload.NewDir(lake)
		if err != nil {
			return err
		}
		spill := filepath.Join(tmp, fmt.Sprintf("spill-%d", i))
		if err := os.Mkdir(spill, 0o700); err != nil {
			return err
		}
		if profile != nil {
			pprof.StartCPUProfile(profile)
		}
		cpu0, srv0 := processCPU(), serverCPU(postmaster)
		t0 = time.Now()
		st, err := compact.Backfill(ctx, compact.BackfillConfig{
			Store: store, ConnString: url, Slot: "bench", Publication: "bench",
			Parallel: parallel, ChunkRows: chunkRows, TempDir: spill, Again: true, Logger: logger,
		})
		if err != nil {
			return fmt.Errorf("backfill: %w", err)
		}
		elapsed := time.Since(t0)
		cpu, srvCPU := processCPU()-cpu0, serverCPU(postmaster)-srv0
		// Were the machine idle, the backfill would take at least its CPU
		// time spread over the cores, and COPY its server's CPU time.
		idle := (cpu + srvCPU).Seconds() / float64(runtime.NumCPU())
		idleRatios = append(idleRatios, copyCPU.Seconds()/idle)
		if profile != nil {
			pprof.StopCPUProfile()
			profile = nil // the first backfill only
		}
		bfRate := float64(st.Rows()) / elapsed.Seconds()
		bfRates = append(bfRates, bfRate)
		ratios = append(ratios, bfRate/copyRate)
		size := dirSize(lake)
		fmt.Printf("pair %d: COPY %8.0f rows/s (server %.2f CPU-s) | backfill %8.0f rows/s (%d rows, %d chunks, %.1f MiB Parquet, %.2f s; CPU-s: walcake %.2f, server %.2f) | ratio %.2f (CPU-bound on idle cores: %.2f)\n",
			i+1, copyRate, copyCPU.Seconds(), bfRate, st.Rows(), st.Tables[0].ChunksDone, float64(size)/(1<<20), elapsed.Seconds(), cpu.Seconds(), srvCPU.Seconds(), bfRate/copyRate, idleRatios[len(idleRatios)-1])
		os.RemoveAll(lake)
	}
	c, b := median(copyRates), median(bfRates)
	fmt.Printf("median: COPY TO STDOUT %.0f rows/s, backfill %.0f rows/s (parallel %d, chunk rows %d): ratio %.2f; median of the pairs' ratios %.2f\n",
		c, b, parallel, chunkRows, b/c, median(ratios))
	fmt.Printf("CPU-bound estimate for %d idle cores (COPY's server CPU time / the backfill's CPU time over the cores), median: %.2f\n", runtime.NumCPU(), median(idleRatios))
	return nil
}

// serverCPU is the CPU time the PostgreSQL server has used: the postmaster
// with the children it has reaped (backends that ended) and its live
// children. Unlike wall time, it does not depend on what else the machine
// runs.
func serverCPU(postmaster int) time.Duration {
	total := procCPU(postmaster, true)
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == postmaster {
			continue
		}
		if ppid, ok := procParent(pid); ok && ppid == postmaster {
			total += procCPU(pid, false)
		}
	}
	return total
}

// procStat returns the fields of /proc/pid/stat after the command name.
func procStat(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

func procParent(pid int) (int, bool) {
	f := procStat(pid)
	if len(f) < 2 {
		return 0, false
	}
	ppid, err := strconv.Atoi(f[1])
	return ppid, err == nil
}

// procCPU is a process's user and system time (with its reaped children's).
func procCPU(pid int, children bool) time.Duration {
	f := procStat(pid)
	if len(f) < 15 {
		return 0
	}
	n := 2 // utime, stime: fields 14 and 15 of stat, 12 and 13 here
	if children {
		n = 4 // and cutime, cstime
	}
	var ticks int64
	for _, v := range f[11 : 11+n] {
		t, _ := strconv.ParseInt(v, 10, 64)
		ticks += t
	}
	return time.Duration(ticks) * time.Second / clockTicks
}

// clockTicks is USER_HZ, the unit of /proc times (100 on Linux).
const clockTicks = 100

// processCPU is the CPU time this process has used (user and system).
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

var (
	profile *os.File
	logger  *slog.Logger
)

func median(v []float64) float64 {
	s := slices.Sorted(slices.Values(v))
	return s[len(s)/2]
}

func dirSize(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}
