package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// S3 test server: versitygw (https://github.com/versity/versitygw) with its
// posix backend, one process per test binary, one bucket, one key prefix per
// test.

const (
	s3Module       = "github.com/versity/versitygw/cmd/versitygw@v1.8.0"
	s3InstallHint  = "install the S3 test server with: go install " + s3Module
	s3Region       = "us-east-1"
	s3TestBucket   = "walcake-test"
	s3LogName      = "_versitygw.log" // "_" is not allowed in bucket names: never a bucket
	s3OwnerName    = "_owner.pid"     // in a shared server's directory: the test binary's PID
	s3TempPattern  = "walcake-s3-*"
	s3StartTimeout = 15 * time.Second
	s3StopTimeout  = 10 * time.Second
	s3LogTailBytes = 4 << 10
)

// S3Server is a versitygw process serving the S3 protocol on 127.0.0.1, with
// its posix backend in Dir: bucket b is the directory Dir/b and object k of it
// the file Dir/b/k.
type S3Server struct {
	Endpoint  string // http://127.0.0.1:PORT
	Region    string
	AccessKey string
	SecretKey string
	Dir       string
	LogPath   string // the server's stdout and stderr

	cmd      *exec.Cmd
	done     chan struct{} // closed once the process has exited
	waitErr  error         // set before done is closed
	stopOnce sync.Once
	stopErr  error
}

// S3Binary returns the path of the versitygw binary: from PATH, else from
// $(go env GOBIN), else from $(go env GOPATH)/bin.
func S3Binary() (string, error) {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	var dirs []string
	if out, err := exec.Command("go", "env", "GOBIN", "GOPATH").Output(); err == nil {
		// One line each; GOBIN's is usually empty.
		lines := strings.Split(string(out), "\n")
		if gobin := strings.TrimSpace(lines[0]); gobin != "" {
			dirs = append(dirs, gobin)
		}
		if len(lines) > 1 {
			for _, p := range filepath.SplitList(strings.TrimSpace(lines[1])) {
				dirs = append(dirs, filepath.Join(p, "bin"))
			}
		}
	}
	for _, d := range dirs {
		p := filepath.Join(d, "versitygw")
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("testenv: versitygw not found on PATH, in GOBIN or in GOPATH/bin; %s", s3InstallHint)
}

// StartS3 starts versitygw on a free loopback port with a random access key
// and secret, serving dir (created if missing), and returns once it answers.
// Stop ends it; dir is left to the caller.
func StartS3(ctx context.Context, dir string) (*S3Server, error) {
	bin, err := S3Binary()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("testenv: s3: %w", err)
	}
	// The port is free when picked but may be taken before versitygw binds
	// it: try a few.
	for attempt := 1; ; attempt++ {
		srv, err := s3Start(ctx, bin, dir)
		if err == nil {
			return srv, nil
		}
		if attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			return nil, err
		}
	}
}

func s3Start(ctx context.Context, bin, dir string) (*S3Server, error) {
	port, err := s3FreePort()
	if err != nil {
		return nil, fmt.Errorf("testenv: s3: pick a port: %w", err)
	}
	s := &S3Server{
		Endpoint:  fmt.Sprintf("http://127.0.0.1:%d", port),
		Region:    s3Region,
		AccessKey: "AK" + s3RandomHex(9),
		SecretKey: s3RandomHex(20),
		Dir:       dir,
		LogPath:   filepath.Join(dir, s3LogName),
		done:      make(chan struct{}),
	}
	logFile, err := os.OpenFile(s.LogPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("testenv: s3: %w", err)
	}
	defer logFile.Close() // the child holds its own descriptor
	// The keys go through the environment, not argv, so ps does not show them.
	s.cmd = exec.Command(bin,
		"--port", fmt.Sprintf("127.0.0.1:%d", port),
		"--region", s.Region,
		"--quiet",
		"posix", dir)
	s.cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY_ID="+s.AccessKey, "ROOT_SECRET_ACCESS_KEY="+s.SecretKey)
	s.cmd.Stdout = logFile
	s.cmd.Stderr = logFile
	s.cmd.SysProcAttr = &syscall.SysProcAttr{}
	s3DieWithParent(s.cmd.SysProcAttr)
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("testenv: s3: start %s: %w", bin, err)
	}
	go func() {
		s.waitErr = s.cmd.Wait()
		close(s.done)
	}()
	if err := s.waitReady(ctx); err != nil {
		_ = s.Stop()
		return nil, fmt.Errorf("testenv: s3: versitygw on %s: %w\n--- %s (tail) ---\n%s", s.Endpoint, err, s.LogPath, s.logTail())
	}
	return s, nil
}

// waitReady polls the endpoint until it answers any HTTP response.
func (s *S3Server) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s3StartTimeout)
	defer cancel()
	client := &http.Client{Timeout: time.Second}
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.Endpoint+"/", nil)
		if err != nil {
			return err
		}
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			return nil
		}
		select {
		case <-s.done:
			return fmt.Errorf("exited before answering: %v", s.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("not answering: %w", context.Cause(ctx))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Client returns an S3 client for the server's root user (path-style, no
// default CRC32 checksums).
func (s *S3Server) Client() *s3.Client {
	return s3.New(s3.Options{
		Region:                     s.Region,
		BaseEndpoint:               aws.String(s.Endpoint),
		UsePathStyle:               true,
		Credentials:                credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, ""),
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
}

// CreateBucket creates bucket name; an existing bucket of ours is fine.
func (s *S3Server) CreateBucket(ctx context.Context, name string) error {
	_, err := s.Client().CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)})
	var owned *types.BucketAlreadyOwnedByYou
	if err != nil && !errors.As(err, &owned) {
		return fmt.Errorf("testenv: s3: create bucket %s: %w", name, err)
	}
	return nil
}

// Stop kills the server and waits for it to exit. It may be called more than
// once.
func (s *S3Server) Stop() error {
	s.stopOnce.Do(func() {
		select {
		case <-s.done:
			return // exited already (a failed start)
		default:
		}
		if err := s.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			s.stopErr = fmt.Errorf("testenv: s3: kill versitygw: %w", err)
			return
		}
		select {
		case <-s.done:
		case <-time.After(s3StopTimeout):
			s.stopErr = fmt.Errorf("testenv: s3: versitygw (pid %d) did not exit within %s", s.cmd.Process.Pid, s3StopTimeout)
		}
	})
	return s.stopErr
}

func (s *S3Server) logTail() string {
	b, err := os.ReadFile(s.LogPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	if len(b) > s3LogTailBytes {
		b = b[len(b)-s3LogTailBytes:]
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return "(empty log)"
	}
	return string(b)
}

// S3Env is one test's place on the shared S3 server: a bucket and a key
// prefix of its own, emptied when the test ends.
type S3Env struct {
	Endpoint  string
	Region    string
	AccessKey string
	SecretKey string
	Bucket    string
	Prefix    string // no leading or trailing slash
	Server    *S3Server
}

// Dest returns the environment as a destination URL, s3://bucket/prefix.
func (e *S3Env) Dest() string { return "s3://" + e.Bucket + "/" + e.Prefix }

// s3Shared is the test binary's server, started on first use by S3 and
// stopped by StopS3 (which Main calls).
var s3Shared struct {
	mu  sync.Mutex
	srv *S3Server
	dir string
}

// S3 returns an S3 environment for t on the test binary's shared server,
// starting the server on first use (a failed start is retried by the next
// caller). At cleanup every object and unfinished multipart upload under the
// prefix is removed. Without versitygw the test is skipped, or fails under
// CI=true. The package's TestMain must call Main, which stops the server.
func S3(t testing.TB) *S3Env {
	t.Helper()
	if !mainRunning.Load() {
		t.Fatal("testenv: S3 needs TestMain to call testenv.Main, which stops the shared server")
	}
	if _, err := S3Binary(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%v (CI=true, so this fails rather than skips)", err)
		}
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := s3SharedServer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e := &S3Env{
		Endpoint:  srv.Endpoint,
		Region:    srv.Region,
		AccessKey: srv.AccessKey,
		SecretKey: srv.SecretKey,
		Bucket:    s3TestBucket,
		Prefix:    s3PrefixFor(t.Name()),
		Server:    srv,
	}
	t.Cleanup(func() {
		if err := e.empty(); err != nil {
			t.Errorf("testenv: s3: clean up %s: %v", e.Dest(), err)
		}
	})
	return e
}

func s3SharedServer(ctx context.Context) (*S3Server, error) {
	s3Shared.mu.Lock()
	defer s3Shared.mu.Unlock()
	if s3Shared.srv != nil {
		return s3Shared.srv, nil
	}
	s3SweepStale()
	dir, err := os.MkdirTemp("", s3TempPattern)
	if err != nil {
		return nil, fmt.Errorf("testenv: s3: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, s3OwnerName), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("testenv: s3: %w", err)
	}
	srv, err := StartS3(ctx, dir)
	if err == nil {
		err = srv.CreateBucket(ctx, s3TestBucket)
		if err != nil {
			_ = srv.Stop()
		}
	}
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	s3Shared.srv, s3Shared.dir = srv, dir
	return srv, nil
}

// s3SweepStale removes the directories of shared servers whose test binary
// died without calling StopS3 (SIGKILL, a `go test -timeout` panic). The
// servers themselves died with their test binary (see s3DieWithParent).
func s3SweepStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), s3TempPattern))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, s3OwnerName))
		if err != nil {
			continue // being created, or not ours
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); err == nil || errors.Is(err, syscall.EPERM) {
			continue // owner alive
		}
		_ = os.RemoveAll(dir)
	}
}

// StopS3 stops the shared S3 server and removes its directory. It does
// nothing when no server was started.
func StopS3() {
	s3Shared.mu.Lock()
	defer s3Shared.mu.Unlock()
	if s3Shared.srv == nil {
		return
	}
	if err := s3Shared.srv.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	if err := os.RemoveAll(s3Shared.dir); err != nil {
		fmt.Fprintf(os.Stderr, "testenv: s3: %v\n", err)
	}
	s3Shared.srv, s3Shared.dir = nil, ""
}

// empty deletes every object and aborts every multipart upload under the
// environment's prefix.
func (e *S3Env) empty() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	client := e.Server.Client()
	prefix := aws.String(e.Prefix + "/")
	pages := s3.NewListObjectsV2Paginator(client, &s3.ListObjectsV2Input{Bucket: aws.String(e.Bucket), Prefix: prefix})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return err
		}
		for _, o := range page.Contents {
			if _, err := client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(e.Bucket), Key: o.Key}); err != nil {
				return err
			}
		}
	}
	uploads, err := client.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: aws.String(e.Bucket), Prefix: prefix})
	if err != nil {
		return err
	}
	for _, u := range uploads.Uploads {
		if _, err := client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{
			Bucket: aws.String(e.Bucket), Key: u.Key, UploadId: u.UploadId,
		}); err != nil {
			return err
		}
	}
	return nil
}

// s3PrefixFor turns a test name into a unique key prefix: letters, digits,
// '.', '-' and '_' kept, anything else (the '/' of subtests too) turned into
// '_', and a random suffix.
func s3PrefixFor(testName string) string {
	const maxBase = 80
	b := []byte(testName)
	for i, c := range b {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '-', c == '_':
		default:
			b[i] = '_'
		}
	}
	if len(b) > maxBase {
		b = b[:maxBase]
	}
	base := strings.Trim(string(b), "._")
	if base == "" {
		base = "test"
	}
	return base + "-" + s3RandomHex(4)
}

func s3RandomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand panics instead)
	return hex.EncodeToString(b)
}

func s3FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// s3DieWithParent has the kernel kill the server when the test binary dies,
// even by SIGKILL or a `go test -timeout` panic, which skip StopS3: no server
// outlives its tests. The Pdeathsig field exists only on Linux, hence the
// reflection; elsewhere this does nothing.
func s3DieWithParent(attr *syscall.SysProcAttr) {
	if f := reflect.ValueOf(attr).Elem().FieldByName("Pdeathsig"); f.IsValid() && f.CanSet() {
		f.Set(reflect.ValueOf(syscall.SIGKILL))
	}
}
