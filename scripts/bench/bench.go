package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/wal-cake/wal-cake/scripts/testenv"
)

type bench struct {
	o         options
	work      string // temporary directory for everything
	bin       string // the walcake binary
	srv       *testenv.PostgresServer
	conn      *pgx.Conn
	pgVersion string
	s3        *testenv.S3Server
}

func newBench(ctx context.Context, o options) (*bench, error) {
	work, err := os.MkdirTemp("", "walcake-bench-*")
	if err != nil {
		return nil, err
	}
	b := &bench{o: o, work: work}
	ok := false
	defer func() {
		if !ok {
			b.close()
		}
	}()

	if o.bin != "" {
		if b.bin, err = filepath.Abs(o.bin); err != nil {
			return nil, err
		}
	} else {
		root, err := repoRoot()
		if err != nil {
			return nil, err
		}
		b.bin = filepath.Join(work, "walcake")
		build := exec.CommandContext(ctx, "go", "build", "-o", b.bin, "./cmd/walcake")
		build.Dir, build.Stdout, build.Stderr = root, os.Stderr, os.Stderr
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if err := build.Run(); err != nil {
			return nil, fmt.Errorf("build walcake: %w", err)
		}
	}

	b.srv, err = testenv.StartPostgres(ctx, testenv.PostgresOptions{ExtraConfig: map[string]string{
		"shared_buffers":     "256MB",
		"max_wal_size":       "8GB",
		"checkpoint_timeout": "30min",
		"autovacuum":         "off",
	}})
	if err != nil {
		return nil, err
	}
	b.conn, err = pgx.Connect(ctx, b.srv.URL("postgres"))
	if err != nil {
		return nil, err
	}
	if err := b.conn.QueryRow(ctx, "SHOW server_version").Scan(&b.pgVersion); err != nil {
		return nil, err
	}
	b.pgVersion, _, _ = strings.Cut(b.pgVersion, " ")
	ok = true
	return b, nil
}

func (b *bench) close() {
	if b.conn != nil {
		b.conn.Close(context.Background())
	}
	if b.srv != nil {
		b.srv.Stop()
	}
	if b.s3 != nil {
		b.s3.Stop()
	}
	if !b.o.keep {
		os.RemoveAll(b.work)
	}
}

func repoRoot() (string, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		return "", fmt.Errorf("find the module root: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

func (b *bench) exec(ctx context.Context, sql string, args ...any) error {
	if _, err := b.conn.Exec(ctx, sql, args...); err != nil {
		return fmt.Errorf("%s: %w", firstLine(sql), err)
	}
	return nil
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i] + " ..."
	}
	return s
}

func (b *bench) insertLSN(ctx context.Context) (string, error) {
	var lsn string
	err := b.conn.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&lsn)
	return lsn, err
}

func (b *bench) createSlot(ctx context.Context, name string) error {
	return b.exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", name)
}

func (b *bench) dropSlots(ctx context.Context, prefix string) error {
	return b.exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE $1", prefix+"%")
}

// measured is what one process cost.
type measured struct {
	wall   time.Duration
	cpu    time.Duration // user + system
	maxRSS int64         // bytes
	stdout string
}

// runCmd runs a command to its end and measures it.
func runCmd(cmd *exec.Cmd) (measured, error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	m, err := measure(cmd)
	m.stdout = stdout.String()
	if err != nil {
		return m, fmt.Errorf("%s: %w\n%s", strings.Join(cmd.Args, " "), err, tail(stderr.String(), 2000))
	}
	return m, nil
}

// measure runs cmd and takes its wall time, CPU time and peak RSS. The peak
// is sampled from /proc/<pid>/status (VmHWM) while it runs: the kernel's
// ru_maxrss of a child also counts the memory of the process that started
// it (Go starts children with vfork), here the benchmark with DuckDB.
func measure(cmd *exec.Cmd) (measured, error) {
	started := time.Now()
	if err := cmd.Start(); err != nil {
		return measured{}, err
	}
	name := filepath.Base(cmd.Path)
	if len(name) > 15 {
		name = name[:15]
	}
	done := make(chan struct{})
	peak := make(chan int64, 1)
	go func() {
		var hwm int64
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			if v, ok := vmHWM(cmd.Process.Pid, name); ok {
				hwm = max(hwm, v)
			}
			select {
			case <-done:
				peak <- hwm
				return
			case <-t.C:
			}
		}
	}()
	err := cmd.Wait()
	close(done)
	m := measured{wall: time.Since(started), maxRSS: <-peak}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		m.cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return m, err
}

// vmHWM reads the peak resident set size of process pid once it runs the
// program called name.
func vmHWM(pid int, name string) (int64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	var hwm int64
	sameName := false
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		v = strings.TrimSpace(v)
		switch k {
		case "Name":
			sameName = v == name
		case "VmHWM":
			fmt.Sscanf(v, "%d kB", &hwm)
		}
	}
	return hwm << 10, sameName && hwm > 0
}

// runCmdVerbose is runCmd with the command's stderr passed through.
func runCmdVerbose(cmd *exec.Cmd) (measured, error) {
	var stdout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, os.Stderr
	m, err := measure(cmd)
	m.stdout = stdout.String()
	return m, err
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// walcake runs the binary with a configuration.
func (b *bench) walcake(ctx context.Context, env walcakeEnv, args ...string) (measured, error) {
	cmd := exec.CommandContext(ctx, b.bin, args...)
	cmd.Env = append(os.Environ(),
		"PG_CONN_STRING="+b.srv.URL("postgres"),
		"PG_SLOT="+env.slot,
		"PG_PUBLICATION="+env.publication,
		"SPOOL_DIR="+env.spool,
		"WALCAKE_DEST="+env.dest,
		fmt.Sprintf("GOMAXPROCS=%d", b.o.threads),
	)
	cmd.Env = append(cmd.Env, env.extra...)
	if b.o.verbose {
		cmd.Env = append(cmd.Env, "WALCAKE_LOG_LEVEL=debug")
		return runCmdVerbose(cmd)
	}
	cmd.Env = append(cmd.Env, "WALCAKE_LOG_LEVEL=warn")
	return runCmd(cmd)
}

type walcakeEnv struct {
	slot, publication, spool, dest string
	extra                          []string
}

// summary is the part of walcake's --json summary the bench checks.
type summary struct {
	Captured struct {
		Txns    int64 `json:"txns"`
		Changes int64 `json:"changes"`
		Bytes   int64 `json:"bytes"`
	} `json:"captured"`
	Committed struct {
		Rows  map[string]int64 `json:"rows"`
		Files int              `json:"files"`
		Bytes int64            `json:"bytes"`
	} `json:"committed"`
}

func parseSummary(out string) (summary, error) {
	var s summary
	line := strings.TrimSpace(out)
	if i := strings.LastIndexByte(line, '\n'); i >= 0 {
		line = line[i+1:]
	}
	if err := json.Unmarshal([]byte(line), &s); err != nil {
		return s, fmt.Errorf("parse walcake summary %q: %w", line, err)
	}
	return s, nil
}

func (s summary) rows() int64 {
	var n int64
	for _, v := range s.Committed.Rows {
		n += v
	}
	return n
}

// dirBytes is the size of the regular files under dir.
func dirBytes(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// copyDir copies a spool (flat, regular files only).
func copyDir(from, to string) error {
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

// stats summarises repeated measurements of one side.
type stats struct {
	wall   []time.Duration
	cpu    []time.Duration
	maxRSS []int64
}

func (s *stats) add(m measured) {
	s.wall = append(s.wall, m.wall)
	s.cpu = append(s.cpu, m.cpu)
	s.maxRSS = append(s.maxRSS, m.maxRSS)
}

func median[T int64 | time.Duration](v []T) T {
	c := append([]T(nil), v...)
	sort.Slice(c, func(i, j int) bool { return c[i] < c[j] })
	if len(c) == 0 {
		return 0
	}
	if len(c)%2 == 1 {
		return c[len(c)/2]
	}
	return (c[len(c)/2-1] + c[len(c)/2]) / 2
}

func minMax(v []time.Duration) (time.Duration, time.Duration) {
	lo, hi := v[0], v[0]
	for _, d := range v {
		lo, hi = min(lo, d), max(hi, d)
	}
	return lo, hi
}

// timing renders "3.12 s (3.05-3.30)".
func (s *stats) timing() string {
	lo, hi := minMax(s.wall)
	return fmt.Sprintf("%.2f s (%.2f-%.2f)", median(s.wall).Seconds(), lo.Seconds(), hi.Seconds())
}

func rate(rows int, d time.Duration) string {
	return fmt.Sprintf("%.0fk rows/s", float64(rows)/d.Seconds()/1000)
}

func mib(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }

func human(n int) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return fmt.Sprintf("%dM", n/1_000_000)
	case n >= 1000 && n%1000 == 0:
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}

// watchWalsender samples, while a consumer streams from slot, the CPU time
// of the walsender serving it; stop returns the last sample.
func (b *bench) watchWalsender(ctx context.Context, slot string) (stop func() time.Duration) {
	done := make(chan struct{})
	result := make(chan time.Duration, 1)
	go func() {
		var last time.Duration
		defer func() { result <- last }()
		conn, err := pgx.Connect(ctx, b.srv.URL("postgres"))
		if err != nil {
			return
		}
		defer conn.Close(context.Background())
		pid := 0
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			if pid == 0 {
				var p *int32
				if conn.QueryRow(ctx, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&p) == nil && p != nil {
					pid = int(*p)
				}
			}
			if pid != 0 {
				if cpu, ok := procCPU(pid); ok {
					last = cpu
				}
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() time.Duration {
		close(done)
		return <-result
	}
}

// procCPU is the user and system CPU time of a process, from /proc.
func procCPU(pid int) (time.Duration, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	// The fields after the command name, which may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, false
	}
	var utime, stime int64
	fmt.Sscan(f[11], &utime)
	fmt.Sscan(f[12], &stime)
	const tick = 10 * time.Millisecond // USER_HZ is 100 on Linux
	return time.Duration(utime+stime) * tick, true
}
