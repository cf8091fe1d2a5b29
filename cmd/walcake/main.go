// Command walcake streams PostgreSQL logical replication into an S3 data
// lake of typed, ZSTD-compressed Parquet, one folder per table.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

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
	ctx, stop := signalContext()
	defer stop()
	err := newApp().RunContext(ctx, os.Args)
	if err == nil {
		return
	}
	var exit cli.ExitCoder
	if errors.As(err, &exit) {
		if msg := exit.Error(); msg != "" {
			fmt.Fprintln(os.Stderr, "walcake:", msg)
		}
		os.Exit(exit.ExitCode())
	}
	fmt.Fprintln(os.Stderr, "walcake:", err)
	os.Exit(1)
}

// signalContext is cancelled by the first SIGINT or SIGTERM; a second one
// exits at once.
func signalContext() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-ch
		cancel(fmt.Errorf("%w: received %s", errInterrupted, sig))
		sig = <-ch
		fmt.Fprintf(os.Stderr, "walcake: received %s again, exiting now\n", sig)
		os.Exit(130)
	}()
	return ctx, func() { signal.Stop(ch); cancel(nil) }
}

var errInterrupted = errors.New("interrupted")

func newApp() *cli.App {
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
		Commands:             []*cli.Command{setupCommand(), captureCommand(), compactCommand(), runCommand(), statusCommand()},
		EnableBashCompletion: true,
		HideHelpCommand:      true,
		ExitErrHandler:       func(*cli.Context, error) {}, // main prints errors
	}
}
