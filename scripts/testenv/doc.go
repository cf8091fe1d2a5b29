// Package testenv starts the throwaway servers that wal-cake's integration
// tests, the demo and the benchmarks run against.
//
// PostgreSQL: StartPostgres initialises a cluster in a fresh directory under
// os.TempDir() and starts it on a free port of 127.0.0.1 with
// wal_level=logical, fsync off and trust authentication for the postgres role.
// Tests share one such server per test binary through NewDatabase, which gives
// each test its own database; the package's TestMain must call Main:
//
//	func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }
//
// Invariants and caveats:
//   - Everything a server needs (data directory, log, Unix socket) lives in
//     PostgresServer.Dir, never under the repository checkout, which the
//     postgres user may not be able to enter. Stop removes Dir.
//   - As root (initdb refuses root) the binaries run as the postgres user via
//     runuser; as anyone else they run as that user.
//   - Missing server binaries are installed with apt-get when running as root.
//   - A database from NewDatabase is dropped at test cleanup together with its
//     sessions, walsenders and logical replication slots; tests name their own
//     slots and publications freely inside it.
//   - When a server cannot be started the test is skipped, unless CI=true, where
//     it fails: CI never passes by skipping.
//   - A server left behind by a test binary that was killed is stopped and
//     removed by the next StartPostgres on the machine.
package testenv
