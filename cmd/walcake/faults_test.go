package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/wal-cake/wal-cake/compact"
	"github.com/wal-cake/wal-cake/scripts/testenv"
	"github.com/wal-cake/wal-cake/spool"
)

// Fault tests against the real binary: S3 errors through testenv's fault
// proxy, PostgreSQL faults (walsender terminated, server restarted,
// connection cut). Each ends with the lake checked change by change
// (checkExactlyOnce).

// overrideVar sets one of the env's variables, replacing an earlier value.
func (e *env) overrideVar(key, value string) {
	for i, kv := range e.vars {
		if strings.HasPrefix(kv, key+"=") {
			e.vars[i] = key + "=" + value
			return
		}
	}
	e.vars = append(e.vars, key+"="+value)
}

// withProxy points the env's S3 endpoint at a new fault proxy.
func (e *env) withProxy() *testenv.FaultProxy {
	p := testenv.NewFaultProxy(e.t, e.s3)
	e.overrideVar("AWS_ENDPOINT", p.URL)
	return p
}

// finalLine is the last non-empty line of s.
func finalLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// checkCleanFailure checks that a failed run exited non-zero with a one-line
// reason (main's "walcake: ..." line) and did not panic.
func checkCleanFailure(t *testing.T, what string, r result, wantInReason ...string) {
	t.Helper()
	if r.code == 0 {
		t.Fatalf("%s: exit 0, want a failure\nstdout:\n%s\nstderr:\n%s", what, r.stdout, r.stderr)
	}
	if strings.Contains(r.stderr, "panic:") || strings.Contains(r.stderr, "goroutine ") {
		t.Fatalf("%s: panicked:\n%s", what, r.stderr)
	}
	reason := finalLine(r.stderr)
	if !strings.HasPrefix(reason, "walcake: ") || len(reason) > 600 {
		t.Errorf("%s: the last line of stderr is not a one-line reason: %q", what, reason)
	}
	for _, w := range wantInReason {
		if !strings.Contains(reason, w) {
			t.Errorf("%s: reason %q does not mention %q", what, reason, w)
		}
	}
}

// sealedSegments counts the spool's sealed segments.
func (e *env) sealedSegments() int {
	e.t.Helper()
	sp, err := spool.Open(e.spool, spool.Options{})
	if err != nil {
		e.t.Fatal(err)
	}
	segs, err := sp.Sealed()
	if err != nil {
		e.t.Fatal(err)
	}
	return len(segs)
}

func addOps(ops map[string]map[string]int64, table, op string, n int64) map[string]map[string]int64 {
	if ops[table] == nil {
		ops[table] = map[string]int64{}
	}
	ops[table][op] += n
	return ops
}

// TestS3TransientFaults: a run through an S3 endpoint that fails some
// requests (5xx, SlowDown, a hang past the I/O timeout, a stalled upload, a
// lost response, refused connections) retries them and commits every change
// once.
func TestS3TransientFaults(t *testing.T) {
	put := []string{"PUT"}
	tests := []struct {
		name string
		rule testenv.FaultRule
		vars []string
	}{
		// The start-up check (HEAD bucket) makes two attempts only; one 500
		// there is retried.
		{"500 on the start-up check", testenv.FaultRule{Faults: []testenv.Fault{testenv.InternalError}, Methods: []string{"HEAD"}, Count: 1}, nil},
		// Then reads, lists and uploads: three 500s in a row on whatever
		// comes after the check.
		{"500 InternalError", testenv.FaultRule{Faults: []testenv.Fault{testenv.InternalError}, Skip: 1, Count: 3}, nil},
		{"503 SlowDown", testenv.FaultRule{Faults: []testenv.Fault{testenv.SlowDown}, Methods: put, Count: 2}, nil},
		{"hang", testenv.FaultRule{Faults: []testenv.Fault{testenv.Hang}, Methods: put, Skip: 1, Count: 1}, []string{"WALCAKE_S3_IO_TIMEOUT=1s"}},
		{"stalled upload", testenv.FaultRule{Faults: []testenv.Fault{testenv.Stall}, Methods: put, Skip: 2, Count: 1}, []string{"WALCAKE_S3_IO_TIMEOUT=1s"}},
		// The manifest or a data file reaches the server but the answer is
		// lost: the retry writes the same key again.
		{"lost response", testenv.FaultRule{Faults: []testenv.Fault{testenv.LostResponse}, Methods: put, Count: 4}, nil},
		// Connections refused for 300 ms, from the first upload on; a
		// larger retry budget outlasts it whatever the jitter draws.
		{"refused connections", testenv.FaultRule{Faults: []testenv.Fault{testenv.Refuse}, Methods: put, Count: 1, RefuseFor: 300 * time.Millisecond},
			[]string{"AWS_MAX_ATTEMPTS=30"}},
		{"random mix", testenv.FaultRule{Faults: []testenv.Fault{testenv.InternalError, testenv.LostResponse, testenv.SlowDown}, Fraction: 0.3, Count: 6, Seed: 7}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newProtoEnv(t)
			proxy := e.withProxy()
			for _, kv := range tt.vars {
				k, v, _ := strings.Cut(kv, "=")
				e.overrideVar(k, v)
			}
			protoBatch(e, 1)
			proxy.Set(tt.rule)
			r := e.mustWalcake("run")
			st := proxy.Stats()
			proxy.Clear()
			t.Logf("%d S3 requests, %d failed (%v): %s", st.Requests, st.Total(), st.Injected, strings.TrimSpace(r.stdout))
			if st.Total() == 0 {
				t.Fatal("no fault was injected; the test is not testing")
			}
			protoBatch(e, 2)
			e.mustWalcake("run")
			checkExactlyOnce(e, protoOps(2))
			if confirmed, end := e.slotConfirmed(), e.lakeEnd(); confirmed < end {
				t.Errorf("slot at %s, before the lake's end %s", confirmed, end)
			}
		})
	}
}

// TestS3LastingFaults: a fault that outlasts the retries fails the run with
// a one-line reason after a bounded number of requests; the spool keeps what
// it captured, the slot does not move, and the next run after the fault
// clears leaves the lake exact.
func TestS3LastingFaults(t *testing.T) {
	put := []string{"PUT"}
	tests := []struct {
		name string
		rule testenv.FaultRule
		vars []string
		// maxRequests bounds the requests of the failed run: retries are
		// bounded, not a storm.
		maxRequests int
	}{
		// The intent and the first data file go through, then every upload
		// fails: the next run must undo the half-made commit.
		{"500 after the first uploads", testenv.FaultRule{Faults: []testenv.Fault{testenv.InternalError}, Methods: put, Skip: 2}, nil, 40},
		{"SlowDown on every upload", testenv.FaultRule{Faults: []testenv.Fault{testenv.SlowDown}, Methods: put}, []string{"AWS_MAX_ATTEMPTS=3"}, 20},
		{"server hangs", testenv.FaultRule{Faults: []testenv.Fault{testenv.Hang}, Methods: put, Skip: 1},
			[]string{"AWS_MAX_ATTEMPTS=2", "WALCAKE_S3_IO_TIMEOUT=500ms"}, 20},
		{"lost responses", testenv.FaultRule{Faults: []testenv.Fault{testenv.LostResponse}, Methods: put, Skip: 1}, nil, 40},
		// Every connection refused (the proxy's port closed): the start-up
		// check fails.
		{"connections refused", testenv.FaultRule{}, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newProtoEnv(t)
			proxy := e.withProxy()
			for _, kv := range tt.vars {
				k, v, _ := strings.Cut(kv, "=")
				e.overrideVar(k, v)
			}
			protoBatch(e, 1)
			e.mustWalcake("capture")
			before := e.slotConfirmed()
			segs := e.sealedSegments()
			if segs == 0 {
				t.Fatal("capture sealed no segment")
			}

			if len(tt.rule.Faults) == 0 {
				proxy.RefuseNow()
			} else {
				proxy.Set(tt.rule)
			}
			r := e.walcake("run")
			st := proxy.Stats()
			proxy.Clear()
			t.Logf("failed run: %d S3 requests, %d failed (%v); reason: %s", st.Requests, st.Total(), st.Injected, finalLine(r.stderr))
			checkCleanFailure(t, "run against a failing S3", r)
			if st.Requests > tt.maxRequests {
				t.Errorf("%d S3 requests before giving up, want at most %d", st.Requests, tt.maxRequests)
			}
			if got := e.sealedSegments(); got < segs {
				t.Errorf("the failed run dropped spool segments: %d left of %d", got, segs)
			}
			if after := e.slotConfirmed(); after != before {
				t.Errorf("the failed run moved the slot from %s to %s", before, after)
			}

			protoBatch(e, 2)
			e.mustWalcake("run")
			checkExactlyOnce(e, protoOps(2))
		})
	}
}

// TestS3BadConfiguration: a wrong credential or a missing bucket is a
// clear one-line error after a handful of requests, not a retry storm, and
// touches neither the spool nor the slot.
func TestS3BadConfiguration(t *testing.T) {
	tests := []struct {
		name   string
		vars   func(e *env) []string
		reason string
	}{
		{"wrong secret", func(e *env) []string { return []string{"AWS_SECRET_ACCESS_KEY=" + strings.Repeat("x", 40)} }, "credentials rejected"},
		{"unknown access key", func(e *env) []string { return []string{"AWS_ACCESS_KEY_ID=AKNOSUCHKEY0000000000"} }, "credentials rejected"},
		{"missing bucket", func(e *env) []string { return []string{"WALCAKE_DEST=s3://no-such-bucket-walcake/" + e.s3.Prefix} }, "does not exist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newProtoEnv(t)
			proxy := e.withProxy()
			protoBatch(e, 1)
			before := e.slotConfirmed()
			for _, kv := range tt.vars(e) {
				k, v, _ := strings.Cut(kv, "=")
				e.overrideVar(k, v)
			}
			for _, cmd := range []string{"run", "compact"} {
				proxy.ResetStats()
				r := e.walcake(cmd)
				st := proxy.Stats()
				t.Logf("%s: %d S3 requests; %s", cmd, st.Requests, finalLine(r.stderr))
				checkCleanFailure(t, cmd+" with "+tt.name, r, tt.reason)
				if st.Requests > 4 {
					t.Errorf("%s: %d S3 requests for a configuration error, want at most 4", cmd, st.Requests)
				}
			}
			if after := e.slotConfirmed(); after != before {
				t.Errorf("slot moved from %s to %s", before, after)
			}
		})
	}
}

// bgWalcake is a walcake process running in the background.
type bgWalcake struct {
	args   []string
	cmd    *exec.Cmd
	stdout lockedBuffer
	stderr lockedBuffer
	done   chan struct{}
	res    result
}

// spawn runs walcake in the background; the test's cleanup kills it if it
// still runs.
func (e *env) spawn(args ...string) *bgWalcake {
	e.t.Helper()
	p := &bgWalcake{args: args, done: make(chan struct{})}
	p.cmd = exec.Command(walcakeBin, args...)
	p.cmd.Env = append(minimalEnv(), e.vars...)
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	// Dies with the test binary, even when that is killed.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		e.t.Fatalf("start walcake %s: %v", strings.Join(args, " "), err)
	}
	go func() {
		err := p.cmd.Wait()
		p.res = result{stdout: p.stdout.String(), stderr: p.stderr.String()}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			p.res.code = ee.ExitCode()
		} else if err != nil {
			p.res.code = -2
			p.res.stderr += "\n(wait: " + err.Error() + ")"
		}
		close(p.done)
	}()
	e.t.Cleanup(func() { p.kill() })
	return p
}

// running reports whether the process has not exited yet.
func (p *bgWalcake) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// wait waits for the process to exit.
func (p *bgWalcake) wait() result {
	<-p.done
	return p.res
}

// waitFor waits at most d for the process to exit.
func (p *bgWalcake) waitFor(d time.Duration) (result, bool) {
	select {
	case <-p.done:
		return p.res, true
	case <-time.After(d):
		return result{}, false
	}
}

// kill sends SIGKILL (if the process still runs) and waits for it.
func (p *bgWalcake) kill() result {
	if p.running() {
		_ = p.cmd.Process.Kill()
	}
	return p.wait()
}

// interrupt sends SIGINT and waits for the process to stop.
func (p *bgWalcake) interrupt() result {
	if p.running() {
		_ = p.cmd.Process.Signal(os.Interrupt)
	}
	if r, ok := p.waitFor(time.Minute); ok {
		return r
	}
	return p.kill()
}

// lockedBuffer is a bytes.Buffer safe to read while a process writes to it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *lockedBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *lockedBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// walsenderPID is the PID of the walsender streaming the test slot, 0 when
// none does.
func (e *env) walsenderPID() int32 {
	e.t.Helper()
	var pid *int32
	e.db.QueryRow(e.t, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'walcake_test'").Scan(&pid)
	if pid == nil {
		return 0
	}
	return *pid
}

// waitWalsender waits until a walsender other than old streams the slot and
// returns its PID. It polls often: a batch run streams for a second or two.
func (e *env) waitWalsender(old int32) int32 {
	e.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		if pid := e.walsenderPID(); pid != 0 && pid != old {
			return pid
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("no walsender (other than %d) streams the slot after a minute", old)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// insertLSN is the server's WAL insert position.
func (e *env) insertLSN() pglogrepl.LSN {
	e.t.Helper()
	var s string
	e.db.QueryRow(e.t, "SELECT pg_current_wal_insert_lsn()::text").Scan(&s)
	lsn, err := pglogrepl.ParseLSN(s)
	if err != nil {
		e.t.Fatal(err)
	}
	return lsn
}

// lakeLastCommit is the last commit LSN of the lake's newest stream
// manifest, 0 when there is none.
func (e *env) lakeLastCommit() pglogrepl.LSN {
	e.t.Helper()
	m, err := compact.ReadHeadManifest(context.Background(), e.store())
	if err != nil {
		e.t.Fatal(err)
	}
	if m == nil {
		return 0
	}
	lsn, err := pglogrepl.ParseLSN(m.LastCommitLSN)
	if err != nil {
		e.t.Fatal(err)
	}
	return lsn
}

// pgFault is a way to disturb walcake's PostgreSQL connections.
type pgFault struct {
	name string
	// setup prepares the env (say, routes its connections through a
	// proxy) and returns the function that injects the fault once.
	setup func(t *testing.T, e *env) func()
}

var pgFaults = []pgFault{
	{
		name: "walsender terminated",
		setup: func(t *testing.T, e *env) func() {
			var last int32
			return func() {
				last = e.waitWalsender(last)
				e.db.Exec(t, "SELECT pg_terminate_backend($1)", last)
			}
		},
	},
	{
		// A crash and crash recovery: pg_ctl restart -m immediate.
		name: "server crashed and restarted",
		setup: func(t *testing.T, e *env) func() {
			var last int32
			return func() {
				last = e.waitWalsender(last)
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				if err := e.db.Server.RestartImmediate(ctx); err != nil {
					t.Fatal(err)
				}
			}
		},
	},
	{
		// A clean restart: pg_ctl restart -m fast. PostgreSQL lets a
		// walsender exit at shutdown only once its client confirms all WAL
		// sent; capture --follow holding changes the lake lacks cannot, and
		// must disconnect for the shutdown to finish.
		name: "server restarted",
		setup: func(t *testing.T, e *env) func() {
			var last int32
			return func() {
				last = e.waitWalsender(last)
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				if err := e.db.Server.Restart(ctx); err != nil {
					t.Fatal(err)
				}
			}
		},
	},
	{
		name: "connection cut",
		setup: func(t *testing.T, e *env) func() {
			p := startTCPProxy(t, fmt.Sprintf("127.0.0.1:%d", e.db.Server.Port))
			e.overrideVar("PG_CONN_STRING", strings.Replace(e.db.URL, fmt.Sprintf("127.0.0.1:%d", e.db.Server.Port), p.addr(), 1))
			var last int32
			return func() {
				last = e.waitWalsender(last)
				if n := p.cut(); n == 0 {
					t.Error("no connection to cut")
				}
			}
		},
	},
}

// TestPostgresFaultsFollow: capture --follow survives a terminated
// walsender, a restarted server and a cut connection, each three times, and
// goes on streaming; a compaction beside it commits everything written
// meanwhile, once. Not parallel: a restart disturbs every test on the
// shared server, and slots are named walcake_test by every test of the
// package (slot names are cluster-wide): none of these tests is parallel.
func TestPostgresFaultsFollow(t *testing.T) {
	for _, f := range pgFaults {
		t.Run(f.name, func(t *testing.T) {
			e := newProtoEnv(t)
			inject := f.setup(t, e)
			capture := e.spawn("capture", "--follow", "--status-interval", "200ms", "--segment-max-age", "300ms")
			const rounds = 3
			for i := 1; i <= rounds; i++ {
				protoBatch(e, i)
				inject()
			}
			protoBatch(e, rounds+1)
			// A sentinel transaction: once the lake holds a commit after
			// `before`, it holds everything written above.
			before := e.insertLSN()
			e.db.Exec(t, "INSERT INTO items VALUES (999999, 'sentinel')")
			deadline := time.Now().Add(2 * time.Minute)
			for e.lakeLastCommit() <= before {
				if !capture.running() {
					t.Fatalf("capture --follow exited: %+v", capture.res)
				}
				if time.Now().After(deadline) {
					t.Fatalf("the lake did not reach the sentinel; capture stderr:\n%s", capture.stderr.String())
				}
				time.Sleep(300 * time.Millisecond)
				r := e.walcake("compact")
				if r.code != 0 {
					t.Logf("compact beside capture: exit %d: %s", r.code, finalLine(r.stderr))
				}
			}
			if !capture.running() {
				t.Fatalf("capture --follow exited: %+v", capture.res)
			}
			r := capture.interrupt()
			reconnects := strings.Count(r.stderr, "reconnecting")
			t.Logf("capture --follow reconnected %d times; exit %d", reconnects, r.code)
			if reconnects < rounds {
				t.Errorf("capture logged %d reconnects for %d faults:\n%s", reconnects, rounds, r.stderr)
			}
			if r.code != 0 {
				t.Errorf("capture --follow after SIGINT: exit %d: %s", r.code, finalLine(r.stderr))
			}
			e.mustWalcake("run")
			checkExactlyOnce(e, addOps(protoOps(rounds+1), "public.items", "I", 1))
		})
	}
}

// TestPostgresFaultsBatch: a batch run hit by a fault mid-stream (a large
// transaction is streaming) either goes on or fails with a one-line reason;
// the next run leaves the lake exact.
func TestPostgresFaultsBatch(t *testing.T) {
	for _, f := range pgFaults {
		t.Run(f.name, func(t *testing.T) {
			e := newProtoEnv(t)
			inject := f.setup(t, e)
			protoBatch(e, 1)
			e.db.Exec(t, "INSERT INTO items SELECT g, 'big ' || g FROM generate_series(2000001, 2200000) g")
			protoBatch(e, 2)
			run := e.spawn("run")
			inject()
			r := run.wait()
			if r.code == 0 {
				t.Logf("the run went on through the fault (%d reconnects): %s", strings.Count(r.stderr, "reconnecting"), strings.TrimSpace(r.stdout))
			} else {
				checkCleanFailure(t, "run hit by "+f.name, r)
				t.Logf("the run failed cleanly: %s", finalLine(r.stderr))
			}
			protoBatch(e, 3)
			e.mustWalcake("run")
			checkExactlyOnce(e, addOps(protoOps(3), "public.items", "I", 200000))
		})
	}
}

// tcpProxy forwards TCP connections to a target and can cut them all.
type tcpProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  map[*net.TCPConn]bool
	wg     sync.WaitGroup
}

func startTCPProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target, conns: map[*net.TCPConn]bool{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *tcpProxy) addr() string { return p.ln.Addr().String() }

func (p *tcpProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		client, server := c.(*net.TCPConn), s.(*net.TCPConn)
		p.mu.Lock()
		p.conns[client], p.conns[server] = true, true
		p.mu.Unlock()
		p.wg.Add(2)
		pipe := func(dst, src *net.TCPConn) {
			defer p.wg.Done()
			_, _ = io.Copy(dst, src)
			dst.Close()
			src.Close()
			p.mu.Lock()
			delete(p.conns, dst)
			delete(p.conns, src)
			p.mu.Unlock()
		}
		go pipe(client, server)
		go pipe(server, client)
	}
}

// cut resets every forwarded connection and returns how many it cut.
func (p *tcpProxy) cut() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for c := range p.conns {
		_ = c.SetLinger(0) // RST, not FIN: the connection is cut, not closed
		c.Close()
		delete(p.conns, c)
		n++
	}
	return n / 2
}
