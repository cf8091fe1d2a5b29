package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/wal-cake/wal-cake/scripts/testenv/duck"
)

// maxRSS runs walcake and returns its peak resident set size in MiB.
func (e *exactEnv) maxRSS(args ...string) float64 {
	e.t.Helper()
	cmd := exec.Command(walcakeBin, args...)
	cmd.Env = append(minimalEnv(), e.vars...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		e.t.Fatalf("walcake %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	e.t.Logf("walcake %s: %s", strings.Join(args, " "), strings.TrimSpace(stdout.String()))
	ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		e.t.Fatal("no rusage")
	}
	return float64(ru.Maxrss) / 1024 // kB on Linux
}

// TestLargeValues passes a 64 MiB text value and a 64 MiB bytea value
// (128 MiB of hex in pgoutput) through capture and compaction, checks them
// byte for byte in DuckDB, and bounds the memory each process holds.
func TestLargeValues(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 200 MiB through PostgreSQL, the spool and the lake")
	}
	e := newExactEnv(t, "large")
	e.exec("CREATE TABLE big (id int PRIMARY KEY, t text, b bytea, note text)")
	e.mustWalcake("setup")
	const mib = 1 << 20
	e.exec(
		// 64 MiB of hex digits (poorly compressible), and 64 MiB of random bytes.
		"INSERT INTO big SELECT 1, string_agg(md5(g::text), ''), NULL, 'text' FROM generate_series(1, 2 * 1024 * 1024) g",
		"INSERT INTO big SELECT 2, NULL, decode(string_agg(md5(g::text), ''), 'hex'), 'bytea' FROM generate_series(1, 4 * 1024 * 1024) g",
		// An update that leaves the 64 MiB value unchanged: larger than the
		// TOAST state store keeps (16 MiB), so it is named in _unchanged.
		"UPDATE big SET note = 'noted' WHERE id = 1",
	)
	var size [2]int64
	e.db.QueryRow(t, "SELECT octet_length(t) FROM big WHERE id = 1").Scan(&size[0])
	e.db.QueryRow(t, "SELECT octet_length(b) FROM big WHERE id = 2").Scan(&size[1])
	if size[0] != 64*mib || size[1] != 64*mib {
		t.Fatalf("values of %d and %d bytes, want 64 MiB each", size[0], size[1])
	}

	captureMiB := e.maxRSS("capture")
	compactMiB := e.maxRSS("compact")
	// Figures, not assertions on time: the peak memory per process. The
	// bytea's message is 128 MiB of hex; each process may hold a few copies
	// of it, and the Go heap may grow to twice what is live before a
	// collection: 8 copies bound both.
	t.Logf("peak RSS: capture %.0f MiB, compact %.0f MiB (values of 64 MiB; the bytea's message is 128 MiB)", captureMiB, compactMiB)
	const bound = 8 * 128
	if captureMiB > bound || compactMiB > bound {
		t.Errorf("peak RSS capture %.0f MiB, compact %.0f MiB: more than %d MiB, 8 copies of the largest message", captureMiB, compactMiB, bound)
	}
	// Statistics never hold whole values: the file is about the size of
	// the values, compressed (parquet-go copied each value into page and
	// column chunk statistics up to eight times: an 865 MiB file).
	files, _ := filepath.Glob(filepath.Join(e.download(), "public.big", "*", "*.parquet"))
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil && fi.Size() > 160*mib {
			t.Errorf("%s: %d MiB for 128 MiB of values", filepath.Base(f), fi.Size()/mib)
		}
	}

	lake, ddb := e.lakeOf()
	got := asStrings(duck.Rows(t, ddb, "SELECT _op, id, md5(t), strlen(t), md5(b), octet_length(b), note, array_to_string(_unchanged, ',') FROM "+
		parquetOf(lake, "public.big")+" ORDER BY _commit_lsn, _seq"))
	want := asStrings(e.pgQuery(`
		SELECT 'I', 1, md5(t), octet_length(t)::text, NULL, NULL, 'text', '' FROM big WHERE id = 1
		UNION ALL SELECT 'I', 2, NULL, NULL, md5(b), octet_length(b)::text, 'bytea', '' FROM big WHERE id = 2
		UNION ALL SELECT 'U', 1, NULL, NULL, NULL, NULL, 'noted', 't'`))
	sameRows(t, "large values", got, want)
}
