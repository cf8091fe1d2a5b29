package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wal-cake/wal-cake/scripts/testenv"
)

// secureServer is a PostgreSQL server of the test's own with TLS on (a
// self-signed CA and a server certificate for 127.0.0.1 and localhost) and
// password (SCRAM) authentication for every role but postgres, over TLS
// only.
type secureServer struct {
	srv     *testenv.PostgresServer
	rootCA  string // path of the CA certificate clients verify against
	otherCA string // a CA that did not sign the server's certificate
}

func startSecureServer(t *testing.T) *secureServer {
	t.Helper()
	dir, err := os.MkdirTemp(serverReachableTempBase(), "walcake-tls-*")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// The server runs as the postgres user when we are root: it must enter
	// the directory and own its key (mode 0600).
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	caCert, caKey := newCA(t, "walcake test CA")
	otherCert, _ := newCA(t, "some other CA")
	serverCert, serverKey := newServerCert(t, caCert, caKey)
	files := map[string][]byte{
		"root.crt":   pemBlock("CERTIFICATE", caCert.Raw),
		"other.crt":  pemBlock("CERTIFICATE", otherCert.Raw),
		"server.crt": pemBlock("CERTIFICATE", serverCert),
		"server.key": serverKey,
		"pg_hba.conf": []byte("" +
			"local     all         all                      trust\n" +
			"host      all         postgres   127.0.0.1/32  trust\n" +
			"hostssl   all         all        127.0.0.1/32  scram-sha-256\n" +
			"hostnossl all         all        127.0.0.1/32  reject\n"),
	}
	uid, gid := -1, -1
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatal(err)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
	}
	for name, b := range files {
		mode := os.FileMode(0o644)
		if name == "server.key" {
			mode = 0o600
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, b, mode); err != nil {
			t.Fatal(err)
		}
		if uid >= 0 {
			if err := os.Chown(path, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
	}
	srv, err := testenv.StartPostgres(context.Background(), testenv.PostgresOptions{ExtraConfig: map[string]string{
		"ssl":           "on",
		"ssl_cert_file": filepath.Join(dir, "server.crt"),
		"ssl_key_file":  filepath.Join(dir, "server.key"),
		"hba_file":      filepath.Join(dir, "pg_hba.conf"),
	}})
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	return &secureServer{srv: srv, rootCA: filepath.Join(dir, "root.crt"), otherCA: filepath.Join(dir, "other.crt")}
}

// serverReachableTempBase is os.TempDir(), or /tmp when we are root and the
// postgres user could not enter it (a TMPDIR under /root): the server reads
// its certificate and key from there.
func serverReachableTempBase() string {
	base := os.TempDir()
	if os.Geteuid() != 0 {
		return base
	}
	for d := base; d != "/" && d != "."; d = filepath.Dir(d) {
		if fi, err := os.Stat(d); err != nil || fi.Mode().Perm()&0o001 == 0 {
			return "/tmp"
		}
	}
	return base
}

// url is a connection URL for role with password over TLS with sslmode.
func (s *secureServer) url(role, password, db, sslmode, rootCert string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(role, password), Host: "127.0.0.1:" + strconv.Itoa(s.srv.Port), Path: "/" + db}
	q := url.Values{"sslmode": {sslmode}}
	if rootCert != "" {
		q.Set("sslrootcert", rootCert)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

func newCA(t *testing.T, name string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// newServerCert returns a certificate for 127.0.0.1 and localhost signed by
// the CA, and its key in PEM.
func newServerCert(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey) (der, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err = x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return der, pemBlock("EC PRIVATE KEY", kb)
}

func pemBlock(typ string, b []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b})
}

const securitySchema = `
CREATE TABLE accounts (id bigint PRIMARY KEY, name text, balance numeric(12,2));
CREATE TABLE orders (id int PRIMARY KEY, account bigint, total numeric(10,2));
CREATE TABLE secrets_table (id int PRIMARY KEY, v text);
`

var securityTables = []lakeTable{
	{table: "public.accounts", pgTable: "accounts", key: []string{"id"},
		duckCols: "CAST(id AS VARCHAR), name, CAST(balance AS VARCHAR)", pgCols: "id::text, name, balance::text",
		orderBy: "id", pgOrderBy: "t.id"},
	{table: "public.orders", pgTable: "orders", key: []string{"id"},
		duckCols: "CAST(id AS VARCHAR), CAST(account AS VARCHAR), CAST(total AS VARCHAR)", pgCols: "id::text, account::text, total::text",
		orderBy: "id", pgOrderBy: "t.id"},
}

func securityWorkload(e *env) {
	e.db.Exec(e.t, `INSERT INTO accounts SELECT g, 'acct ' || g, g * 1.5 FROM generate_series(1, 2000) g`)
	e.db.Exec(e.t, `INSERT INTO orders SELECT g, g % 2000 + 1, g * 0.25 FROM generate_series(1, 3000) g`)
	e.db.Exec(e.t, `UPDATE accounts SET balance = balance + 1 WHERE id % 3 = 0`)
	e.db.Exec(e.t, `DELETE FROM orders WHERE id % 5 = 0`)
	e.db.Exec(e.t, `INSERT INTO secrets_table VALUES (1, 'not published')`)
}

// TestSecurity runs walcake over TLS (sslmode=verify-full) as a role that is
// not a superuser, with a password, and checks that no secret ever reaches
// its output, whatever fails.
func TestSecurity(t *testing.T) {
	s := startSecureServer(t)
	e := newEnvOn(t, s.srv)
	e.db.Exec(t, securitySchema)

	const password = "Pa55-w0rd:with/odd@chars%"
	e.db.Exec(t, fmt.Sprintf(`
		CREATE ROLE walcake_app LOGIN REPLICATION PASSWORD '%s';
		-- What the replication stream and compaction read.
		GRANT SELECT ON accounts, orders TO walcake_app;
		-- The publication, created by an owner of the tables (here the
		-- administrator), so that walcake needs no ownership.
		CREATE PUBLICATION walcake_test FOR TABLE accounts, orders;`, password))
	tlsURL := s.url("walcake_app", password, e.db.Name, "verify-full", s.rootCA)
	e.setVar("PG_CONN_STRING=" + tlsURL)

	t.Run("least_privilege_over_verify_full", func(t *testing.T) {
		e.t = t
		r := e.mustWalcake("setup", "--tables", "public.accounts,public.orders")
		if !strings.Contains(r.stdout, "publication walcake_test (exists)") || !strings.Contains(r.stdout, "slot walcake_test (created)") {
			t.Errorf("setup: %s", r.stdout)
		}
		var super bool
		e.db.QueryRow(t, "SELECT rolsuper FROM pg_roles WHERE rolname = 'walcake_app'").Scan(&super)
		if super {
			t.Fatal("walcake_app is a superuser; the test is not testing")
		}
		securityWorkload(e)
		e.mustWalcake("--log-level", "debug", "run", "--heartbeat")
		e.exactLake(securityTables)
		// Every session walcake opened used TLS: the server rejects the
		// role without it (hostnossl ... reject; see tls_refused).
		r = e.mustWalcake("status", "--json")
		if !strings.Contains(r.stdout, `"exists": true`) {
			t.Errorf("status as walcake_app: %s", r.stdout)
		}
	})

	t.Run("owner_creates_its_publication", func(t *testing.T) {
		e.t = t
		// The other way to least privilege: the role owns the tables and may
		// create objects in the database, so setup creates the publication.
		e.db.Exec(t, `
			CREATE ROLE walcake_owner LOGIN REPLICATION PASSWORD 'owner-secret-1';
			GRANT CREATE ON DATABASE `+e.db.Name+` TO walcake_owner;
			CREATE TABLE owned (id int PRIMARY KEY, v text);
			ALTER TABLE owned OWNER TO walcake_owner;`)
		oe := *e
		oe.vars = append([]string(nil), e.vars...)
		oe.setVar("PG_CONN_STRING=" + s.url("walcake_owner", "owner-secret-1", e.db.Name, "verify-full", s.rootCA))
		oe.setVar("PG_SLOT=walcake_owned")
		oe.setVar("PG_PUBLICATION=walcake_owned")
		oe.setVar("SPOOL_DIR=" + filepath.Join(t.TempDir(), "spool"))
		r := oe.mustWalcake("setup", "--tables", "public.owned")
		if !strings.Contains(r.stdout, "publication walcake_owned (created)") {
			t.Errorf("setup as owner: %s", r.stdout)
		}
		e.db.Exec(t, `INSERT INTO owned SELECT g, 'v' || g FROM generate_series(1, 100) g`)
		r = oe.mustWalcake("run")
		if !strings.Contains(r.stdout, "100 rows") {
			t.Errorf("run as owner: %s", r.stdout)
		}
	})

	t.Run("tls_refused", func(t *testing.T) {
		e.t = t
		for name, conn := range map[string]string{
			"unknown CA":   s.url("walcake_app", password, e.db.Name, "verify-full", s.otherCA),
			"no TLS":       s.url("walcake_app", password, e.db.Name, "disable", ""),
			"bad password": s.url("walcake_app", "not-the-password", e.db.Name, "verify-full", s.rootCA),
		} {
			e.setVar("PG_CONN_STRING=" + conn)
			r := e.walcake("run")
			if r.code == 0 {
				t.Errorf("%s: run succeeded", name)
			}
			t.Logf("%s: exit %d: %s", name, r.code, strings.TrimSpace(r.stderr))
			for _, secret := range []string{password, url.QueryEscape(password), "not-the-password", e.s3.SecretKey} {
				if strings.Contains(r.stdout+r.stderr, secret) {
					t.Errorf("%s: output contains a secret (%q):\n%s%s", name, secret, r.stdout, r.stderr)
				}
			}
		}
		e.setVar("PG_CONN_STRING=" + tlsURL)
	})
}

// No password, AWS secret or session token appears in walcake's output,
// however it fails: bad host, refused port, unparsable connection string,
// bad bucket, bad AWS secret, unreachable endpoint, in logfmt and JSON, at
// debug level.
func TestSecretsNeverLogged(t *testing.T) {
	e := newEnv(t)
	e.db.Exec(t, `CREATE TABLE t (id int PRIMARY KEY)`)
	e.mustWalcake("setup", "--tables", "public.t")
	e.db.Exec(t, `INSERT INTO t SELECT generate_series(1, 10)`)

	const pgPassword = "pg-Secret-8d1f"
	const sessionToken = "session-Token-77aa"
	good := e.db.URL
	withPassword := strings.Replace(good, "postgres@", "postgres:"+pgPassword+"@", 1)
	if withPassword == good {
		t.Fatalf("cannot put a password into %s", good)
	}
	e.setVar("PG_CONN_STRING=" + withPassword)
	secrets := []string{pgPassword, e.s3.SecretKey, sessionToken}

	cases := []struct {
		name string
		vars []string
		args []string
	}{
		// The server trusts 127.0.0.1, so the password is sent and unused:
		// the run succeeds, at debug level.
		{"success", nil, []string{"run"}},
		{"bad host", []string{"PG_CONN_STRING=postgres://postgres:" + pgPassword + "@no-such-host.invalid:5432/db"}, []string{"run"}},
		{"refused port", []string{"PG_CONN_STRING=postgres://postgres:" + pgPassword + "@127.0.0.1:1/db?connect_timeout=5"}, []string{"capture"}},
		{"unparsable URL", []string{"PG_CONN_STRING=postgres://postgres:" + pgPassword + "@127.0.0.1:notaport/db"}, []string{"run"}},
		{"unparsable DSN", []string{"PG_CONN_STRING=host=127.0.0.1 password=" + pgPassword + " port=x"}, []string{"status"}},
		{"unparsable DSN in setup", []string{"PG_CONN_STRING=host=127.0.0.1 password=" + pgPassword + " port=x"}, []string{"setup"}},
		{"bad bucket", []string{"WALCAKE_DEST=s3://no-such-bucket-walcake/x"}, []string{"run"}},
		{"bad AWS secret", []string{"AWS_SECRET_ACCESS_KEY=wrong-" + e.s3.SecretKey}, []string{"compact"}},
		{"session token", []string{"AWS_SESSION_TOKEN=" + sessionToken}, []string{"run"}},
		{"unreachable endpoint", []string{"AWS_ENDPOINT=http://127.0.0.1:1"}, []string{"status"}},
		{"bad SSE", []string{"WALCAKE_SSE=rot13"}, []string{"compact"}},
	}
	for _, format := range []string{"logfmt", "json"} {
		for _, tc := range cases {
			ce := *e
			ce.vars = append([]string(nil), e.vars...)
			for _, kv := range tc.vars {
				ce.setVar(kv)
			}
			args := append([]string{"--log-level", "debug", "--log-format", format}, tc.args...)
			r := ce.walcake(args...)
			if (tc.name == "success") != (r.code == 0) {
				t.Errorf("%s (%s): exit %d\n%s", tc.name, format, r.code, r.stderr)
			}
			if format == "logfmt" {
				t.Logf("%s: exit %d: %s", tc.name, r.code, lastLine(r.stderr))
			}
			out := r.stdout + r.stderr
			if strings.Contains(out, "panic:") || strings.Contains(out, "goroutine ") {
				t.Errorf("%s (%s): walcake panicked:\n%s", tc.name, format, out)
			}
			for _, kv := range tc.vars {
				if _, v, _ := strings.Cut(kv, "="); strings.HasPrefix(kv, "AWS_SECRET") {
					secrets = append(secrets, v)
				}
			}
			for _, s := range secrets {
				if strings.Contains(out, s) || strings.Contains(out, url.QueryEscape(s)) {
					t.Errorf("%s (%s): output contains secret %q:\n%s", tc.name, format, s, out)
				}
			}
		}
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// The spool directory is 0700 and its files 0600, even when the directory
// existed with a looser mode.
func TestSpoolPermissions(t *testing.T) {
	e := newEnv(t)
	e.db.Exec(t, `CREATE TABLE t (id int PRIMARY KEY, v text)`)
	e.mustWalcake("setup", "--tables", "public.t")
	if err := os.MkdirAll(e.spool, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(e.spool, 0o755); err != nil {
		t.Fatal(err)
	}
	e.db.Exec(t, `INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 1000) g`)
	e.mustWalcake("capture", "--segment-max-age", "1ms") // leaves sealed segments and marks
	if m := fileMode(t, e.spool); m != 0o700 {
		t.Errorf("spool directory mode %04o, want 0700", m)
	}
	n := 0
	err := filepath.Walk(e.spool, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.IsDir() {
			if m := fi.Mode().Perm(); m != 0o700 {
				t.Errorf("%s: directory mode %04o, want 0700", path, m)
			}
			return nil
		}
		n++
		if m := fi.Mode().Perm(); m != 0o600 {
			t.Errorf("%s: mode %04o, want 0600", path, m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no files in the spool; the test is not testing")
	}
	e.mustWalcake("run")
}

// sseRecorder is a reverse proxy in front of the S3 server that records the
// encryption headers of every request that writes an object.
type sseRecorder struct {
	URL  string
	mu   sync.Mutex
	puts []http.Header
}

func startSSERecorder(t *testing.T, target string) *sseRecorder {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	rec := &sseRecorder{}
	proxy := httputil.NewSingleHostReverseProxy(u)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// PutObject, and CreateMultipartUpload (POST ?uploads): the
		// requests that carry the encryption settings.
		if r.Method == http.MethodPut && r.URL.Query().Get("partNumber") == "" ||
			r.Method == http.MethodPost && r.URL.Query().Has("uploads") {
			rec.mu.Lock()
			rec.puts = append(rec.puts, r.Header.Clone())
			rec.mu.Unlock()
		}
		proxy.ServeHTTP(w, r)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	rec.URL = "http://" + l.Addr().String()
	return rec
}

// --sse and --sse-kms-key-id reach every object written.
func TestServerSideEncryption(t *testing.T) {
	e := newEnv(t)
	e.db.Exec(t, `CREATE TABLE t (id int PRIMARY KEY, v text)`)
	e.mustWalcake("setup", "--tables", "public.t")
	rec := startSSERecorder(t, e.s3.Endpoint)
	e.setVar("AWS_ENDPOINT=" + rec.URL)

	for i, tc := range []struct{ sse, key string }{
		{"AES256", ""},
		{"aws:kms", "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"},
	} {
		e.db.Exec(t, `INSERT INTO t SELECT g, 'v' || g FROM generate_series($1::int, $1::int + 99) g`, i*100)
		rec.mu.Lock()
		rec.puts = nil
		rec.mu.Unlock()
		args := []string{"--sse", tc.sse}
		if tc.key != "" {
			args = append(args, "--sse-kms-key-id", tc.key)
		}
		r := e.mustWalcake(append(args, "run")...)
		t.Logf("%s: %s", tc.sse, strings.TrimSpace(r.stdout))
		rec.mu.Lock()
		puts := rec.puts
		rec.mu.Unlock()
		if len(puts) < 2 { // a data file and a manifest at least
			t.Fatalf("%s: %d object writes seen", tc.sse, len(puts))
		}
		for _, h := range puts {
			if got := h.Get("X-Amz-Server-Side-Encryption"); got != tc.sse {
				t.Errorf("%s: a write carried x-amz-server-side-encryption %q", tc.sse, got)
			}
			if got := h.Get("X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id"); got != tc.key {
				t.Errorf("%s: a write carried the KMS key id %q, want %q", tc.sse, got, tc.key)
			}
		}
	}
	// A key id without aws:kms is a configuration error.
	if r := e.walcake("--sse", "AES256", "--sse-kms-key-id", "k", "compact"); r.code != 2 {
		t.Errorf("--sse-kms-key-id with AES256: exit %d, want 2\n%s", r.code, r.stderr)
	}
}
