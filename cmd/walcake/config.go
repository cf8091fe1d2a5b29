package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
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
		&cli.StringFlag{Name: "sse", EnvVars: []string{"WALCAKE_SSE"}, Category: "S3",
			Usage: "server-side encryption of every object written: AES256 (S3-managed keys) or aws:kms (default: the bucket's default encryption)"},
		&cli.StringFlag{Name: "sse-kms-key-id", EnvVars: []string{"WALCAKE_SSE_KMS_KEY_ID"}, Category: "S3",
			Usage: "KMS key id, ARN or alias ARN for --sse aws:kms (default: the account's aws/s3 key)"},
		&cli.StringFlag{Name: "spool-dir", EnvVars: []string{"SPOOL_DIR"}, Value: "./spool", Category: "Spool",
			Usage: "local directory of the spool (created 0700); losing it loses nothing, the slot keeps what the lake lacks"},
		&cli.StringFlag{Name: "log-level", EnvVars: []string{"WALCAKE_LOG_LEVEL"}, Value: "info", Category: "Logging",
			Usage: "debug, info, warn or error"},
		&cli.StringFlag{Name: "log-format", EnvVars: []string{"WALCAKE_LOG_FORMAT"}, Value: "logfmt", Category: "Logging",
			Usage: "logfmt or json (logs go to stderr)"},
		&cli.DurationFlag{Name: "shutdown-timeout", EnvVars: []string{"WALCAKE_SHUTDOWN_TIMEOUT"}, Value: defaultShutdownTimeout, Category: "Operations",
			Usage: "after SIGTERM or SIGINT, exit at the latest this much later even if the current step has not finished (nothing is lost either way); keep it below the scheduler's kill timeout (ECS and Kubernetes: 30 s); 0 waits for the step"},
	}
}

// newLogger returns the command's logger: the one its ops built (secrets
// redacted, records counted), else one the flags ask for, writing to stderr.
func newLogger(c *cli.Context) (*slog.Logger, error) {
	if o := opsFrom(c); o != nil {
		return o.log, nil
	}
	return buildLogger(c.App.ErrWriter, c.String("log-level"), c.String("log-format"))
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
			SSE:             c.String("sse"),
			SSEKMSKeyID:     c.String("sse-kms-key-id"),
			MaxAttempts:     c.Int("s3-max-attempts"),
			IOTimeout:       c.Duration("s3-io-timeout"),
		})
		if errors.Is(err, upload.ErrInvalidConfig) {
			return nil, cli.Exit(err.Error(), 2)
		}
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
	// The default, ./spool, is also the name of wal-cake's own spool
	// package: run from a checkout, walcake would write into (and a clean-up
	// would delete) source code. Refuse a directory that holds Go sources.
	if src, _ := filepath.Glob(filepath.Join(c.String("spool-dir"), "*.go")); len(src) > 0 {
		return nil, cli.Exit(fmt.Sprintf("SPOOL_DIR %s holds Go source files (%s): it is a source directory, not a spool; set SPOOL_DIR or --spool-dir", c.String("spool-dir"), filepath.Base(src[0])), 2)
	}
	sp, err := spool.Open(c.String("spool-dir"), spool.Options{
		SegmentMaxAge: c.Duration("segment-max-age"), // zero (commands without the flag): the default
		BeforeWrite:   spoolFaultFromEnv(),
	})
	if err != nil {
		return nil, err
	}
	if err := privateDir(sp.Dir()); err != nil {
		if log, lerr := newLogger(c); lerr == nil {
			log.Warn("spool directory is readable by other users", "err", err)
		}
	}
	return sp, nil
}

// privateDir makes dir mode 0700 when it was made looser (a volume's root, a
// directory created by hand): the spool holds row data.
func privateDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if fi.Mode().Perm()&0o077 == 0 {
		return nil
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("%s has mode %04o and cannot be made 0700: %w", dir, fi.Mode().Perm(), err)
	}
	return nil
}

// parseSize parses a byte size the way PostgreSQL does: a number with an
// optional unit B, kB, MB, GB or TB, each 1024 times the last (KiB, MiB, GiB
// and TiB are accepted too).
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	i := 0
	for i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] == '.') {
		i++
	}
	num, unit := s[:i], strings.ToLower(strings.TrimSpace(s[i:]))
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v < 0 {
		return 0, errors.New("want a size such as 512MB or 10GB")
	}
	mult := map[string]float64{"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
		"g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}[unit]
	if mult == 0 {
		return 0, fmt.Errorf("unknown unit %q: want B, kB, MB, GB or TB", s[i:])
	}
	if v*mult > math.MaxInt64/2 {
		return 0, errors.New("too large")
	}
	return int64(v * mult), nil
}

// failure turns an error into the one-line reason main prints, keeping
// interruptions recognisable.
func failure(err error) error {
	if errors.Is(err, errInterrupted) {
		return cli.Exit(err.Error(), 130)
	}
	return err
}
