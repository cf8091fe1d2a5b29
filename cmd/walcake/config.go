package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/wal-cake/wal-cake/compact"
	"github.com/wal-cake/wal-cake/spool"
	"github.com/wal-cake/wal-cake/upload"
)

func globalFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "pg-conn-string", EnvVars: []string{"PG_CONN_STRING"}, Category: "PostgreSQL",
			Usage: "PostgreSQL URL (postgres://user:pass@host:5432/db?sslmode=require) or key=value DSN; never logged"},
		&cli.StringFlag{Name: "slot", EnvVars: []string{"PG_SLOT"}, Value: "walcake", Category: "PostgreSQL",
			Usage: "logical replication slot (pgoutput) to stream from"},
		&cli.StringFlag{Name: "publication", EnvVars: []string{"PG_PUBLICATION"}, Value: "walcake", Category: "PostgreSQL",
			Usage: "publication naming the tables to capture"},
		&cli.StringFlag{Name: "dest", EnvVars: []string{"WALCAKE_DEST"}, Category: "Lake",
			Usage: "lake location: s3://bucket/prefix or file:///dir"},
		&cli.StringFlag{Name: "s3-bucket", EnvVars: []string{"S3_BUCKET_NAME"}, Category: "Lake",
			Usage: "S3 bucket, with --namespace the same as --dest s3://BUCKET/NAMESPACE (when --dest is not set)"},
		&cli.StringFlag{Name: "namespace", EnvVars: []string{"NAMESPACE"}, Category: "Lake",
			Usage: "key prefix inside --s3-bucket"},
		&cli.StringFlag{Name: "aws-region", EnvVars: []string{"AWS_REGION"}, Category: "S3",
			Usage: "AWS region of the bucket (default: from the AWS config, or us-east-1 with a custom endpoint)"},
		&cli.StringFlag{Name: "aws-endpoint", EnvVars: []string{"AWS_ENDPOINT"}, Category: "S3",
			Usage: "URL of an S3-compatible server (MinIO, versitygw, ...); implies path-style addressing"},
		&cli.StringFlag{Name: "aws-access-key-id", EnvVars: []string{"AWS_ACCESS_KEY_ID"}, Category: "S3",
			Usage: "static access key; without it the default AWS credential chain applies (profile, web identity, ECS/EC2 role)"},
		&cli.StringFlag{Name: "aws-secret-access-key", EnvVars: []string{"AWS_SECRET_ACCESS_KEY"}, Category: "S3",
			Usage: "static secret key, with --aws-access-key-id; never logged"},
		&cli.StringFlag{Name: "aws-session-token", EnvVars: []string{"AWS_SESSION_TOKEN"}, Category: "S3",
			Usage: "session token that goes with temporary static keys; never logged"},
		&cli.IntFlag{Name: "s3-max-attempts", EnvVars: []string{"AWS_MAX_ATTEMPTS"}, Value: upload.DefaultMaxAttempts, Category: "S3",
			Usage: "attempts per S3 request, the first included; 5xx, SlowDown, timeouts and refused connections are retried with jittered exponential backoff"},
		&cli.DurationFlag{Name: "s3-io-timeout", EnvVars: []string{"WALCAKE_S3_IO_TIMEOUT"}, Value: upload.DefaultIOTimeout, Category: "S3",
			Usage: "how long one S3 attempt waits on a silent server before it is retried"},
		&cli.StringFlag{Name: "spool-dir", EnvVars: []string{"SPOOL_DIR"}, Value: "./spool", Category: "Spool",
			Usage: "local directory of the spool (created 0700); losing it loses nothing, the slot keeps what the lake lacks"},
		&cli.StringFlag{Name: "log-level", EnvVars: []string{"WALCAKE_LOG_LEVEL"}, Value: "info", Category: "Logging",
			Usage: "debug, info, warn or error"},
		&cli.StringFlag{Name: "log-format", EnvVars: []string{"WALCAKE_LOG_FORMAT"}, Value: "logfmt", Category: "Logging",
			Usage: "logfmt or json (logs go to stderr)"},
	}
}

// newLogger builds the slog logger the flags ask for, writing to stderr.
func newLogger(c *cli.Context) (*slog.Logger, error) {
	return buildLogger(os.Stderr, c.String("log-level"), c.String("log-format"))
}

func buildLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, cli.Exit(fmt.Sprintf("--log-level %q: want debug, info, warn or error", level), 2)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "logfmt", "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, cli.Exit(fmt.Sprintf("--log-format %q: want logfmt or json", format), 2)
}

// destination works out the lake location from --dest or
// --s3-bucket/--namespace.
func destination(c *cli.Context) (string, error) {
	dest := c.String("dest")
	bucket := c.String("s3-bucket")
	switch {
	case dest != "":
		return dest, nil
	case bucket != "":
		ns := strings.Trim(c.String("namespace"), "/")
		if ns == "" {
			return "s3://" + bucket, nil
		}
		return "s3://" + bucket + "/" + ns, nil
	}
	return "", cli.Exit("no lake destination: set WALCAKE_DEST (s3://bucket/prefix or file:///dir) or S3_BUCKET_NAME and NAMESPACE", 2)
}

// openStore opens the lake store named by the flags.
func openStore(ctx context.Context, c *cli.Context) (compact.Store, error) {
	dest, err := destination(c)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(dest)
	if err != nil {
		return nil, cli.Exit(fmt.Sprintf("lake destination %q: %v", dest, err), 2)
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, cli.Exit(fmt.Sprintf("lake destination %q: a file URL needs an absolute path: file:///dir", dest), 2)
		}
		return upload.NewDir(u.Path)
	case "s3":
		if u.Host == "" {
			return nil, cli.Exit(fmt.Sprintf("lake destination %q: no bucket", dest), 2)
		}
		s3, err := upload.NewS3(ctx, upload.S3Config{
			Bucket:          u.Host,
			Prefix:          strings.Trim(u.Path, "/"),
			Region:          c.String("aws-region"),
			Endpoint:        c.String("aws-endpoint"),
			AccessKeyID:     c.String("aws-access-key-id"),
			SecretAccessKey: c.String("aws-secret-access-key"),
			SessionToken:    c.String("aws-session-token"),
			MaxAttempts:     c.Int("s3-max-attempts"),
			IOTimeout:       c.Duration("s3-io-timeout"),
		})
		if err != nil {
			return nil, err
		}
		if err := s3.Check(ctx); err != nil {
			return nil, err
		}
		return s3, nil
	}
	return nil, cli.Exit(fmt.Sprintf("lake destination %q: want s3://bucket/prefix or file:///dir", dest), 2)
}

func connString(c *cli.Context) (string, error) {
	s := c.String("pg-conn-string")
	if s == "" {
		return "", cli.Exit("no PostgreSQL connection: set PG_CONN_STRING (a postgres:// URL or a key=value DSN)", 2)
	}
	return s, nil
}

func openSpool(c *cli.Context) (*spool.Spool, error) {
	return spool.Open(c.String("spool-dir"), spool.Options{
		SegmentMaxAge: c.Duration("segment-max-age"), // zero (commands without the flag): the default
		BeforeWrite:   spoolFaultFromEnv(),
	})
}

// failure turns an error into the one-line reason main prints, keeping
// interruptions recognisable.
func failure(err error) error {
	if errors.Is(err, errInterrupted) {
		return cli.Exit(err.Error(), 130)
	}
	return err
}
