package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// PostgresOptions configures StartPostgres.
type PostgresOptions struct {
	// Version is the PostgreSQL major version whose server binaries are used
	// (default 15).
	Version int
	// ExtraConfig holds server settings passed as `-c key=value`, after (and
	// so overriding) the harness defaults.
	ExtraConfig map[string]string
}

// PostgresServer is a throwaway PostgreSQL cluster listening on 127.0.0.1.
type PostgresServer struct {
	// Port is the TCP port on 127.0.0.1.
	Port int
	// Dir is the temporary directory that holds the data directory, the
	// server log and the Unix socket. Stop removes it.
	Dir string
	// BinDir holds the server binaries (initdb, pg_ctl, postgres).
	BinDir string

	dataDir  string
	logPath  string
	asSystem bool // run the binaries as the postgres user through runuser
}

const (
	defaultPostgresVersion = 15
	pgUser                 = "postgres" // the OS user the server runs as when we are root
	tempDirPattern         = "walcake-pg-*"
	ownerFile              = "owner.pid" // PID of the process that started the server
	startTimeout           = 60 * time.Second
	portAttempts           = 3
	logTailBytes           = 4 << 10
)

var settingName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*$`)

// StartPostgres initialises a new cluster in a fresh temporary directory and
// starts it with logical replication enabled, trust authentication for the
// postgres role over TCP on 127.0.0.1 and over the socket in Dir, and durability
// turned off. When the server binaries are missing and we are root, it installs
// them with apt-get. Call Stop to shut the server down and remove Dir.
func StartPostgres(ctx context.Context, opts PostgresOptions) (*PostgresServer, error) {
	if opts.Version == 0 {
		opts.Version = defaultPostgresVersion
	}
	for k := range opts.ExtraConfig {
		if !settingName.MatchString(k) {
			return nil, fmt.Errorf("testenv: postgres: invalid setting name %q", k)
		}
	}
	binDir, err := postgresBinDir(ctx, opts.Version)
	if err != nil {
		return nil, err
	}
	asSystem := os.Geteuid() == 0
	var owner *user.User
	if asSystem {
		if owner, err = user.Lookup(pgUser); err != nil {
			return nil, fmt.Errorf("testenv: postgres: running as root needs the %q user: %w", pgUser, err)
		}
	}
	// Under TMPDIR if the server user can reach it, else under /tmp.
	bases := []string{os.TempDir()}
	if asSystem && os.TempDir() != "/tmp" {
		bases = append(bases, "/tmp")
	}
	sweepStale(bases, binDir, asSystem)
	for _, base := range bases {
		var dir string
		dir, err = os.MkdirTemp(base, tempDirPattern)
		if err != nil {
			return nil, fmt.Errorf("testenv: postgres: %w", err)
		}
		s := &PostgresServer{
			Dir:      dir,
			BinDir:   binDir,
			dataDir:  filepath.Join(dir, "data"),
			logPath:  filepath.Join(dir, "postgres.log"),
			asSystem: asSystem,
		}
		err = s.start(ctx, owner, opts)
		if err == nil {
			return s, nil
		}
		_ = s.Stop()
		if !errors.Is(err, errUnreachable) {
			break
		}
	}
	return nil, err
}

// errUnreachable: the server user cannot enter the temporary directory.
var errUnreachable = errors.New("directory not reachable by the server user")

func (s *PostgresServer) start(ctx context.Context, owner *user.User, opts PostgresOptions) error {
	// The server user must be able to enter Dir and write into it (data
	// directory, log, socket). Nothing it needs lives outside Dir.
	if err := os.Chmod(s.Dir, 0o755); err != nil {
		return fmt.Errorf("testenv: postgres: %w", err)
	}
	if err := os.WriteFile(filepath.Join(s.Dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return fmt.Errorf("testenv: postgres: %w", err)
	}
	if owner != nil {
		uid, _ := strconv.Atoi(owner.Uid)
		gid, _ := strconv.Atoi(owner.Gid)
		if err := os.Chown(s.Dir, uid, gid); err != nil {
			return fmt.Errorf("testenv: postgres: chown %s: %w", s.Dir, err)
		}
		// A TMPDIR under a directory the server user cannot enter (say /root)
		// would make initdb fail with a confusing message; say it plainly.
		if err := s.command(ctx, "test", "-w", s.Dir, "-a", "-x", s.Dir).Run(); err != nil {
			return fmt.Errorf("testenv: postgres: %s: %w: user %s cannot enter it (%w)", s.Dir, errUnreachable, pgUser, err)
		}
	}

	out, err := s.command(ctx, filepath.Join(s.BinDir, "initdb"),
		"--no-sync", "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C",
		"-D", s.dataDir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("testenv: postgres: initdb: %w\n%s", err, bytes.TrimSpace(out))
	}
	// Overwrite (not replace: the file keeps its owner) the generated pg_hba.conf
	// so the rules do not depend on the packaging's defaults.
	hba := "# written by wal-cake's testenv\n" +
		"local all         all               trust\n" +
		"local replication all               trust\n" +
		"host  all         all  127.0.0.1/32 trust\n" +
		"host  replication all  127.0.0.1/32 trust\n"
	if err := os.WriteFile(filepath.Join(s.dataDir, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		return fmt.Errorf("testenv: postgres: %w", err)
	}

	// A free port can be taken by someone else between our probe and the
	// server's bind: try a few.
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return fmt.Errorf("testenv: postgres: %w", err)
		}
		s.Port = port
		out, err := s.command(ctx, filepath.Join(s.BinDir, "pg_ctl"), "start", "-w",
			"-t", strconv.Itoa(int(startTimeout/time.Second)),
			"-D", s.dataDir, "-l", s.logPath, "-o", serverOptions(port, s.Dir, opts.ExtraConfig)).CombinedOutput()
		if err == nil {
			return nil
		}
		logTail := s.logTail()
		if attempt < portAttempts && strings.Contains(logTail, "could not bind") {
			continue
		}
		return fmt.Errorf("testenv: postgres: pg_ctl start: %w\n%s\nserver log (%s):\n%s",
			err, bytes.TrimSpace(out), s.logPath, logTail)
	}
}

// serverOptions is the pg_ctl -o string. pg_ctl hands it to /bin/sh, so each
// value is single-quoted.
func serverOptions(port int, socketDir string, extra map[string]string) string {
	settings := [][2]string{
		{"wal_level", "logical"},
		{"max_replication_slots", "40"},
		{"max_wal_senders", "40"},
		{"fsync", "off"},
		{"listen_addresses", "127.0.0.1"},
		{"port", strconv.Itoa(port)},
		{"unix_socket_directories", socketDir},
	}
	keys := make([]string, 0, len(extra))
	for k := range extra {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		settings = append(settings, [2]string{k, extra[k]})
	}
	var b strings.Builder
	for i, kv := range settings {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString("-c ")
		b.WriteString(shellQuote(kv[0] + "=" + kv[1]))
	}
	return b.String()
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// URL is a postgres:// connection URL for database db.
func (s *PostgresServer) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.Port, escapePathSegment(db))
}

// DSN is a key=value connection string for database db.
func (s *PostgresServer) DSN(db string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=%s sslmode=disable", s.Port, dsnQuote(db))
}

func escapePathSegment(s string) string {
	// Database names made by this package are [a-z0-9_]; escape anything else.
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

func dsnQuote(s string) string {
	if s != "" && !strings.ContainsAny(s, ` '\`) {
		return s
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// LogPath is the server's log file.
func (s *PostgresServer) LogPath() string { return s.logPath }

// Restart stops the server (fast shutdown) and starts it again on the same
// port with the same settings and data.
func (s *PostgresServer) Restart(ctx context.Context) error {
	out, err := s.command(ctx, filepath.Join(s.BinDir, "pg_ctl"), "restart", "-w", "-m", "fast",
		"-t", strconv.Itoa(int(startTimeout/time.Second)), "-D", s.dataDir, "-l", s.logPath).CombinedOutput()
	if err != nil {
		return fmt.Errorf("testenv: postgres: pg_ctl restart: %w\n%s\nserver log (%s):\n%s",
			err, bytes.TrimSpace(out), s.logPath, s.logTail())
	}
	return nil
}

// RestartImmediate stops the server the way a crash would (immediate
// shutdown: no shutdown checkpoint, no waiting for walsenders) and starts it
// again on the same port; the start runs crash recovery.
func (s *PostgresServer) RestartImmediate(ctx context.Context) error {
	out, err := s.command(ctx, filepath.Join(s.BinDir, "pg_ctl"), "restart", "-w", "-m", "immediate",
		"-t", strconv.Itoa(int(startTimeout/time.Second)), "-D", s.dataDir, "-l", s.logPath).CombinedOutput()
	if err != nil {
		return fmt.Errorf("testenv: postgres: pg_ctl restart -m immediate: %w\n%s\nserver log (%s):\n%s",
			err, bytes.TrimSpace(out), s.logPath, s.logTail())
	}
	return nil
}

// Stop shuts the server down (fast shutdown, then immediate if that fails)
// and removes Dir.
func (s *PostgresServer) Stop() error {
	var errs []error
	if _, err := os.Stat(filepath.Join(s.dataDir, "postmaster.pid")); err == nil {
		if err := s.pgCtlStop("fast"); err != nil {
			errs = append(errs, err)
			if err := s.pgCtlStop("immediate"); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := os.RemoveAll(s.Dir); err != nil {
		errs = append(errs, fmt.Errorf("testenv: postgres: %w", err))
	}
	return errors.Join(errs...)
}

func (s *PostgresServer) pgCtlStop(mode string) error {
	// Stop runs from cleanup paths whose context may be gone: use our own.
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	out, err := s.command(ctx, filepath.Join(s.BinDir, "pg_ctl"), "stop", "-w", "-m", mode, "-D", s.dataDir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("testenv: postgres: pg_ctl stop -m %s: %w\n%s", mode, err, bytes.TrimSpace(out))
	}
	return nil
}

// command runs name as the postgres user when we are root, directly otherwise,
// from Dir so that the server user can stat its working directory.
func (s *PostgresServer) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return pgCommand(ctx, s.asSystem, s.Dir, name, args...)
}

func pgCommand(ctx context.Context, asSystem bool, dir, name string, args ...string) *exec.Cmd {
	var cmd *exec.Cmd
	if asSystem {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", pgUser, "--", name}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, name, args...)
	}
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "PGTZ=UTC")
	// The server is a daemon (pg_ctl starts it in the background, keeping our
	// output pipe): do not wait for that pipe to close.
	cmd.WaitDelay = time.Second
	return cmd
}

func (s *PostgresServer) logTail() string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	if len(b) > logTailBytes {
		b = b[len(b)-logTailBytes:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(bytes.TrimSpace(b))
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// postgresBinDir finds the server binaries of the given major version,
// installing them with apt-get when they are missing and we are root.
func postgresBinDir(ctx context.Context, version int) (string, error) {
	if dir := findBinDir(ctx, version); dir != "" {
		return dir, nil
	}
	pkg := fmt.Sprintf("postgresql-%d", version)
	if os.Geteuid() != 0 {
		return "", fmt.Errorf("testenv: postgres: no PostgreSQL %d server binaries (looked in /usr/lib/postgresql/%d/bin and pg_config --bindir); install %s", version, version, pkg)
	}
	if err := aptInstall(ctx, pkg); err != nil {
		return "", err
	}
	if dir := findBinDir(ctx, version); dir != "" {
		return dir, nil
	}
	return "", fmt.Errorf("testenv: postgres: installed %s but found no server binaries", pkg)
}

func findBinDir(ctx context.Context, version int) string {
	candidates := []string{fmt.Sprintf("/usr/lib/postgresql/%d/bin", version)}
	if out, err := exec.CommandContext(ctx, "pg_config", "--bindir").Output(); err == nil {
		candidates = append(candidates, strings.TrimSpace(string(out)))
	}
	for _, dir := range candidates {
		if hasServerBinaries(ctx, dir, version) {
			return dir
		}
	}
	return ""
}

func hasServerBinaries(ctx context.Context, dir string, version int) bool {
	for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.IsDir() {
			return false
		}
	}
	// pg_config may point at another major version.
	out, err := exec.CommandContext(ctx, filepath.Join(dir, "postgres"), "--version").Output()
	if err != nil {
		return false
	}
	m := regexp.MustCompile(`\(PostgreSQL\) (\d+)`).FindSubmatch(out)
	return m != nil && string(m[1]) == strconv.Itoa(version)
}

// aptInstall installs pkg. Test binaries of several packages run at once, so
// the install is serialised with a lock file (apt itself would fail on its
// own locks instead of waiting).
func aptInstall(ctx context.Context, pkg string) error {
	lock, err := os.OpenFile(filepath.Join(os.TempDir(), "walcake-apt.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("testenv: postgres: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("testenv: postgres: lock %s: %w", lock.Name(), err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)

	slog.Warn("testenv: PostgreSQL server binaries not found; installing with apt-get", "package", pkg)
	for _, args := range [][]string{
		{"update"},
		{"install", "-y", "--no-install-recommends", pkg},
	} {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("testenv: postgres: apt-get %s: %w\n%s", strings.Join(args, " "), err, tail(out, logTailBytes))
		}
	}
	return nil
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return bytes.TrimSpace(b)
}

// sweepStale stops and removes servers left behind by test binaries that died
// without cleaning up (a `go test -timeout` kill, SIGKILL): directories
// matching tempDirPattern whose owner process no longer exists. Best effort.
func sweepStale(bases []string, binDir string, asSystem bool) {
	var dirs []string
	for _, base := range bases {
		matches, _ := filepath.Glob(filepath.Join(base, tempDirPattern))
		dirs = append(dirs, matches...)
	}
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue // being created, or not ours
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 || processAlive(pid) {
			continue
		}
		dataDir := filepath.Join(dir, "data")
		if _, err := os.Stat(filepath.Join(dataDir, "postmaster.pid")); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_ = pgCommand(ctx, asSystem, dir, filepath.Join(binDir, "pg_ctl"), "stop", "-w", "-m", "immediate", "-D", dataDir).Run()
			cancel()
		}
		_ = os.RemoveAll(dir)
	}
}

// processAlive reports whether pid runs. A zombie (exited, not yet reaped:
// a daemon's parent is init, which may reap late) does not.
func processAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	// pid (comm) state ...: comm may hold spaces and parentheses.
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
		return stat[i+2] != 'Z'
	}
	return true
}
