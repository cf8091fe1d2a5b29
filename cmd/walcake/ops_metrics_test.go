package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// parseExposition parses the Prometheus text format strictly enough to
// catch what a scraper would reject: every sample belongs to a family
// announced by # HELP and # TYPE lines, names and labels are well formed,
// values parse, no sample repeats. It returns the samples by
// `name{labels}`.
func parseExposition(t *testing.T, text string) map[string]float64 {
	t.Helper()
	var (
		nameRE   = `[a-zA-Z_:][a-zA-Z0-9_:]*`
		helpRE   = regexp.MustCompile(`^# HELP (` + nameRE + `) .+$`)
		typeRE   = regexp.MustCompile(`^# TYPE (` + nameRE + `) (counter|gauge|histogram|summary|untyped)$`)
		sampleRE = regexp.MustCompile(`^(` + nameRE + `)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$`)
	)
	samples := map[string]float64{}
	typed := map[string]bool{}
	helped := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "# HELP "):
			m := helpRE.FindStringSubmatch(line)
			if m == nil || helped[m[1]] {
				t.Fatalf("line %d: bad or repeated HELP: %q", n, line)
			}
			helped[m[1]] = true
		case strings.HasPrefix(line, "# TYPE "):
			m := typeRE.FindStringSubmatch(line)
			if m == nil || typed[m[1]] {
				t.Fatalf("line %d: bad or repeated TYPE: %q", n, line)
			}
			typed[m[1]] = true
		case line == "":
			t.Fatalf("line %d: empty line", n)
		default:
			m := sampleRE.FindStringSubmatch(line)
			if m == nil {
				t.Fatalf("line %d: bad sample: %q", n, line)
			}
			if !typed[m[1]] || !helped[m[1]] {
				t.Fatalf("line %d: sample of %s before its HELP and TYPE", n, m[1])
			}
			v, err := strconv.ParseFloat(m[3], 64)
			if err != nil {
				t.Fatalf("line %d: value %q: %v", n, m[3], err)
			}
			key := m[1] + m[2]
			if _, dup := samples[key]; dup {
				t.Fatalf("line %d: sample %s repeated", n, key)
			}
			samples[key] = v
		}
	}
	return samples
}

func TestMetricsExposition(t *testing.T) {
	m := newMetrics()
	m.counter("walcake_x_total", "A counter.", 3)
	m.gauge("walcake_g", "A gauge with\na newline and a \\ backslash.", 1.5, "label", `quo"te\`)
	m.gauge("walcake_g", "A gauge with\na newline and a \\ backslash.", 2, "label", "plain")
	m.inc("walcake_x_total", "A counter.")
	var b strings.Builder
	if _, err := m.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	got := parseExposition(t, b.String())
	want := map[string]float64{
		"walcake_x_total":              4,
		`walcake_g{label="quo\"te\\"}`: 1.5,
		`walcake_g{label="plain"}`:     2,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v\n%s", k, got[k], v, b.String())
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d samples, want %d:\n%s", len(got), len(want), b.String())
	}
}

// capture --follow serves metrics that count what it captures; SIGTERM
// ends it cleanly with its summary line.
func TestMetricsFollow(t *testing.T) {
	e := newEnv(t)
	e.db.Exec(t, `CREATE TABLE m (id int PRIMARY KEY)`)
	e.mustWalcake("setup", "--tables", "public.m")
	p := e.start("capture", "--follow", "--metrics-addr", "127.0.0.1:0",
		"--status-interval", "100ms", "--progress-interval", "100ms", "--max-retained-wal", "1")
	addr := logValue(p.waitLine(regexp.MustCompile(`msg="serving metrics"`), time.Minute), "addr")
	if addr == "" {
		t.Fatal("no metrics address logged")
	}
	e.db.Exec(t, `INSERT INTO m SELECT generate_series(1, 500)`)
	e.db.Exec(t, `INSERT INTO m SELECT generate_series(501, 700)`)

	var samples map[string]float64
	deadline := time.Now().Add(time.Minute) // a hang guard, not a timing assertion
	for {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
			t.Fatalf("Content-Type %q", ct)
		}
		samples = parseExposition(t, string(body))
		_, slotSeen := samples["walcake_slot_lag_bytes"]
		_, spoolSeen := samples["walcake_spool_bytes"]
		if samples["walcake_capture_changes_total"] == 700 && slotSeen && spoolSeen {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics never showed 700 changes:\n%s", body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, name := range []string{
		"walcake_capture_transactions_total", "walcake_capture_bytes_total", "walcake_errors_total",
		"walcake_slot_retained_wal_bytes", "walcake_slot_active", "walcake_server_wal_lsn",
		`walcake_slot_wal_status{wal_status="reserved"}`, `walcake_spool_segments{state="open"}`, "walcake_lag_seconds",
		`walcake_log_messages_total{level="warn"}`, // --max-retained-wal 1 warns at every check
	} {
		if _, ok := samples[name]; !ok {
			t.Errorf("no %s in the metrics", name)
		}
	}
	if samples["walcake_capture_transactions_total"] != 2 || samples["walcake_slot_active"] != 1 {
		t.Errorf("transactions %v, slot active %v", samples["walcake_capture_transactions_total"], samples["walcake_slot_active"])
	}
	p.signal(syscall.SIGTERM)
	if code := p.wait(time.Minute); code != 0 {
		t.Fatalf("capture --follow after SIGTERM: exit %d\n%s", code, p.stderrText())
	}
	if !strings.HasPrefix(p.stdout.String(), "capture: captured 2 txns (700 changes") {
		t.Errorf("summary: %q", p.stdout.String())
	}
	if !strings.Contains(p.stderrText(), `msg="capture progress"`) {
		t.Errorf("no progress line while following:\n%s", p.stderrText())
	}
	e.mustWalcake("compact")
}

// Batch commands write their figures as a node_exporter textfile, on
// success and on failure, and end with a summary line (JSON with --json).
func TestMetricsFile(t *testing.T) {
	e := newEnv(t)
	e.db.Exec(t, `CREATE TABLE m (id int PRIMARY KEY, v text)`)
	e.mustWalcake("setup", "--tables", "public.m")
	e.db.Exec(t, `INSERT INTO m SELECT g, 'v' || g FROM generate_series(1, 300) g`)
	e.db.Exec(t, `UPDATE m SET v = 'w' WHERE id <= 10`)
	e.db.Exec(t, `DELETE FROM m WHERE id > 295`)
	dir := t.TempDir()
	path := filepath.Join(dir, "walcake.prom")

	r := e.mustWalcake("run", "--json", "--metrics-file", path)
	var sum struct {
		Command  string `json:"command"`
		Captured struct {
			Changes int64 `json:"changes"`
		} `json:"captured"`
		Committed struct {
			Rows map[string]int64 `json:"rows"`
		} `json:"committed"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &sum); err != nil || sum.Command != "run" || sum.Captured.Changes != 315 {
		t.Errorf("run --json: %v: %s", err, r.stdout)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got := parseExposition(t, string(b))
	for name, want := range map[string]float64{
		`walcake_last_run_success{command="run"}`: 1,
		"walcake_capture_changes_total":           315,
		"walcake_capture_transactions_total":      3,
		`walcake_compact_rows_total{op="I"}`:      300,
		`walcake_compact_rows_total{op="U"}`:      10,
		`walcake_compact_rows_total{op="D"}`:      5,
		"walcake_compact_commits_total":           1,
		"walcake_compact_files_total":             1,
		"walcake_errors_total":                    0,
		"walcake_slot_exists":                     1,
		"walcake_lag_seconds":                     0,
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", name, v, ok, want)
		}
	}
	for _, name := range []string{`walcake_last_run_timestamp_seconds{command="run"}`, "walcake_slot_lag_bytes",
		"walcake_slot_retained_wal_bytes", `walcake_build_info{version="dev",commit="none"}`} {
		if _, ok := got[name]; !ok {
			t.Errorf("no %s", name)
		}
	}
	if m := fileMode(t, path); m != 0o644 {
		t.Errorf("metrics file mode %04o, want 0644 (node_exporter reads it)", m)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}

	// A failed run still writes its file, with success 0.
	fe := *e
	fe.vars = append([]string(nil), e.vars...)
	fe.setVar("WALCAKE_DEST=s3://no-such-bucket-walcake/x")
	r = fe.walcake("run", "--metrics-file", path)
	if r.code == 0 {
		t.Fatal("run into a missing bucket succeeded")
	}
	got = parseExposition(t, readFile(t, path))
	if got[`walcake_last_run_success{command="run"}`] != 0 || got["walcake_errors_total"] < 1 {
		t.Errorf("failed run's metrics: %v", got)
	}
}

// Long work logs its progress: capture of a backlog (changes, rate, LSN
// distance left) and compaction (rows, rate, segments left).
func TestProgressLogs(t *testing.T) {
	e := newEnv(t)
	e.db.Exec(t, `CREATE TABLE big (id int PRIMARY KEY, v text)`)
	e.mustWalcake("setup", "--tables", "public.big")
	for i := 0; i < 4; i++ {
		e.db.Exec(t, `INSERT INTO big SELECT g, repeat('v', 50) FROM generate_series($1::int, $1::int + 49999) g`, i*50000)
	}
	// Small segments make several lake commits; a tiny interval logs at
	// every hook call.
	r := e.mustWalcake("run", "--status-interval", "20ms", "--progress-interval", "1ns", "--segment-max-age", "1ms")
	var capLines, compLines []string
	for _, l := range strings.Split(r.stderr, "\n") {
		switch {
		case strings.Contains(l, `msg="capture progress"`):
			capLines = append(capLines, l)
		case strings.Contains(l, `msg="compact progress"`):
			compLines = append(compLines, l)
		}
	}
	if len(capLines) == 0 || len(compLines) == 0 {
		t.Fatalf("%d capture and %d compact progress lines:\n%s", len(capLines), len(compLines), r.stderr)
	}
	for _, l := range capLines {
		for _, k := range []string{"changes", "changes_per_s", "lsn_left_bytes", "target", "server_lsn"} {
			if logValue(l, k) == "" {
				t.Errorf("capture progress without %s: %s", k, l)
			}
		}
	}
	last := compLines[len(compLines)-1]
	for _, k := range []string{"rows", "rows_per_s", "segments_left", "lsn_left_bytes", "commits"} {
		if logValue(last, k) == "" {
			t.Errorf("compact progress without %s: %s", k, last)
		}
	}
	if logValue(last, "rows") != "200000" || logValue(last, "segments_left") != "0" || logValue(last, "lsn_left_bytes") != "0" {
		t.Errorf("last compact progress: %s", last)
	}
	t.Logf("%d capture and %d compact progress lines; last: %s | %s", len(capLines), len(compLines), capLines[len(capLines)-1], last)
}

// --log-format json writes one JSON object per line; --log-level filters.
func TestLogFormatAndLevel(t *testing.T) {
	e := newEnv(t)
	e.db.Exec(t, `CREATE TABLE t (id int PRIMARY KEY)`)
	e.mustWalcake("setup", "--tables", "public.t")
	e.db.Exec(t, `INSERT INTO t SELECT generate_series(1, 10)`)

	r := e.mustWalcake("--log-format", "json", "--log-level", "debug", "run")
	levels := map[string]int{}
	for _, l := range strings.Split(strings.TrimSpace(r.stderr), "\n") {
		var rec struct {
			Time  string `json:"time"`
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if err := json.Unmarshal([]byte(l), &rec); err != nil || rec.Msg == "" || rec.Time == "" {
			t.Errorf("not a JSON log record: %q (%v)", l, err)
		}
		levels[rec.Level]++
	}
	if levels["DEBUG"] == 0 || levels["INFO"] == 0 {
		t.Errorf("levels seen at debug: %v", levels)
	}

	e.db.Exec(t, `INSERT INTO t SELECT generate_series(11, 20)`)
	r = e.mustWalcake("--log-level", "warn", "run")
	if strings.Contains(r.stderr, "level=INFO") || strings.Contains(r.stderr, "level=DEBUG") {
		t.Errorf("--log-level warn let lower records through:\n%s", r.stderr)
	}
	for _, bad := range [][]string{{"--log-level", "loud", "run"}, {"--log-format", "xml", "run"}} {
		if r := e.walcake(bad...); r.code != 2 {
			t.Errorf("%v: exit %d, want 2", bad, r.code)
		}
	}
}

// status: a table for people, JSON for scripts, one line for health
// checks; the figures agree with the spool and the lake.
func TestStatusReport(t *testing.T) {
	e := newEnv(t)
	e.db.Exec(t, `CREATE TABLE t (id int PRIMARY KEY)`)
	e.mustWalcake("setup", "--tables", "public.t")
	e.db.Exec(t, `INSERT INTO t SELECT generate_series(1, 100)`)
	e.mustWalcake("run")
	e.db.Exec(t, `INSERT INTO t SELECT generate_series(101, 150)`)
	e.mustWalcake("capture", "--segment-max-age", "1ms") // pending in the spool

	r := e.mustWalcake("status", "--json")
	var st statusReport
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	if !st.Healthy || len(st.Problems) != 0 || !st.Slot.Exists || st.Slot.WALStatus == nil || *st.Slot.WALStatus != "reserved" ||
		st.Slot.RetainedWALBytes == nil || st.Slot.LagBytes == nil || st.Lag.Bytes == nil || *st.Lag.Bytes <= 0 {
		t.Errorf("status: %s", r.stdout)
	}
	if st.Spool.Sealed == 0 || st.Spool.OldestPendingCommit == nil || st.Spool.OldestPendingAge == nil || st.Lag.Seconds != *st.Spool.OldestPendingAge {
		t.Errorf("status spool and lag: %+v %+v", st.Spool, st.Lag)
	}
	if st.Lake.LastCommitLSN == "" || st.Lake.Rows != 100 || st.Lake.AgeSeconds == nil ||
		!regexp.MustCompile(`^_walcake/manifests/[0-9A-F]{16}\.json$`).MatchString(st.Lake.LastManifest) {
		t.Errorf("status lake: %+v", st.Lake)
	}

	r = e.mustWalcake("status")
	t.Logf("status:\n%s", r.stdout)
	for _, want := range []string{"slot", "confirmed_flush_lsn", "restart_lsn", "retained_wal", "wal_status", "safe_wal_size",
		"spool", "pending", "oldest_pending", "lake", "last commit", "lag", "health"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status table lacks %q:\n%s", want, r.stdout)
		}
	}
	// A pending change older than --max-lag is a problem (it committed
	// before the capture that read it, so it is older than 1 ms).
	r = e.walcake("status", "--check", "--max-lag", "1ms")
	if r.code != exitUnhealthy || !strings.Contains(r.stdout, "more than --max-lag 1ms") {
		t.Errorf("status --check --max-lag 1ms: exit %d: %s", r.code, r.stdout)
	}
	e.mustWalcake("compact")
	r = e.mustWalcake("status", "--check", "--max-lag", "1ms")
	if !strings.HasPrefix(r.stdout, "ok: ") {
		t.Errorf("status --check after compaction: %s", r.stdout)
	}
	// A missing slot is unhealthy.
	ne := *e
	ne.vars = append([]string(nil), e.vars...)
	ne.setVar("PG_SLOT=no_such_slot")
	if r := ne.walcake("status", "--check"); r.code != exitUnhealthy || !strings.Contains(r.stdout, "does not exist") {
		t.Errorf("status --check, missing slot: exit %d: %s", r.code, r.stdout)
	}
	// Unreachable PostgreSQL is exit 1.
	ne.setVar("PG_CONN_STRING=postgres://postgres@127.0.0.1:1/x?connect_timeout=5")
	if r := ne.walcake("status", "--check"); r.code != 1 {
		t.Errorf("status --check, no server: exit %d", r.code)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
