package upload

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager"
	tmtypes "github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// Sizes and defaults of S3Config.
const (
	mib = 1 << 20

	DefaultPartSize           = 16 * mib
	DefaultConcurrency        = 4
	DefaultMultipartThreshold = 32 * mib
	DefaultMaxAttempts        = 5
	DefaultEndpointRegion     = "us-east-1" // with a custom Endpoint and no region
	DefaultConnectTimeout     = 10 * time.Second
	DefaultIOTimeout          = 30 * time.Second

	minPartSize = 5 * mib        // S3's minimum for every part but the last
	maxPutSize  = 5 * 1024 * mib // S3's maximum for one PutObject or one part
)

var (
	// ErrInvalidConfig reports an S3Config that Validate rejects.
	ErrInvalidConfig = errors.New("invalid configuration")

	// ErrBucketNotFound, ErrAccessDenied, ErrNoCredentials and ErrUnreachable
	// classify the errors of S3.Check.
	ErrBucketNotFound = errors.New("bucket does not exist")
	ErrAccessDenied   = errors.New("access denied")
	ErrNoCredentials  = errors.New("no credentials")
	ErrUnreachable    = errors.New("endpoint unreachable")
)

// S3Config configures an S3 store. Zero values take the defaults above.
type S3Config struct {
	Bucket string
	Prefix string // key prefix inside the bucket; slashes around it are ignored
	Region string // empty: from the environment or shared config, else us-east-1 with an Endpoint

	// Endpoint is the URL of an S3-compatible server (MinIO, versitygw, ...).
	// It implies path-style addressing. Empty means AWS.
	Endpoint string

	// Static credentials, used only when both keys are set; otherwise the
	// default AWS chain applies (environment, shared config, web identity,
	// ECS and EC2 roles). SessionToken goes with temporary static keys.
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string

	// ConnectTimeout bounds the TCP connect and the TLS handshake of one
	// attempt. IOTimeout bounds how long one attempt waits on the server: for
	// the response headers once the request is sent, and for any read or
	// write on the connection to make progress. An attempt that times out is
	// retried like a 5xx, within MaxAttempts, so a hung server fails the
	// request in bounded time instead of stalling the job.
	ConnectTimeout time.Duration
	IOTimeout      time.Duration

	PartSize           int64 // bytes per multipart part, at least 5 MiB
	Concurrency        int   // parts in flight per upload
	MultipartThreshold int64 // objects this large or larger go multipart
	MaxAttempts        int   // per request, the first one included

	// SSE asks S3 to encrypt every object it stores: "" (the bucket's
	// default), SSEAES256 (S3-managed keys) or SSEKMS (AWS KMS).
	SSE string
	// SSEKMSKeyID is the KMS key (id, ARN or alias ARN) for SSEKMS; empty
	// means the account's AWS-managed key for S3.
	SSEKMSKeyID string
}

// Values of S3Config.SSE.
const (
	SSEAES256 = "AES256"
	SSEKMS    = "aws:kms"
)

// withDefaults fills the zero fields.
func (c S3Config) withDefaults() S3Config {
	c.Prefix = strings.Trim(c.Prefix, "/")
	if c.PartSize == 0 {
		c.PartSize = DefaultPartSize
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.MultipartThreshold == 0 {
		c.MultipartThreshold = max(DefaultMultipartThreshold, c.PartSize)
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.IOTimeout == 0 {
		c.IOTimeout = DefaultIOTimeout
	}
	return c
}

// Validate reports the first problem of c, zero fields standing for their
// defaults. The error wraps ErrInvalidConfig.
func (c S3Config) Validate() error {
	invalid := func(format string, args ...any) error {
		return fmt.Errorf("s3: %w: "+format, append([]any{ErrInvalidConfig}, args...)...)
	}
	d := c.withDefaults()
	switch {
	case c.Bucket == "":
		return invalid("bucket is empty")
	case strings.ContainsAny(c.Bucket, "/ \t\r\n"):
		return invalid("bucket name %q contains a slash or a space", c.Bucket)
	case d.Prefix != "" && checkKey(d.Prefix) != nil:
		return invalid("prefix %q is not a clean relative path", c.Prefix)
	case (c.AccessKeyID == "") != (c.SecretAccessKey == ""):
		return invalid("set both the access key id and the secret access key, or neither")
	case c.SessionToken != "" && c.AccessKeyID == "":
		return invalid("a session token needs the access key id and secret access key")
	case d.PartSize < minPartSize || d.PartSize > maxPutSize:
		return invalid("part size %d is outside S3's limits of 5 MiB to 5 GiB", c.PartSize)
	case d.Concurrency < 1:
		return invalid("concurrency %d is below 1", c.Concurrency)
	case d.MultipartThreshold < d.PartSize:
		return invalid("multipart threshold %d is below the part size %d", d.MultipartThreshold, d.PartSize)
	case d.MultipartThreshold > maxPutSize:
		return invalid("multipart threshold %d is above S3's 5 GiB limit for a single upload", c.MultipartThreshold)
	case d.MaxAttempts < 1:
		return invalid("max attempts %d is below 1", c.MaxAttempts)
	case c.SSE != "" && c.SSE != SSEAES256 && c.SSE != SSEKMS:
		return invalid("server-side encryption %q: want %s or %s", c.SSE, SSEAES256, SSEKMS)
	case c.SSEKMSKeyID != "" && c.SSE != SSEKMS:
		return invalid("a KMS key id needs server-side encryption %s", SSEKMS)
	}
	if c.ConnectTimeout < 0 || c.IOTimeout < 0 {
		return invalid("timeouts must not be negative")
	}
	if c.Endpoint != "" {
		u, err := url.Parse(c.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return invalid("endpoint %q is not an http:// or https:// URL", c.Endpoint)
		}
		if u.User != nil {
			return invalid("endpoint must not carry credentials")
		}
	}
	return nil
}

// S3 is a Store in an S3 bucket under a key prefix. It is safe for concurrent
// use.
type S3 struct {
	client   *s3.Client
	tm       *transfermanager.Client
	creds    aws.CredentialsProvider
	bucket   string
	prefix   string // "" or ending in "/"
	region   string
	endpoint string // for messages: the URL, or "AWS S3 (region)"
	cfg      S3Config
}

// NewS3 returns an S3 store for cfg. It loads the AWS configuration but does
// not contact the server; call Check for that.
func NewS3(ctx context.Context, cfg S3Config) (*S3, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	opts := []func(*config.LoadOptions) error{
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) { o.MaxAttempts = cfg.MaxAttempts })
		}),
		// Some S3-compatible servers reject the CRC32 trailers that recent SDKs
		// add by default.
		config.WithRequestChecksumCalculation(aws.RequestChecksumCalculationWhenRequired),
		config.WithResponseChecksumValidation(aws.ResponseChecksumValidationWhenRequired),
		config.WithHTTPClient(httpClient(cfg)),
	}
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.AccessKeyID != "" && cfg.SecretAccessKey != "" {
		opts = append(opts, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(cfg.AccessKeyID, cfg.SecretAccessKey, cfg.SessionToken)))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("s3: load AWS configuration: %w", err)
	}
	if awsCfg.Region == "" {
		if cfg.Endpoint == "" {
			return nil, fmt.Errorf("s3: %w: no region: set AWS_REGION or the region option", ErrInvalidConfig)
		}
		awsCfg.Region = DefaultEndpointRegion
	}
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
			o.UsePathStyle = true
		}
	})
	tm := transfermanager.New(client, func(o *transfermanager.Options) {
		o.PartSizeBytes = cfg.PartSize
		o.Concurrency = cfg.Concurrency
		// Put already chose multipart; the transfer manager only needs to
		// keep objects smaller than one part in one request.
		o.MultipartUploadThreshold = cfg.PartSize
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		// Abort a failed multipart upload even when ctx is cancelled, so no
		// parts are left to be billed.
		o.FailTimeout = 30 * time.Second
	})
	s := &S3{
		client:   client,
		tm:       tm,
		creds:    awsCfg.Credentials,
		bucket:   cfg.Bucket,
		region:   awsCfg.Region,
		endpoint: cfg.Endpoint,
		cfg:      cfg,
	}
	if cfg.Prefix != "" {
		s.prefix = cfg.Prefix + "/"
	}
	if s.endpoint == "" {
		s.endpoint = "AWS S3 (" + s.region + ")"
	}
	return s, nil
}

// httpClient is the SDK's default HTTP client with cfg's timeouts. The
// SDK's read timeout also ends an upload the server stopped reading: the
// connection's reader waits for the response meanwhile, and its timing out
// closes the connection under the blocked writer.
func httpClient(cfg S3Config) *awshttp.BuildableClient {
	return awshttp.NewBuildableClient().
		WithDialerOptions(func(d *net.Dialer) { d.Timeout = cfg.ConnectTimeout }).
		WithTransportOptions(func(tr *http.Transport) {
			tr.TLSHandshakeTimeout = cfg.ConnectTimeout
			tr.ResponseHeaderTimeout = cfg.IOTimeout
		}).
		WithReadTimeout(cfg.IOTimeout) // per read, reset by every byte received
}

// String returns the store as s3://bucket/prefix, for logs.
func (s *S3) String() string {
	if s.prefix == "" {
		return "s3://" + s.bucket
	}
	return "s3://" + s.bucket + "/" + strings.TrimSuffix(s.prefix, "/")
}

// Put uploads body to key: below MultipartThreshold with one PutObject,
// otherwise as a multipart upload of PartSize parts, Concurrency at a time.
// body is read from its start.
func (s *S3) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	if err := checkKey(key); err != nil {
		return fmt.Errorf("s3: put %q: %w", key, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("s3: put %s: %w", key, context.Cause(ctx))
	}
	end, err := body.Seek(0, io.SeekEnd)
	if err == nil && end != size {
		err = fmt.Errorf("%w: body has %d bytes, size is %d", ErrSizeMismatch, end, size)
	}
	if err == nil {
		_, err = body.Seek(0, io.SeekStart)
	}
	if err != nil {
		return fmt.Errorf("s3: put %s: %w", key, err)
	}
	if size < s.cfg.MultipartThreshold {
		_, err = s.client.PutObject(ctx, &s3.PutObjectInput{
			Bucket:        aws.String(s.bucket),
			Key:           aws.String(s.prefix + key),
			Body:          body,
			ContentLength: aws.Int64(size),
			ContentType:   aws.String(contentType(key)),

			ServerSideEncryption: types.ServerSideEncryption(s.cfg.SSE),
			SSEKMSKeyId:          optional(s.cfg.SSEKMSKeyID),
		})
	} else {
		_, err = s.tm.UploadObject(ctx, &transfermanager.UploadObjectInput{
			Bucket:        aws.String(s.bucket),
			Key:           aws.String(s.prefix + key),
			Body:          body,
			ContentLength: aws.Int64(size),
			ContentType:   aws.String(contentType(key)),

			ServerSideEncryption: tmtypes.ServerSideEncryption(s.cfg.SSE),
			SSEKMSKeyID:          optional(s.cfg.SSEKMSKeyID),
		})
	}
	if err != nil {
		return fmt.Errorf("s3: put %s: %w", key, s.cause(ctx, err))
	}
	return nil
}

// Get opens the object at key; an absent key returns an error wrapping
// fs.ErrNotExist.
func (s *S3) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := checkKey(key); err != nil {
		return nil, fmt.Errorf("s3: get %q: %w", key, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("s3: get %s: %w", key, context.Cause(ctx))
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(s.prefix + key),
	})
	if isNoSuchKey(err) {
		return nil, fmt.Errorf("s3: get %s: %w", key, fs.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("s3: get %s: %w", key, s.cause(ctx, err))
	}
	return out.Body, nil
}

// List calls fn for every object under prefix, in S3's ascending key order,
// with keys relative to the store's prefix. Zero-byte "directory marker"
// objects (keys ending in "/") are not objects of the lake and are skipped.
func (s *S3) List(ctx context.Context, prefix string, fn func(Object) error) error {
	if err := checkPrefix(prefix); err != nil {
		return fmt.Errorf("s3: list %q: %w", prefix, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("s3: list %s: %w", prefix, context.Cause(ctx))
	}
	pages := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{
		Bucket: aws.String(s.bucket),
		Prefix: aws.String(s.prefix + prefix),
	})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("s3: list %s: %w", prefix, s.cause(ctx, err))
		}
		for _, o := range page.Contents {
			key, ok := strings.CutPrefix(aws.ToString(o.Key), s.prefix)
			if !ok || key == "" || strings.HasSuffix(key, "/") {
				continue
			}
			if err := fn(Object{Key: key, Size: aws.ToInt64(o.Size)}); err != nil {
				return err
			}
		}
	}
	return nil
}

// Delete removes the object at key; an absent key is not an error.
func (s *S3) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return fmt.Errorf("s3: delete %q: %w", key, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("s3: delete %s: %w", key, context.Cause(ctx))
	}
	_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{
		Bucket: aws.String(s.bucket),
		Key:    aws.String(s.prefix + key),
	})
	if err != nil && !isNoSuchKey(err) {
		return fmt.Errorf("s3: delete %s: %w", key, s.cause(ctx, err))
	}
	return nil
}

// checkAttempts bounds the attempts of Check's single request: a start-up
// check should answer in seconds, not after a full retry schedule.
const checkAttempts = 2

// Check verifies that the credentials resolve and that the bucket exists and
// accepts them (HeadBucket, at most two attempts). Its error is one line
// naming the problem and wraps ErrNoCredentials, ErrBucketNotFound,
// ErrAccessDenied, ErrUnreachable or (bucket in another region)
// ErrInvalidConfig when it is one of those.
func (s *S3) Check(ctx context.Context) error {
	if _, err := s.creds.Retrieve(ctx); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("s3: check %s: %w", s, context.Cause(ctx))
		}
		return &checkError{
			kind: ErrNoCredentials,
			msg:  "s3: no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile or a role (" + err.Error() + ")",
			err:  err,
		}
	}
	fewerAttempts := func(o *s3.Options) { o.RetryMaxAttempts = checkAttempts }
	_, err := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(s.bucket)}, fewerAttempts)
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("s3: check %s: %w", s, context.Cause(ctx))
	}
	var sendErr *smithyhttp.RequestSendError
	if errors.As(err, &sendErr) {
		reason := sendErr.Err
		var netErr *net.OpError
		var dnsErr *net.DNSError
		switch {
		case errors.As(err, &dnsErr):
			reason = dnsErr
		case errors.As(err, &netErr):
			reason = netErr
		}
		return &checkError{kind: ErrUnreachable, err: err,
			msg: fmt.Sprintf("s3: endpoint %s unreachable: %v", s.endpoint, reason)}
	}
	// A HEAD response has no body, so no error code: 404 may mean "no such
	// bucket" or (on some servers) "no such access key". A request with a
	// body tells them apart.
	if status := httpStatus(err); status == http.StatusNotFound || status == http.StatusForbidden || status == http.StatusBadRequest {
		_, perr := s.client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{
			Bucket:  aws.String(s.bucket),
			Prefix:  aws.String(s.prefix),
			MaxKeys: aws.Int32(1),
		}, fewerAttempts)
		if perr == nil && status == http.StatusForbidden {
			// A least-privilege policy grants s3:ListBucket only with an
			// s3:prefix condition, which HeadBucket cannot meet: the bucket
			// exists and our prefix is readable, which is what we check.
			return nil
		}
		if apiCode(perr) != "" && httpStatus(perr) != 0 {
			err = perr
		}
	}
	if ctx.Err() != nil {
		return fmt.Errorf("s3: check %s: %w", s, context.Cause(ctx))
	}
	return s.classify(err)
}

// classify turns a failed bucket check into a one-line error.
func (s *S3) classify(err error) error {
	fail := func(kind error, format string, args ...any) error {
		return &checkError{kind: kind, msg: "s3: " + fmt.Sprintf(format, args...), err: err}
	}
	status, code := httpStatus(err), apiCode(err)
	detail := fmt.Sprintf("HTTP %d", status)
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorMessage() != "" {
		detail = code + ": " + apiErr.ErrorMessage()
	}
	switch code {
	case "NoSuchBucket":
		return fail(ErrBucketNotFound, "bucket %s does not exist at %s", s.bucket, s.endpoint)
	case "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken",
		"XAdminUserNotFound": // versitygw's code for an unknown access key
		return fail(ErrAccessDenied, "credentials rejected by %s for bucket %s (%s)", s.endpoint, s.bucket, detail)
	case "AuthorizationHeaderMalformed", "PermanentRedirect":
		return fail(ErrInvalidConfig, "bucket %s is not in region %s (%s)", s.bucket, s.region, detail)
	}
	switch status {
	case http.StatusNotFound:
		return fail(ErrBucketNotFound, "bucket %s does not exist at %s", s.bucket, s.endpoint)
	case http.StatusUnauthorized, http.StatusForbidden:
		return fail(ErrAccessDenied, "credentials rejected by %s for bucket %s (%s): check the access key, the secret and the bucket's policy",
			s.endpoint, s.bucket, detail)
	case http.StatusMovedPermanently:
		if r := bucketRegion(err); r != "" {
			return fail(ErrInvalidConfig, "bucket %s is in region %s, not %s", s.bucket, r, s.region)
		}
	}
	return fmt.Errorf("s3: check %s at %s: %w", s, s.endpoint, err)
}

// checkError is Check's one-line error. Its message leaves out the SDK's
// verbose chain, which stays reachable through Unwrap.
type checkError struct {
	kind error
	msg  string
	err  error
}

func (e *checkError) Error() string   { return e.msg }
func (e *checkError) Unwrap() []error { return []error{e.kind, e.err} }

// cause returns ctx's cause when ctx is done (cancellation is never reported
// as an S3 failure), and err otherwise.
func (s *S3) cause(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return err
}

// isNoSuchKey reports whether err says that the object is absent (and not
// that the bucket is).
func isNoSuchKey(err error) bool {
	if err == nil {
		return false
	}
	var nsk *types.NoSuchKey
	if errors.As(err, &nsk) {
		return true
	}
	switch apiCode(err) {
	case "NoSuchKey", "NotFound":
		return true
	case "":
		// No code to go by (a HEAD response, a terse server).
		return httpStatus(err) == http.StatusNotFound
	}
	// Any other code, NoSuchBucket and unknown access keys included, is
	// not an absent object, whatever the status.
	return false
}

func apiCode(err error) string {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode()
	}
	return ""
}

func httpStatus(err error) int {
	var respErr *awshttp.ResponseError
	if errors.As(err, &respErr) && respErr.Response != nil {
		return respErr.Response.StatusCode
	}
	return 0
}

func bucketRegion(err error) string {
	var respErr *awshttp.ResponseError
	if errors.As(err, &respErr) && respErr.Response != nil {
		return respErr.Response.Header.Get("X-Amz-Bucket-Region")
	}
	return ""
}

// contentType names the media type of the lake's files by extension.
func contentType(key string) string {
	switch path.Ext(key) {
	case ".parquet":
		return "application/vnd.apache.parquet"
	case ".json":
		return "application/json"
	}
	return "application/octet-stream"
}

// optional is nil for "", so that an unset option sends no header.
func optional(s string) *string {
	if s == "" {
		return nil
	}
	return aws.String(s)
}
