// Command bench measures wal-cake against the limits it should reach on the
// machine it runs on, each next to a reference measured in the same run:
//
//  1. capture into the spool vs pg_recvlogical writing the same stream to a
//     file (same plugin options), on 1M rows in 4 transactions and 1M rows in
//     one transaction;
//  2. compaction (spool to ZSTD Parquet in a local-directory lake) vs DuckDB
//     converting the same rows from CSV to ZSTD Parquet with as many threads,
//     on a pgbench_accounts-like table and a wide table of mixed types;
//  3. `walcake run` end to end on a 1M-change mixed backlog into an
//     S3-protocol server;
//  4. peak RSS of capture and compaction while a 1M-row and a 5M-row
//     transaction pass;
//  5. spool bytes per change, and what remains after compaction.
//
// It starts a throwaway PostgreSQL and versitygw (scripts/testenv), builds
// the walcake binary, and removes everything when it ends. Run it with
// scripts/bench.sh; docs/performance.md shows its output.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

type options struct {
	rows     int    // rows of each capture and compaction backlog
	big      int    // rows of the largest transaction in the memory section
	pairs    int    // alternating measurements per comparison
	threads  int    // DuckDB threads (and GOMAXPROCS of walcake)
	sections string // comma-separated section numbers, or "all"
	keep     bool   // keep the work directory
	bin      string // a walcake binary to measure instead of building one
	verbose  bool   // show walcake's logs
	hold     bool   // keep the servers running until interrupted
}

func main() {
	var o options
	flag.IntVar(&o.rows, "rows", 1_000_000, "rows of each capture and compaction backlog")
	flag.IntVar(&o.big, "big", 5_000_000, "rows of the largest transaction in the memory section")
	flag.IntVar(&o.pairs, "pairs", 3, "alternating measurements per comparison (the median is reported)")
	flag.IntVar(&o.threads, "threads", runtime.NumCPU(), "DuckDB threads; walcake runs with GOMAXPROCS set to the same")
	flag.StringVar(&o.sections, "sections", "all", "sections to run: all, or a list such as 1,2")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (spools, lakes, CSV files)")
	flag.BoolVar(&o.verbose, "v", false, "show walcake's debug logs on stderr")
	flag.BoolVar(&o.hold, "hold", false, "after the sections, print the PostgreSQL URL and keep the servers until interrupted (for profiling by hand)")
	flag.StringVar(&o.bin, "walcake", "", "measure this walcake binary instead of building the checkout's")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func (o options) want(section int) bool {
	if o.sections == "all" {
		return true
	}
	for _, s := range strings.Split(o.sections, ",") {
		if strings.TrimSpace(s) == fmt.Sprint(section) {
			return true
		}
	}
	return false
}

func run(ctx context.Context, o options) error {
	b, err := newBench(ctx, o)
	if err != nil {
		return err
	}
	defer b.close()
	fmt.Printf("wal-cake benchmark, %s\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Printf("machine: %d CPUs, %s; PostgreSQL %s; %s; walcake GOMAXPROCS=%d, DuckDB threads=%d\n",
		runtime.NumCPU(), cpuModel(), b.pgVersion, runtime.Version(), o.threads, o.threads)
	fmt.Printf("each comparison: %d alternating runs of each side, median (min-max)\n", o.pairs)

	steps := []struct {
		n  int
		fn func(context.Context) error
	}{
		{1, b.captureSection},
		{2, b.compactSection},
		{3, b.runSection},
		{4, b.memorySection},
	}
	for _, s := range steps {
		if !o.want(s.n) {
			continue
		}
		if err := s.fn(ctx); err != nil {
			return fmt.Errorf("section %d: %w", s.n, err)
		}
	}
	if o.hold {
		fmt.Printf("\nholding: PostgreSQL at %s, walcake at %s; interrupt to stop\n", b.srv.URL("postgres"), b.bin)
		<-ctx.Done()
	}
	if o.keep {
		fmt.Printf("\nwork directory kept: %s\n", filepath.Clean(b.work))
	}
	return nil
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}
