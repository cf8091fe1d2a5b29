package main

import (
	"bytes"
	"io"
	"net/url"
	"os"
	"regexp"
	"sort"
	"sync"

	"github.com/jackc/pgx/v5/pgconn"
)

// minSecretLen is the shortest secret the redactor replaces: shorter strings
// would garble ordinary words of every line.
const minSecretLen = 4

const redacted = "[REDACTED]"

// secrets is the set of strings that must never be written out: the
// PostgreSQL password (and the whole connection string), the AWS keys and
// session token. It is filled once the flags are parsed.
type secrets struct {
	mu   sync.RWMutex
	list [][]byte // longest first, so that a secret containing another goes whole
}

func (s *secrets) add(values ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, v := range values {
		if len(v) < minSecretLen {
			continue
		}
		for _, form := range []string{v, url.QueryEscape(v), url.PathEscape(v), url.UserPassword("x", v).String()[2:]} {
			if len(form) >= minSecretLen && !s.has(form) {
				s.list = append(s.list, []byte(form))
			}
		}
	}
	sort.Slice(s.list, func(i, j int) bool { return len(s.list[i]) > len(s.list[j]) })
}

func (s *secrets) has(v string) bool {
	for _, b := range s.list {
		if string(b) == v {
			return true
		}
	}
	return false
}

// redact returns p with every secret replaced.
func (s *secrets) redact(p []byte) []byte {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, secret := range s.list {
		if bytes.Contains(p, secret) {
			p = bytes.ReplaceAll(p, secret, []byte(redacted))
		}
	}
	return p
}

// redactor writes to w with every secret replaced. Each Write is redacted on
// its own: slog handlers and fmt.Fprint* write a whole line at a time.
type redactor struct {
	mu      sync.Mutex
	w       io.Writer
	secrets *secrets
}

func (r *redactor) Write(p []byte) (int, error) {
	out := r.secrets.redact(p)
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, err := r.w.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

// connSecrets returns the secrets a PostgreSQL connection string carries:
// the string itself and its password, found even when the string does not
// parse.
func connSecrets(conn string) []string {
	out := []string{conn, os.Getenv("PGPASSWORD")}
	if cfg, err := pgconn.ParseConfig(conn); err == nil {
		// Fallback hosts share the config's password.
		return append(out, cfg.Password)
	}
	if u, err := url.Parse(conn); err == nil && u.User != nil {
		if p, ok := u.User.Password(); ok {
			out = append(out, p)
		}
	}
	for _, m := range dsnPassword.FindAllStringSubmatch(conn, -1) {
		out = append(out, m[1], m[2])
	}
	// A URL that does not parse: whatever sits between "user:" and "@".
	for _, m := range urlPassword.FindAllStringSubmatch(conn, -1) {
		out = append(out, m[1])
	}
	return out
}

var (
	dsnPassword = regexp.MustCompile(`password\s*=\s*(?:'((?:[^'\\]|\\.)*)'|(\S+))`)
	urlPassword = regexp.MustCompile(`^[a-z]+://[^:/@]*:(.+)@`)
)
