package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// metrics holds the figures walcake exposes in the Prometheus text format
// (version 0.0.4): over HTTP (--metrics-addr) while a command runs, and as a
// node_exporter textfile (--metrics-file) when it ends. It is small on
// purpose: gauges and counters without client-side state, written by one
// command, read by scrapes.
type metrics struct {
	mu       sync.Mutex
	families map[string]*family
}

type family struct {
	name, help, kind string
	samples          map[string]float64 // by rendered label set, "" for none
}

func newMetrics() *metrics { return &metrics{families: map[string]*family{}} }

// gauge sets a gauge; labels are name/value pairs.
func (m *metrics) gauge(name, help string, v float64, labels ...string) {
	m.set(name, help, "gauge", v, labels)
}

// counter sets a counter to a run's running total (walcake's figures are
// totals since the command started, so a new run is a counter reset).
func (m *metrics) counter(name, help string, v float64, labels ...string) {
	m.set(name, help, "counter", v, labels)
}

// inc adds one to a counter.
func (m *metrics) inc(name, help string, labels ...string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f := m.family(name, help, "counter")
	f.samples[renderLabels(labels)]++
}

// drop removes a gauge's samples (a figure that is unknown now).
func (m *metrics) drop(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.families, name)
}

func (m *metrics) set(name, help, kind string, v float64, labels []string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.family(name, help, kind).samples[renderLabels(labels)] = v
}

func (m *metrics) family(name, help, kind string) *family {
	f := m.families[name]
	if f == nil {
		f = &family{name: name, help: help, kind: kind, samples: map[string]float64{}}
		m.families[name] = f
	}
	return f
}

// value returns a sample, for tests and summaries.
func (m *metrics) value(name string, labels ...string) (float64, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f := m.families[name]
	if f == nil {
		return 0, false
	}
	v, ok := f.samples[renderLabels(labels)]
	return v, ok
}

// WriteTo writes every family in the text exposition format, sorted by name
// and label set so that output is stable.
func (m *metrics) WriteTo(w io.Writer) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	names := make([]string, 0, len(m.families))
	for n := range m.families {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		f := m.families[n]
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", f.name, escapeHelp(f.help), f.name, f.kind)
		keys := make([]string, 0, len(f.samples))
		for k := range f.samples {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, "%s%s %s\n", f.name, k, formatValue(f.samples[k]))
		}
	}
	n, err := io.WriteString(w, b.String())
	return int64(n), err
}

func renderLabels(kv []string) string {
	if len(kv) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteByte('{')
	for i := 0; i+1 < len(kv); i += 2 {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(kv[i])
		b.WriteString(`="`)
		b.WriteString(escapeLabel(kv[i+1]))
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

func escapeLabel(s string) string {
	return strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`).Replace(s)
}

func escapeHelp(s string) string {
	return strings.NewReplacer(`\`, `\\`, "\n", `\n`).Replace(s)
}

func formatValue(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// writeFile writes the metrics to path atomically (a temporary file in the
// same directory, renamed), as node_exporter's textfile collector requires:
// it must never read half a file. The temporary name does not end in .prom,
// so the collector ignores it.
func (m *metrics) writeFile(path string) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("metrics: write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	w := bufio.NewWriter(f)
	_, err = m.WriteTo(w)
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		// Readable by node_exporter, which often runs as another user.
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return fmt.Errorf("metrics: write %s: %w", path, err)
	}
	return nil
}

// metricsServer serves /metrics (and /healthz) while a command runs.
type metricsServer struct {
	srv  *http.Server
	addr string
	done chan struct{}
}

// serveMetrics listens on addr (host:port; port 0 picks a free one, logged)
// and serves m until shutdown is called.
func serveMetrics(addr string, m *metrics, log *slog.Logger) (*metricsServer, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		_, _ = m.WriteTo(w)
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	s := &metricsServer{
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		addr: l.Addr().String(),
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	log.Info("serving metrics", "addr", s.addr, "path", "/metrics")
	return s, nil
}

func (s *metricsServer) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		_ = s.srv.Close()
	}
	<-s.done
}
