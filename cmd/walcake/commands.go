package main

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/wal-cake/wal-cake/capture"
	"github.com/wal-cake/wal-cake/compact"
	"github.com/wal-cake/wal-cake/spool"
)

func setupCommand() *cli.Command {
	return &cli.Command{
		Name:  "setup",
		Usage: "check wal_level, create the publication and the pgoutput slot when missing (idempotent)",
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "tables", EnvVars: []string{"WALCAKE_TABLES"},
				Usage: "tables to publish, as schema.table, comma-separated (default: all tables)"},
			&cli.BoolFlag{Name: "via-partition-root", EnvVars: []string{"WALCAKE_VIA_PARTITION_ROOT"},
				Usage: "publish a partitioned table's changes as the partitioned table (one lake table) rather than per partition " +
					"(publish_via_partition_root; when not given, an existing publication keeps its setting)"},
			&cli.BoolFlag{Name: "backfill", Usage: "then backfill the tables (those of --tables, else all published) as walcake backfill does; " +
				"settings from " + envBackfillParallel + " and " + envBackfillChunkRows + " (backfill.go)"},
		},
		Action: func(c *cli.Context) error {
			log, err := newLogger(c)
			if err != nil {
				return err
			}
			conn, err := connString(c)
			if err != nil {
				return err
			}
			var tables []string
			for _, t := range c.StringSlice("tables") {
				tables = append(tables, strings.Split(t, ",")...)
			}
			var viaRoot *bool
			if c.IsSet("via-partition-root") {
				v := c.Bool("via-partition-root")
				viaRoot = &v
			}
			res, err := capture.Setup(c.Context, capture.SetupConfig{
				ConnString: conn, Slot: c.String("slot"), Publication: c.String("publication"),
				Tables: tables, ViaPartitionRoot: viaRoot, Logger: log,
			})
			if err != nil {
				return failure(err)
			}
			fmt.Fprintf(c.App.Writer, "setup: publication %s (%s), slot %s (%s) at %s, %d warning(s)\n",
				c.String("publication"), createdOr(res.CreatedPublication, "exists"),
				c.String("slot"), createdOr(res.CreatedSlot, "exists"), res.SlotLSN, len(res.Warnings))
			if c.Bool("backfill") { // after the slot exists (backfill.go)
				bs, err := backfillSettingsFromEnv()
				if err != nil {
					return err
				}
				return runBackfill(c, tables, bs)
			}
			return nil
		},
	}
}

func createdOr(created bool, otherwise string) string {
	if created {
		return "created"
	}
	return otherwise
}

func captureFlags() []cli.Flag {
	return []cli.Flag{
		&cli.DurationFlag{Name: "status-interval", Value: 10 * time.Second, Usage: "how often capture reports its position to the server"},
		&cli.DurationFlag{Name: "segment-max-age", EnvVars: []string{"WALCAKE_SEGMENT_MAX_AGE"}, Value: time.Minute,
			Usage: "seal a spool segment (making it ready for compaction) once it has been open this long"},
	}
}

func captureConfig(c *cli.Context, follow bool) (capture.Config, error) {
	log, err := newLogger(c)
	if err != nil {
		return capture.Config{}, err
	}
	conn, err := connString(c)
	if err != nil {
		return capture.Config{}, err
	}
	cfg := capture.Config{
		ConnString: conn, Slot: c.String("slot"), Publication: c.String("publication"),
		Follow: follow, StatusInterval: c.Duration("status-interval"), Logger: log,
	}
	cfg.Progress = opsFrom(c).captureHook() // metrics and progress logs (ops.go)
	if err := cfg.Validate(); err != nil {
		return cfg, cli.Exit(err.Error(), 2)
	}
	return cfg, nil
}

func captureCommand() *cli.Command {
	return &cli.Command{
		Name:  "capture",
		Usage: "stream the slot into the spool until caught up with the server's position at start (or keep going with --follow)",
		Flags: append(captureFlags(),
			&cli.BoolFlag{Name: "follow", Usage: "keep streaming until SIGTERM or SIGINT"},
			&cli.BoolFlag{Name: "json", Usage: "print the summary as JSON"},
		),
		Action: func(c *cli.Context) error {
			started := time.Now()
			cfg, err := captureConfig(c, c.Bool("follow"))
			if err != nil {
				return err
			}
			sp, err := openSpool(c)
			if err != nil {
				return err
			}
			if err := opsFrom(c).beforeCapture(c.Context); err != nil { // heartbeat, slot health (ops.go)
				return err
			}
			st, err := capture.Run(c.Context, cfg, sp)
			opsFrom(c).captured(st)
			if err != nil && !(cfg.Follow && errors.Is(err, errInterrupted)) {
				return failure(err)
			}
			return printSummary(c, "capture", summaryOf(&st, nil, time.Since(started)))
		},
	}
}

func compactCommand() *cli.Command {
	return &cli.Command{
		Name:  "compact",
		Usage: "commit sealed spool segments to the lake as Parquet, then advance the slot",
		Flags: []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print the summary as JSON"}},
		Action: func(c *cli.Context) error {
			started := time.Now()
			cfg, sp, err := compactSetup(c)
			if err != nil {
				return err
			}
			st, err := compact.Run(c.Context, cfg, sp)
			opsFrom(c).compacted(st)
			if err != nil {
				return failure(err)
			}
			return printSummary(c, "compact", summaryOf(nil, &st, time.Since(started)))
		},
	}
}

func compactSetup(c *cli.Context) (compact.Config, *spool.Spool, error) {
	log, err := newLogger(c)
	if err != nil {
		return compact.Config{}, nil, err
	}
	conn, err := connString(c)
	if err != nil {
		return compact.Config{}, nil, err
	}
	store, err := openStore(c.Context, c)
	if err != nil {
		return compact.Config{}, nil, failure(err)
	}
	sp, err := openSpool(c)
	if err != nil {
		return compact.Config{}, nil, err
	}
	cfg := compact.Config{Store: store, ConnString: conn, Slot: c.String("slot"), Logger: log, Failpoint: failpointFromEnv()}
	cfg.Progress = opsFrom(c).compactProgress(sp) // metrics and progress logs (ops.go)
	if err := cfg.Validate(); err != nil {
		return cfg, nil, cli.Exit(err.Error(), 2)
	}
	return cfg, sp, nil
}

func runCommand() *cli.Command {
	return &cli.Command{
		Name:  "run",
		Usage: "capture until caught up, then compact: the job for cron, ECS scheduled tasks and Kubernetes CronJobs",
		Flags: append(captureFlags(), &cli.BoolFlag{Name: "json", Usage: "print the summary as JSON"}),
		Action: func(c *cli.Context) error {
			started := time.Now()
			ccfg, err := captureConfig(c, false)
			if err != nil {
				return err
			}
			kcfg, sp, err := compactSetup(c)
			if err != nil {
				return err
			}
			if err := opsFrom(c).beforeCapture(c.Context); err != nil { // heartbeat, slot health (ops.go)
				return err
			}
			cst, err := capture.Run(c.Context, ccfg, sp)
			opsFrom(c).captured(cst)
			if err != nil {
				return failure(fmt.Errorf("capture: %w", err))
			}
			kst, err := compact.Run(c.Context, kcfg, sp)
			opsFrom(c).compacted(kst)
			if err != nil {
				return failure(fmt.Errorf("compact: %w", err))
			}
			return printSummary(c, "run", summaryOf(&cst, &kst, time.Since(started)))
		},
	}
}
