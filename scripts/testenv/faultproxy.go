package testenv

import (
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// FaultProxy is an HTTP reverse proxy on 127.0.0.1 in front of an
// S3-protocol server, whose behaviour a test switches while clients use it:
// pass requests through, fail some with 500 InternalError or 503 SlowDown
// (proper S3 XML error bodies), hang them past the client's timeout, answer
// 500 after the server has applied them (a lost response), or refuse
// connections (the listener closed and later reopened on the same port).
//
// Requests are signed for the proxy's host:port, and the proxy keeps that
// Host header when it forwards them, so the server's signature check passes.
// A FaultProxy is safe for concurrent use.
type FaultProxy struct {
	// URL is the proxy's endpoint, http://127.0.0.1:PORT; it stays the same
	// across Refuse and Accept.
	URL string

	addr  string
	proxy *httputil.ReverseProxy
	// quiet swallows complaints about clients that went away (killed
	// processes, timeouts): they are the point of the exercise.
	quiet *log.Logger

	mu      sync.Mutex
	srv     *http.Server // nil while refusing
	served  chan struct{}
	rule    FaultRule
	matched int // requests the current rule matched
	rng     *rand.Rand
	release chan struct{} // closed to let hung requests go
	closed  bool
	reopen  *time.Timer // pending Accept of a RefuseFor
	stats   FaultStats
}

// Fault is a way for the proxy to fail a request.
type Fault int

const (
	// Pass forwards the request unchanged.
	Pass Fault = iota
	// InternalError answers 500 InternalError without forwarding.
	InternalError
	// SlowDown answers 503 SlowDown without forwarding.
	SlowDown
	// Hang reads the request, never forwards it, and answers nothing until
	// the client gives up (its timeout) or the rule is cleared.
	Hang
	// Stall reads nothing of the request and answers nothing, like a
	// server that stopped: an upload's writes block once the connection's
	// buffers are full.
	Stall
	// LostResponse forwards the request, so the server applies it, then
	// answers 500 InternalError in place of the server's response.
	LostResponse
	// Refuse closes the proxy's listener and every open connection (the
	// matching request's included) and reopens the listener on the same
	// port after FaultRule.RefuseFor; until then connections are refused.
	Refuse
)

func (f Fault) String() string {
	switch f {
	case Pass:
		return "pass"
	case InternalError:
		return "500 InternalError"
	case SlowDown:
		return "503 SlowDown"
	case Hang:
		return "hang"
	case Stall:
		return "stall"
	case LostResponse:
		return "lost response"
	case Refuse:
		return "refuse connections"
	}
	return fmt.Sprintf("Fault(%d)", int(f))
}

// FaultRule says which requests fail and how. The zero rule passes
// everything.
type FaultRule struct {
	// Faults are the ways to fail a chosen request: one of them is picked at
	// random (seeded) for each; one fault means that fault always.
	Faults []Fault
	// Methods limits the rule to requests of these HTTP methods; empty means
	// every method.
	Methods []string
	// Skip lets the first Skip matching requests through.
	Skip int
	// Count fails this many matching requests after the skipped ones, then
	// passes; 0 means no limit.
	Count int
	// Fraction, when in (0, 1), fails each matching request with this
	// probability (seeded) instead of every one.
	Fraction float64
	// Seed seeds the choices of Fraction and Faults.
	Seed uint64
	// RefuseFor is how long Refuse keeps the listener closed; default 500 ms.
	RefuseFor time.Duration
}

// FaultStats counts what the proxy saw and did.
type FaultStats struct {
	Requests int           // requests received
	Injected map[Fault]int // requests failed, by fault
}

// Total is the number of requests failed.
func (s FaultStats) Total() int {
	n := 0
	for _, v := range s.Injected {
		n += v
	}
	return n
}

// StartFaultProxy starts a proxy to target (an http:// endpoint) on a free
// loopback port, passing everything through. Close stops it.
func StartFaultProxy(target string) (*FaultProxy, error) {
	u, err := url.Parse(target)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("testenv: fault proxy: target %q is not a URL", target)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("testenv: fault proxy: %w", err)
	}
	p := &FaultProxy{
		URL:     "http://" + ln.Addr().String(),
		addr:    ln.Addr().String(),
		proxy:   httputil.NewSingleHostReverseProxy(u), // keeps the signed Host header
		release: make(chan struct{}),
		stats:   FaultStats{Injected: map[Fault]int{}},
		quiet:   log.New(io.Discard, "", 0),
	}
	p.proxy.ErrorLog = p.quiet
	p.proxy.ErrorHandler = func(w http.ResponseWriter, r *http.Request, err error) {
		// The client went away (killed, timed out) or the server did.
		w.WriteHeader(http.StatusBadGateway)
	}
	p.mu.Lock()
	p.serveLocked(ln)
	p.mu.Unlock()
	return p, nil
}

// NewFaultProxy starts a proxy in front of s3's server for t, closed when t
// ends.
func NewFaultProxy(t testing.TB, s3 *S3Env) *FaultProxy {
	t.Helper()
	p, err := StartFaultProxy(s3.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func (p *FaultProxy) serveLocked(ln net.Listener) {
	srv := &http.Server{
		Handler:           http.HandlerFunc(p.serve),
		ReadHeaderTimeout: time.Minute,
		ErrorLog:          p.quiet,
	}
	served := make(chan struct{})
	p.srv, p.served = srv, served
	go func() {
		_ = srv.Serve(ln)
		close(served)
	}()
}

// Set replaces the rule (and restarts its counts). Requests hanging under
// the old rule stay hung until Clear or Close.
func (p *FaultProxy) Set(r FaultRule) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rule = r
	p.matched = 0
	p.rng = rand.New(rand.NewPCG(r.Seed, r.Seed^0x9e3779b97f4a7c15))
}

// Clear passes everything from now on, lets hung requests go (they then
// fail with 503) and reopens the listener if Refuse closed it.
func (p *FaultProxy) Clear() {
	p.Set(FaultRule{})
	p.mu.Lock()
	close(p.release)
	p.release = make(chan struct{})
	p.mu.Unlock()
	_ = p.Accept()
}

// Stats returns the counts so far.
func (p *FaultProxy) Stats() FaultStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := FaultStats{Requests: p.stats.Requests, Injected: map[Fault]int{}}
	for k, v := range p.stats.Injected {
		s.Injected[k] = v
	}
	return s
}

// ResetStats zeroes the counts.
func (p *FaultProxy) ResetStats() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stats = FaultStats{Injected: map[Fault]int{}}
}

// RefuseNow closes the listener and every connection, so that new
// connections are refused until Accept.
func (p *FaultProxy) RefuseNow() {
	p.mu.Lock()
	srv, served := p.srv, p.served
	p.srv = nil
	if p.reopen != nil {
		p.reopen.Stop()
		p.reopen = nil
	}
	p.mu.Unlock()
	if srv != nil {
		_ = srv.Close() // listener and connections; handlers may still run
		<-served
	}
}

// Accept reopens the listener on the same port after Refuse or RefuseNow.
// It does nothing when the proxy is listening or closed.
func (p *FaultProxy) Accept() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.srv != nil {
		return nil
	}
	var ln net.Listener
	var err error
	// The port was ours a moment ago; another process taking it in between
	// is unlikely but possible.
	for attempt := 0; attempt < 50; attempt++ {
		if ln, err = net.Listen("tcp", p.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("testenv: fault proxy: reopen %s: %w", p.addr, err)
	}
	p.serveLocked(ln)
	return nil
}

// Close stops the proxy and lets hung requests go.
func (p *FaultProxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	close(p.release)
	p.release = make(chan struct{})
	p.mu.Unlock()
	p.RefuseNow()
}

// choose decides the fault for one request.
func (p *FaultProxy) choose(r *http.Request) (Fault, FaultRule, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stats.Requests++
	rule := p.rule
	if len(rule.Faults) == 0 {
		return Pass, rule, p.release
	}
	if len(rule.Methods) > 0 {
		match := false
		for _, m := range rule.Methods {
			match = match || strings.EqualFold(m, r.Method)
		}
		if !match {
			return Pass, rule, p.release
		}
	}
	p.matched++
	if p.matched <= rule.Skip || rule.Count > 0 && p.matched > rule.Skip+rule.Count {
		return Pass, rule, p.release
	}
	if rule.Fraction > 0 && rule.Fraction < 1 && p.rng.Float64() >= rule.Fraction {
		return Pass, rule, p.release
	}
	f := rule.Faults[0]
	if len(rule.Faults) > 1 {
		f = rule.Faults[p.rng.IntN(len(rule.Faults))]
	}
	if f != Pass {
		p.stats.Injected[f]++
	}
	return f, rule, p.release
}

func (p *FaultProxy) serve(w http.ResponseWriter, r *http.Request) {
	f, rule, release := p.choose(r)
	switch f {
	case Pass:
		p.proxy.ServeHTTP(w, r)
	case InternalError:
		drain(r)
		s3Error(w, r, http.StatusInternalServerError, "InternalError", "We encountered an internal error. Please try again.")
	case SlowDown:
		drain(r)
		s3Error(w, r, http.StatusServiceUnavailable, "SlowDown", "Please reduce your request rate.")
	case Hang, Stall:
		if f == Hang {
			drain(r)
		}
		select {
		case <-r.Context().Done(): // the client gave up
		case <-release:
			s3Error(w, r, http.StatusServiceUnavailable, "ServiceUnavailable", "Released from an injected hang.")
		}
	case LostResponse:
		p.proxy.ServeHTTP(&discardWriter{header: http.Header{}}, r)
		s3Error(w, r, http.StatusInternalServerError, "InternalError", "We encountered an internal error. Please try again.")
	case Refuse:
		d := rule.RefuseFor
		if d <= 0 {
			d = 500 * time.Millisecond
		}
		// Close from another goroutine: Server.Close waits for nothing, but
		// this handler's connection is among those it closes.
		go p.refuseFor(d)
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				conn.Close()
				return
			}
		}
		panic(http.ErrAbortHandler) // drops the connection without a response
	}
}

// refuseFor closes the listener and connections, then reopens after d.
func (p *FaultProxy) refuseFor(d time.Duration) {
	p.RefuseNow()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.reopen = time.AfterFunc(d, func() { _ = p.Accept() })
}

// drain reads the request body, as a server does before it answers.
func drain(r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
}

// s3Error writes an S3 error response; HEAD responses carry no body.
func s3Error(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/xml")
	w.Header().Set("x-amz-request-id", "FAULTPROXY")
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return
	}
	_, _ = fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>`+"\n"+
		`<Error><Code>%s</Code><Message>%s</Message><Resource>%s</Resource><RequestId>FAULTPROXY</RequestId></Error>`,
		code, msg, xmlEscape(r.URL.Path))
}

func xmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&apos;").Replace(s)
}

// discardWriter swallows a response the proxy pretends was lost.
type discardWriter struct{ header http.Header }

func (d *discardWriter) Header() http.Header         { return d.header }
func (d *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (d *discardWriter) WriteHeader(int)             {}
