package main

import (
	"math/rand/v2"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

var signalTables = []lakeTable{{
	table: "public.accounts", pgTable: "accounts", key: []string{"id"},
	duckCols: "CAST(id AS VARCHAR), name, CAST(balance AS VARCHAR)", pgCols: "id::text, name, balance::text",
	orderBy: "id", pgOrderBy: "t.id",
}}

// signalBacklog writes a backlog large enough that capture and compaction
// each take a while: 300,000 inserts in 6 transactions, then updates and
// deletes.
func signalBacklog(e *env, base int) {
	for i := 0; i < 6; i++ {
		lo := base + i*50000
		e.db.Exec(e.t, `INSERT INTO accounts SELECT g, 'acct ' || g, g * 0.5 FROM generate_series($1::int, $1::int + 49999) g`, lo)
	}
	e.db.Exec(e.t, `UPDATE accounts SET balance = balance + 1 WHERE id % 7 = 0 AND id >= $1`, base)
	e.db.Exec(e.t, `DELETE FROM accounts WHERE id % 11 = 0 AND id >= $1`, base)
}

func newSignalEnv(t *testing.T) *env {
	e := newEnv(t)
	e.db.Exec(t, `CREATE TABLE accounts (id int PRIMARY KEY, name text, balance numeric(12,2))`)
	e.mustWalcake("setup", "--tables", "public.accounts")
	return e
}

// SIGTERM in the middle of a large capture stops the run within the bound
// (exit 130, a summary of what it did); a normal run afterwards leaves the
// lake exactly equal to PostgreSQL.
func TestSignalDuringCapture(t *testing.T) {
	e := newSignalEnv(t)
	signalBacklog(e, 0)
	p := e.start("run", "--status-interval", "20ms", "--progress-interval", "1ns")
	p.waitLine(regexp.MustCompile(`msg="capture progress"`), time.Minute)
	sent := time.Now()
	p.signal(syscall.SIGTERM)
	code := p.wait(time.Minute)
	t.Logf("exit %d %s after SIGTERM during capture", code, time.Since(sent).Round(time.Millisecond))
	if code != 130 {
		t.Errorf("exit %d, want 130\n%s", code, p.stderrText())
	}
	if !strings.Contains(p.stderrText(), "received terminated, stopping") {
		t.Errorf("no stopping message:\n%s", p.stderrText())
	}
	if out := p.stdout.String(); !strings.HasPrefix(out, "run: failed (interrupted): captured ") {
		t.Errorf("summary of the interrupted run: %q", out)
	}
	r := e.mustWalcake("run")
	t.Logf("next run: %s", strings.TrimSpace(r.stdout))
	e.exactLake(signalTables)
}

// SIGTERM at random moments of compaction (spool already full), then of a
// run's compaction phase: whatever step it stops at, the next run makes
// the lake exact.
func TestSignalDuringCompaction(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, seed))
	e := newSignalEnv(t)
	for round := 0; round < 3; round++ {
		signalBacklog(e, round*1000000)
		e.mustWalcake("capture", "--segment-max-age", "1ms")
		p := e.start("compact")
		// Compaction of this backlog takes about a second here: stop it at
		// a random moment of it, from start-up to the slot's advance.
		time.Sleep(time.Duration(rng.IntN(1200)) * time.Millisecond)
		sent := time.Now()
		if !p.signal(syscall.SIGTERM) {
			t.Logf("round %d: compaction ended before the signal", round)
		}
		code := p.wait(time.Minute)
		t.Logf("round %d: exit %d %s after SIGTERM; stdout %q", round, code, time.Since(sent).Round(time.Millisecond), strings.TrimSpace(p.stdout.String()))
		if code != 130 && code != 0 {
			t.Errorf("round %d: exit %d, want 130 (or 0 if it had finished)\n%s", round, code, p.stderrText())
		}
	}
	r := e.mustWalcake("run")
	t.Logf("final run: %s", strings.TrimSpace(r.stdout))
	e.exactLake(signalTables)
}

// A second signal exits at once, and so does the shutdown bound when a step
// does not stop: the compaction hangs at a failpoint, deaf to cancellation,
// whatever the machine's speed. Neither loses anything.
func TestSignalTwiceAndShutdownBound(t *testing.T) {
	e := newSignalEnv(t)
	stopping := regexp.MustCompile(`received (terminated|interrupt), stopping`)
	hanging := regexp.MustCompile(`failpoint compact-after-upload reached, hanging`)

	for i, tc := range []struct {
		name string
		args []string
		sigs int
		want string
	}{
		{"second signal", []string{"compact"}, 2, "received terminated again, exiting now"},
		{"shutdown bound", []string{"--shutdown-timeout", "20ms", "compact"}, 1, "still stopping after 20ms, exiting now"},
	} {
		e.db.Exec(t, `INSERT INTO accounts SELECT g, 'acct ' || g, g * 0.5 FROM generate_series($1::int, $1::int + 9999) g`, 2000000+i*10000)
		e.mustWalcake("capture")
		e.vars = append(e.vars, "WALCAKE_FAILPOINT=compact-after-upload:hang")
		p := e.start(tc.args...)
		e.vars = e.vars[:len(e.vars)-1]
		p.waitLine(hanging, time.Minute)
		if !p.signal(syscall.SIGTERM) {
			t.Fatalf("%s: compaction ended before the signal", tc.name)
		}
		p.waitLine(stopping, time.Minute)
		sent := time.Now()
		if tc.sigs == 2 && !p.signal(syscall.SIGTERM) {
			t.Fatalf("%s: compaction stopped before the second signal", tc.name)
		}
		code := p.wait(time.Minute)
		t.Logf("%s: exit %d %s after the last signal", tc.name, code, time.Since(sent).Round(time.Millisecond))
		if code != 130 || !strings.Contains(p.stderrText(), tc.want) {
			t.Errorf("%s: exit %d, want 130 and %q:\n%s", tc.name, code, tc.want, p.stderrText())
		}
	}

	signalBacklog(e, 1000000)
	r := e.mustWalcake("run")
	t.Logf("next run: %s", strings.TrimSpace(r.stdout))
	e.exactLake(signalTables)
}
