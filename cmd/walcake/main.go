// Command walcake streams PostgreSQL logical replication into an S3 data
// lake of typed, ZSTD-compressed Parquet, one folder per table.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/wal-cake/wal-cake/compact"
	"github.com/wal-cake/wal-cake/upload"
)

// Both stores satisfy the interface compaction defines.
var (
	_ compact.Store = (*upload.S3)(nil)
	_ compact.Store = (*upload.Dir)(nil)
)

// Set by the release build (-ldflags "-X main.version=... -X main.commit=...").
var (
	version = "dev"
	commit  = "none"
)

func main() {
	rt := newProcessIO(os.Stdout, os.Stderr)
	app := newAppWith(rt)
	ctx, stop := signalContext(rt)
	defer stop()
	err := app.RunContext(ctx, os.Args)
	if err == nil {
		return
	}
	var exit cli.ExitCoder
	if errors.As(err, &exit) {
		if msg := exit.Error(); msg != "" {
			fmt.Fprintln(rt.stderr, "walcake:", oneLine(msg))
		}
		os.Exit(exit.ExitCode())
	}
	fmt.Fprintln(rt.stderr, "walcake:", oneLine(err.Error()))
	os.Exit(1)
}

// oneLine joins the lines of an error message (pgconn lists each address
// it tried on a line of its own, often twice) into one, without repeats.
func oneLine(msg string) string {
	var out strings.Builder
	for _, l := range strings.Split(msg, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.Contains(out.String(), l) {
			continue
		}
		if out.Len() > 0 {
			out.WriteByte(' ')
		}
		out.WriteString(l)
	}
	return out.String()
}

// defaultShutdownTimeout bounds how long a command may take to stop after
// SIGTERM or SIGINT: below the 30 s that ECS, Kubernetes and systemd give
// before they send SIGKILL.
const defaultShutdownTimeout = 20 * time.Second

// processIO is what main and the commands share: outputs that redact secrets,
// and the shutdown bound the flags set.
type processIO struct {
	secrets         *secrets
	stdout, stderr  *redactor
	shutdownTimeout atomic.Int64 // nanoseconds; 0: wait for the command
}

func newProcessIO(stdout, stderr io.Writer) *processIO {
	s := &secrets{}
	rt := &processIO{secrets: s, stdout: &redactor{w: stdout, secrets: s}, stderr: &redactor{w: stderr, secrets: s}}
	rt.shutdownTimeout.Store(int64(defaultShutdownTimeout))
	return rt
}

func (rt *processIO) setShutdownTimeout(d time.Duration) {
	if d >= 0 {
		rt.shutdownTimeout.Store(int64(d))
	}
}

// signalContext is cancelled by the first SIGINT or SIGTERM, which also
// starts the shutdown bound: a command still running when it passes, or a
// second signal, exits at once. Exiting at any moment loses nothing: the
// slot keeps whatever the lake does not hold, and the spool and the lake
// recover from a stop at any step, as from SIGKILL.
func signalContext(rt *processIO) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-ch
		bound := time.Duration(rt.shutdownTimeout.Load())
		if bound > 0 {
			fmt.Fprintf(rt.stderr, "walcake: received %s, stopping (at most %s; send it again to exit now)\n", sig, bound)
		} else {
			fmt.Fprintf(rt.stderr, "walcake: received %s, stopping (send it again to exit now)\n", sig)
		}
		cancel(fmt.Errorf("%w: received %s", errInterrupted, sig))
		var deadline <-chan time.Time
		if bound > 0 {
			deadline = time.After(bound)
		}
		select {
		case sig = <-ch:
			fmt.Fprintf(rt.stderr, "walcake: received %s again, exiting now; nothing is lost, the next run resumes from the slot\n", sig)
		case <-deadline:
			fmt.Fprintf(rt.stderr, "walcake: still stopping after %s, exiting now; nothing is lost, the next run resumes from the slot\n", bound)
		}
		os.Exit(130)
	}()
	return ctx, func() { signal.Stop(ch); cancel(nil) }
}

var errInterrupted = errors.New("interrupted")

// newAppWith is the walcake CLI writing through rt.
func newAppWith(rt *processIO) *cli.App {
	commands := []*cli.Command{setupCommand(), captureCommand(), compactCommand(), runCommand(), statusCommand(), backfillCommand()}
	for _, cmd := range commands {
		withOps(rt, cmd)
	}
	return &cli.App{
		Name:    "walcake",
		Usage:   "stream PostgreSQL logical replication into a Parquet data lake on S3",
		Version: version + " (commit " + commit + ")",
		Description: `wal-cake reads a PostgreSQL logical replication slot (pgoutput) into a local
spool, then writes every committed change, exactly once, as typed ZSTD Parquet
files, one folder per table, under an S3 prefix or a local directory.

Typical use: "walcake setup" once, then "walcake run" from cron, an ECS
scheduled task or a Kubernetes CronJob. Every flag can also be set through the
environment variable shown beside it.`,
		Flags:                globalFlags(),
		Commands:             commands,
		Writer:               rt.stdout,
		ErrWriter:            rt.stderr,
		EnableBashCompletion: true,
		HideHelpCommand:      true,
		ExitErrHandler:       func(*cli.Context, error) {}, // main prints errors
	}
}
