package upload_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/wal-cake/wal-cake/compact"
	"github.com/wal-cake/wal-cake/compact/storetest"
	"github.com/wal-cake/wal-cake/scripts/testenv"
	"github.com/wal-cake/wal-cake/upload"
)

var _ compact.Store = (*upload.S3)(nil)

// s3Config returns a configuration for env with small parts, so that
// storetest's large objects go multipart.
func s3Config(env *testenv.S3Env) upload.S3Config {
	return upload.S3Config{
		Bucket:             env.Bucket,
		Prefix:             env.Prefix,
		Region:             env.Region,
		Endpoint:           env.Endpoint,
		AccessKeyID:        env.AccessKey,
		SecretAccessKey:    env.SecretKey,
		PartSize:           5 << 20,
		Concurrency:        2,
		MultipartThreshold: 5 << 20,
	}
}

func newS3(t *testing.T, cfg upload.S3Config) *upload.S3 {
	t.Helper()
	s, err := upload.NewS3(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestS3Conformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) compact.Store {
		return newS3(t, s3Config(testenv.S3(t)))
	})
}

// TestS3Multipart checks that objects at or above the threshold really go
// multipart: a multipart object's ETag ends in "-<parts>".
func TestS3Multipart(t *testing.T) {
	t.Parallel()
	env := testenv.S3(t)
	s := newS3(t, s3Config(env))
	tests := []struct {
		key      string
		size     int
		etagTail string // "" for a single PutObject
	}{
		{"small", 1000, ""},
		{"below", 5<<20 - 1, ""},
		{"at", 5 << 20, "-1"},
		{"large", storetest.LargeObjectSize, "-3"},
	}
	for _, tt := range tests {
		body := bytes.Repeat([]byte{'x'}, tt.size)
		if err := s.Put(t.Context(), tt.key, bytes.NewReader(body), int64(len(body))); err != nil {
			t.Fatalf("Put(%s): %v", tt.key, err)
		}
		head, err := env.Server.Client().HeadObject(t.Context(), &s3.HeadObjectInput{
			Bucket: aws.String(env.Bucket),
			Key:    aws.String(env.Prefix + "/" + tt.key),
		})
		if err != nil {
			t.Fatalf("HeadObject(%s): %v", tt.key, err)
		}
		etag := strings.Trim(aws.ToString(head.ETag), `"`)
		multipart := strings.Contains(etag, "-")
		if tt.etagTail == "" && multipart || tt.etagTail != "" && !strings.HasSuffix(etag, tt.etagTail) {
			t.Errorf("%s (%d bytes): ETag %s, want suffix %q", tt.key, tt.size, etag, tt.etagTail)
		}
		if got := aws.ToInt64(head.ContentLength); got != int64(tt.size) {
			t.Errorf("%s: ContentLength %d, want %d", tt.key, got, tt.size)
		}
	}
}

// TestS3Prefix checks that keys are relative to the configured prefix, and
// that objects next to the prefix are not the store's.
func TestS3Prefix(t *testing.T) {
	t.Parallel()
	env := testenv.S3(t)
	ctx := t.Context()
	cfg := s3Config(env)
	cfg.Prefix = "/" + env.Prefix + "/lake/" // slashes around it are ignored
	s := newS3(t, cfg)
	if got, want := s.String(), "s3://"+env.Bucket+"/"+env.Prefix+"/lake"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if err := s.Put(ctx, "t/k", bytes.NewReader([]byte("in")), 2); err != nil {
		t.Fatal(err)
	}
	raw := env.Server.Client()
	for _, key := range []string{env.Prefix + "/lake2/t/x", env.Prefix + "/lak", env.Prefix + "/t/k"} {
		if _, err := raw.PutObject(ctx, &s3.PutObjectInput{
			Bucket: aws.String(env.Bucket), Key: aws.String(key), Body: strings.NewReader("out"),
		}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := raw.HeadObject(ctx, &s3.HeadObjectInput{
		Bucket: aws.String(env.Bucket), Key: aws.String(env.Prefix + "/lake/t/k"),
	}); err != nil {
		t.Errorf("object not at prefix/key: %v", err)
	}
	var got []compact.Object
	if err := s.List(ctx, "", func(o compact.Object) error { got = append(got, o); return nil }); err != nil {
		t.Fatal(err)
	}
	if want := []compact.Object{{Key: "t/k", Size: 2}}; len(got) != 1 || got[0] != want[0] {
		t.Errorf("List = %v, want %v", got, want)
	}
}

// TestS3RetryRewindsBody puts through a proxy that fails the first attempt of
// every upload request with a 500 after reading part of its body: the retry
// must send the whole body again, for a single PutObject and for each part of
// a multipart upload.
func TestS3RetryRewindsBody(t *testing.T) {
	t.Parallel()
	env := testenv.S3(t)
	target, err := url.Parse(env.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target) // keeps the signed Host header
	var mu sync.Mutex
	failed := map[string]bool{}
	var failures int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			attempt := r.URL.Path + "?" + r.URL.Query().Get("partNumber")
			mu.Lock()
			first := !failed[attempt]
			failed[attempt] = true
			if first {
				failures++
			}
			mu.Unlock()
			if first {
				_, _ = io.CopyN(io.Discard, r.Body, 1024)
				w.Header().Set("Content-Type", "application/xml")
				w.WriteHeader(http.StatusInternalServerError)
				_, _ = io.WriteString(w, `<Error><Code>InternalError</Code><Message>injected</Message></Error>`)
				return
			}
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)

	cfg := s3Config(env)
	cfg.Endpoint = srv.URL
	s := newS3(t, cfg)
	direct := newS3(t, s3Config(env))
	for _, size := range []int{1000, storetest.LargeObjectSize} {
		key := "retry/" + strings.Repeat("x", size%7+1)
		body := make([]byte, size)
		for i := range body {
			body[i] = byte(i * 7)
		}
		if err := s.Put(t.Context(), key, bytes.NewReader(body), int64(size)); err != nil {
			t.Fatalf("Put(%d bytes) through a failing proxy: %v", size, err)
		}
		r, err := direct.Get(t.Context(), key)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		r.Close()
		if err != nil || !bytes.Equal(got, body) {
			t.Errorf("after retries, %s holds %d bytes (err %v), want the %d bytes put", key, len(got), err, size)
		}
	}
	if failures < 4 { // one PutObject, three parts
		t.Errorf("proxy injected %d failures, want at least 4", failures)
	}
}

// TestS3CancelMidUpload cancels a multipart upload while it runs: Put
// returns the cancellation, no object appears and the upload is aborted.
func TestS3CancelMidUpload(t *testing.T) {
	t.Parallel()
	env := testenv.S3(t)
	s := newS3(t, s3Config(env))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	body := &cancellingReader{r: bytes.NewReader(make([]byte, storetest.LargeObjectSize)), after: 6 << 20, cancel: cancel}
	err := s.Put(ctx, "cancelled.parquet", body, storetest.LargeObjectSize)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Put cancelled midway = %v, want an error wrapping context.Canceled", err)
	}
	if _, err := s.Get(t.Context(), "cancelled.parquet"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Get after a cancelled Put = %v, want fs.ErrNotExist", err)
	}
	out, err := env.Server.Client().ListMultipartUploads(t.Context(), &s3.ListMultipartUploadsInput{
		Bucket: aws.String(env.Bucket), Prefix: aws.String(env.Prefix + "/"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Uploads) != 0 {
		t.Errorf("%d multipart uploads left after a cancelled Put, want 0 (aborted)", len(out.Uploads))
	}
}

// cancellingReader calls cancel once more than after bytes have been read.
type cancellingReader struct {
	r      *bytes.Reader
	read   int64
	after  int64
	cancel context.CancelFunc
}

func (c *cancellingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.read += int64(n)
	if c.read > c.after {
		c.cancel()
	}
	return n, err
}

func (c *cancellingReader) Seek(off int64, whence int) (int64, error) {
	return c.r.Seek(off, whence)
}

func TestS3Check(t *testing.T) {
	t.Parallel()
	env := testenv.S3(t)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	unreachable := "http://" + closed.Addr().String()
	closed.Close()

	tests := []struct {
		name     string
		mod      func(*upload.S3Config)
		wantErr  error
		wantText string
	}{
		{"ok", func(*upload.S3Config) {}, nil, ""},
		{"missing bucket", func(c *upload.S3Config) { c.Bucket = "no-such-bucket" },
			upload.ErrBucketNotFound, "bucket no-such-bucket does not exist"},
		{"wrong secret", func(c *upload.S3Config) { c.SecretAccessKey = "wrong-secret-0123456789" },
			upload.ErrAccessDenied, "credentials rejected by " + env.Endpoint},
		{"unknown access key", func(c *upload.S3Config) { c.AccessKeyID = "AKNOBODY" },
			upload.ErrAccessDenied, "credentials rejected by"},
		{"unreachable endpoint", func(c *upload.S3Config) { c.Endpoint = unreachable },
			upload.ErrUnreachable, "endpoint " + unreachable + " unreachable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := s3Config(env)
			tt.mod(&cfg)
			s := newS3(t, cfg)
			start := time.Now()
			err := s.Check(t.Context())
			took := time.Since(start)
			t.Logf("Check took %v: %v", took.Round(time.Millisecond), err)
			// No retry storm; a generous bound, not a benchmark.
			if took > 30*time.Second {
				t.Errorf("Check took %v", took)
			}
			if tt.wantErr == nil {
				if err != nil {
					t.Errorf("Check() = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("Check() = %v, want an error wrapping %v", err, tt.wantErr)
			}
			if err != nil {
				msg := err.Error()
				if !strings.Contains(msg, tt.wantText) {
					t.Errorf("Check() = %q, want it to contain %q", msg, tt.wantText)
				}
				if strings.Contains(msg, "\n") {
					t.Errorf("Check() = %q, want one line", msg)
				}
				for _, secret := range []string{cfg.SecretAccessKey, env.SecretKey} {
					if strings.Contains(msg, secret) {
						t.Errorf("Check() error contains the secret key: %q", msg)
					}
				}
			}
		})
	}
}

// TestS3DefaultChain checks that without static keys the store takes its
// credentials and region from the environment (the default AWS chain), and
// that a custom endpoint without a region defaults to us-east-1.
func TestS3DefaultChain(t *testing.T) {
	env := testenv.S3(t)
	t.Setenv("AWS_CONFIG_FILE", "/nonexistent")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	t.Setenv("AWS_ACCESS_KEY_ID", env.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", env.SecretKey)
	cfg := s3Config(env)
	cfg.AccessKeyID, cfg.SecretAccessKey, cfg.Region = "", "", ""
	s := newS3(t, cfg)
	if err := s.Check(t.Context()); err != nil {
		t.Errorf("Check with credentials from the environment: %v", err)
	}

	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	s = newS3(t, cfg)
	err := s.Check(t.Context())
	t.Logf("Check without credentials: %v", err)
	if !errors.Is(err, upload.ErrNoCredentials) {
		t.Errorf("Check without any credentials = %v, want ErrNoCredentials", err)
	}
}

func TestS3String(t *testing.T) {
	t.Parallel()
	tests := []struct{ bucket, prefix, want string }{
		{"lake", "", "s3://lake"},
		{"lake", "/", "s3://lake"},
		{"lake", "cdc", "s3://lake/cdc"},
		{"lake", "/cdc/prod/", "s3://lake/cdc/prod"},
	}
	for _, tt := range tests {
		s, err := upload.NewS3(t.Context(), upload.S3Config{
			Bucket: tt.bucket, Prefix: tt.prefix, Endpoint: "http://127.0.0.1:1",
			AccessKeyID: "AK", SecretAccessKey: "not-in-string",
		})
		if err != nil {
			t.Fatal(err)
		}
		if got := s.String(); got != tt.want {
			t.Errorf("String() of bucket %q prefix %q = %q, want %q", tt.bucket, tt.prefix, got, tt.want)
		}
	}
}

func TestS3ConfigValidate(t *testing.T) {
	t.Parallel()
	valid := upload.S3Config{Bucket: "lake"}
	tests := []struct {
		name  string
		mod   func(*upload.S3Config)
		valid bool
	}{
		{"defaults", func(*upload.S3Config) {}, true},
		{"everything", func(c *upload.S3Config) {
			*c = upload.S3Config{Bucket: "lake", Prefix: "a/b", Region: "eu-west-1", Endpoint: "https://s3.example.com:9000",
				AccessKeyID: "AK", SecretAccessKey: "SK", SessionToken: "ST",
				PartSize: 8 << 20, Concurrency: 8, MultipartThreshold: 64 << 20, MaxAttempts: 10}
		}, true},
		{"prefix with slashes", func(c *upload.S3Config) { c.Prefix = "/a/b/" }, true},
		{"large part size raises the default threshold", func(c *upload.S3Config) { c.PartSize = 64 << 20 }, true},
		{"no bucket", func(c *upload.S3Config) { c.Bucket = "" }, false},
		{"bucket with slash", func(c *upload.S3Config) { c.Bucket = "lake/x" }, false},
		{"prefix escapes", func(c *upload.S3Config) { c.Prefix = "a/../.." }, false},
		{"prefix with empty element", func(c *upload.S3Config) { c.Prefix = "a//b" }, false},
		{"only access key", func(c *upload.S3Config) { c.AccessKeyID = "AK" }, false},
		{"only secret", func(c *upload.S3Config) { c.SecretAccessKey = "SK" }, false},
		{"session token alone", func(c *upload.S3Config) { c.SessionToken = "ST" }, false},
		{"endpoint without scheme", func(c *upload.S3Config) { c.Endpoint = "localhost:9000" }, false},
		{"endpoint ftp", func(c *upload.S3Config) { c.Endpoint = "ftp://host" }, false},
		{"endpoint with user", func(c *upload.S3Config) { c.Endpoint = "http://u:p@host" }, false},
		{"part size below 5 MiB", func(c *upload.S3Config) { c.PartSize = 1 << 20 }, false},
		{"negative concurrency", func(c *upload.S3Config) { c.Concurrency = -1 }, false},
		{"threshold below part size", func(c *upload.S3Config) { c.PartSize = 16 << 20; c.MultipartThreshold = 8 << 20 }, false},
		{"threshold above 5 GiB", func(c *upload.S3Config) { c.MultipartThreshold = 6 << 30 }, false},
		{"negative attempts", func(c *upload.S3Config) { c.MaxAttempts = -1 }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := valid
			tt.mod(&cfg)
			err := cfg.Validate()
			if got := err == nil; got != tt.valid {
				t.Errorf("Validate(%+v) = %v, want valid=%v", cfg, err, tt.valid)
			}
			if err != nil && !errors.Is(err, upload.ErrInvalidConfig) {
				t.Errorf("Validate() = %v, want an error wrapping ErrInvalidConfig", err)
			}
			if err != nil && cfg.SecretAccessKey != "" && strings.Contains(err.Error(), cfg.SecretAccessKey) {
				t.Errorf("Validate() error contains the secret: %v", err)
			}
			if _, nerr := upload.NewS3(context.Background(), cfg); err != nil && nerr == nil {
				t.Errorf("NewS3 accepted a config Validate rejects")
			}
		})
	}
}
