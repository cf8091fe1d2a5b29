package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/wal-cake/wal-cake/scripts/testenv"
	"github.com/wal-cake/wal-cake/scripts/testenv/duck"
)

// newEnvOn is newEnv on a server of the test's own (a lost slot, TLS,
// passwords): a fresh database on srv, connected as postgres. The caller's
// cleanup stops the server.
func newEnvOn(t *testing.T, srv *testenv.PostgresServer) *env {
	t.Helper()
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, srv.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	name := "walcake_ops"
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	db := &testenv.Database{Name: name, URL: srv.URL(name), DSN: srv.DSN(name), Server: srv}
	return newEnvWith(t, db)
}

// newEnvWith is newEnv with a given database.
func newEnvWith(t *testing.T, db *testenv.Database) *env {
	t.Helper()
	s3 := testenv.S3(t)
	e := &env{t: t, db: db, s3: s3, spool: filepath.Join(t.TempDir(), "spool")}
	e.vars = []string{
		"PG_CONN_STRING=" + db.URL,
		"PG_SLOT=walcake_test",
		"PG_PUBLICATION=walcake_test",
		"WALCAKE_DEST=" + s3.Dest(),
		"AWS_ENDPOINT=" + s3.Endpoint,
		"AWS_REGION=" + s3.Region,
		"AWS_ACCESS_KEY_ID=" + s3.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + s3.SecretKey,
		"SPOOL_DIR=" + e.spool,
	}
	return e
}

// setVar replaces (or adds) one environment variable of the env.
func (e *env) setVar(kv string) {
	k, _, _ := strings.Cut(kv, "=")
	for i, v := range e.vars {
		if strings.HasPrefix(v, k+"=") {
			e.vars[i] = kv
			return
		}
	}
	e.vars = append(e.vars, kv)
}

// proc is a walcake process running in the background.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdout bytes.Buffer
	mu     sync.Mutex
	stderr bytes.Buffer
	lines  chan string // stderr lines, as they come
	done   chan struct{}
	code   int
}

// start runs walcake in the background; the test's cleanup kills it if it is
// still running.
func (e *env) start(args ...string) *proc {
	e.t.Helper()
	p := &proc{t: e.t, lines: make(chan string, 10000), done: make(chan struct{})}
	p.cmd = exec.Command(walcakeBin, args...)
	p.cmd.Env = append(minimalEnv(), e.vars...)
	p.cmd.Stdout = &p.stdout
	pr, pw := io.Pipe()
	p.cmd.Stderr = pw
	if err := p.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.stderr.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
	}()
	go func() {
		err := p.cmd.Wait()
		pw.Close()
		p.code = p.cmd.ProcessState.ExitCode()
		if err != nil && p.code == 0 {
			p.code = -1
		}
		close(p.done)
	}()
	e.t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// waitLine waits for a stderr line matching re and returns it.
func (p *proc) waitLine(re *regexp.Regexp, limit time.Duration) string {
	p.t.Helper()
	deadline := time.After(limit)
	for {
		select {
		case l := <-p.lines:
			if re.MatchString(l) {
				return l
			}
		case <-p.done:
			// Drain what is left.
			for {
				select {
				case l := <-p.lines:
					if re.MatchString(l) {
						return l
					}
				default:
					p.t.Fatalf("walcake exited (code %d) before logging %s:\n%s", p.code, re, p.stderrText())
				}
			}
		case <-deadline:
			p.t.Fatalf("no line matching %s within %s:\n%s", re, limit, p.stderrText())
		}
	}
}

// signal sends sig unless the process has exited; it reports whether it
// sent it.
func (p *proc) signal(sig syscall.Signal) bool {
	p.t.Helper()
	select {
	case <-p.done:
		return false
	default:
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		select {
		case <-p.done:
			return false
		default:
		}
		p.t.Fatalf("signal %s: %v", sig, err)
	}
	return true
}

// wait waits for the process to exit, failing the test after limit (a hang,
// not a timing assertion: limit is generous).
func (p *proc) wait(limit time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
		time.Sleep(10 * time.Millisecond) // let the stderr reader finish
		return p.code
	case <-time.After(limit):
		p.t.Fatalf("walcake did not exit within %s:\n%s", limit, p.stderrText())
		return 0
	}
}

func (p *proc) stderrText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// logValue returns the value of key in a logfmt line.
func logValue(line, key string) string {
	m := regexp.MustCompile(`(?:^| )` + regexp.QuoteMeta(key) + `=("(?:[^"\\]|\\.)*"|\S*)`).FindStringSubmatch(line)
	if m == nil {
		return ""
	}
	if s, err := strconv.Unquote(m[1]); err == nil {
		return s
	}
	return m[1]
}

// exactLake checks that the lake's state of every table equals PostgreSQL's
// and that no change appears twice.
func (e *env) exactLake(tables []lakeTable) {
	e.t.Helper()
	lake := e.download()
	ddb := duck.Open(e.t)
	for _, tb := range tables {
		got := asStrings(lakeState(e.t, ddb, lake, tb.table, tb.key, tb.duckCols, tb.orderBy))
		want := asStrings(e.pgRows("SELECT " + tb.pgCols + " FROM " + tb.pgTable + " AS t ORDER BY " + tb.pgOrderBy))
		sameRows(e.t, tb.table, got, want)
		glob := filepath.Join(lake, tb.table, "**", "*.parquet")
		if m, _ := filepath.Glob(filepath.Join(lake, tb.table, "*", "*.parquet")); len(m) == 0 {
			if len(want) > 0 {
				e.t.Errorf("%s: no files in the lake", tb.table)
			}
			continue
		}
		rows := duck.Rows(e.t, ddb, fmt.Sprintf("SELECT count(*) - count(DISTINCT (_commit_lsn, _seq)) FROM read_parquet('%s', union_by_name=true, hive_partitioning=false)", glob))
		if n := rows[0][0].(int64); n != 0 {
			e.t.Errorf("%s: %d duplicated (_commit_lsn, _seq)", tb.table, n)
		}
	}
}

// lakeTable says how to compare a table of the lake with PostgreSQL.
type lakeTable struct {
	table, pgTable     string
	key                []string
	duckCols, pgCols   string
	orderBy, pgOrderBy string
}

// fileMode returns a file's permission bits.
func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}
