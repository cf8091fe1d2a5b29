package upload_test

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/wal-cake/wal-cake/scripts/testenv"
	"github.com/wal-cake/wal-cake/upload"
)

// TestS3Faults puts objects through a proxy that fails requests: transient
// faults are retried until the object is stored whole, and a fault that
// outlasts MaxAttempts fails the Put after exactly MaxAttempts requests.
func TestS3Faults(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		rule     testenv.FaultRule
		size     int
		wantErr  bool
		attempts int // MaxAttempts; 0: the default
	}{
		{name: "500 twice", rule: testenv.FaultRule{Faults: []testenv.Fault{testenv.InternalError}, Count: 2}, size: 1000},
		{name: "SlowDown twice", rule: testenv.FaultRule{Faults: []testenv.Fault{testenv.SlowDown}, Count: 2}, size: 1000},
		// A hung server becomes a timed-out attempt (IOTimeout), retried.
		{name: "hang once", rule: testenv.FaultRule{Faults: []testenv.Fault{testenv.Hang}, Count: 1}, size: 1000},
		{name: "hang once, multipart", rule: testenv.FaultRule{Faults: []testenv.Fault{testenv.Hang}, Methods: []string{"PUT"}, Skip: 1, Count: 1}, size: 11 << 20},
		// A server that stops reading an upload part.
		{name: "stall once, multipart", rule: testenv.FaultRule{Faults: []testenv.Fault{testenv.Stall}, Methods: []string{"PUT"}, Skip: 1, Count: 1}, size: 11 << 20},
		// The server stored the object but the answer was lost: the retry
		// stores it again.
		{name: "lost response", rule: testenv.FaultRule{Faults: []testenv.Fault{testenv.LostResponse}, Count: 1}, size: 1000},
		// Connections refused for a moment (the listener closed and
		// reopened); the retries outlast it.
		{name: "refused", rule: testenv.FaultRule{Faults: []testenv.Fault{testenv.Refuse}, Count: 1, RefuseFor: 200 * time.Millisecond}, size: 1000, attempts: 30},
		{name: "500 always", rule: testenv.FaultRule{Faults: []testenv.Fault{testenv.InternalError}}, size: 1000, wantErr: true, attempts: 3},
		{name: "hang always", rule: testenv.FaultRule{Faults: []testenv.Fault{testenv.Hang}}, size: 1000, wantErr: true, attempts: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := testenv.S3(t)
			proxy := testenv.NewFaultProxy(t, env)
			cfg := s3Config(env)
			cfg.Endpoint = proxy.URL
			cfg.IOTimeout = 500 * time.Millisecond
			cfg.MaxAttempts = tt.attempts
			s := newS3(t, cfg)
			direct := newS3(t, s3Config(env))

			body := make([]byte, tt.size)
			for i := range body {
				body[i] = byte(i * 13)
			}
			key := "faults/" + strings.ReplaceAll(tt.name, " ", "-")
			proxy.Set(tt.rule)
			err := s.Put(t.Context(), key, bytes.NewReader(body), int64(len(body)))
			st := proxy.Stats()
			proxy.Clear()
			t.Logf("%d requests, %d failed: %v", st.Requests, st.Total(), st.Injected)
			if tt.wantErr {
				if err == nil {
					t.Fatal("Put succeeded through a proxy that fails every request")
				}
				if st.Requests != tt.attempts {
					t.Errorf("%d requests for one Put with MaxAttempts %d", st.Requests, tt.attempts)
				}
				if _, err := direct.Get(t.Context(), key); err == nil {
					t.Errorf("object stored although every Put failed")
				}
				return
			}
			if err != nil {
				t.Fatalf("Put through %v: %v", tt.rule.Faults, err)
			}
			if st.Total() == 0 {
				t.Fatal("the proxy injected no fault; the test is not testing")
			}
			r, err := direct.Get(t.Context(), key)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(r)
			r.Close()
			if err != nil || !bytes.Equal(got, body) {
				t.Errorf("stored %d bytes (err %v), want the %d bytes put", len(got), err, len(body))
			}
		})
	}
}

// TestS3ConfigTimeouts checks the validation of the timeouts.
func TestS3ConfigTimeouts(t *testing.T) {
	cfg := upload.S3Config{Bucket: "b", IOTimeout: -time.Second}
	if err := cfg.Validate(); !errors.Is(err, upload.ErrInvalidConfig) {
		t.Errorf("negative IOTimeout: %v, want ErrInvalidConfig", err)
	}
	cfg = upload.S3Config{Bucket: "b", ConnectTimeout: time.Second, IOTimeout: time.Minute}
	if err := cfg.Validate(); err != nil {
		t.Errorf("valid timeouts: %v", err)
	}
}
