package main

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/duckdb/duckdb-go/v2"

	"github.com/wal-cake/wal-cake/scripts/testenv"
)

// The pgbench_accounts-like table (pgbench fills filler with ”).
const narrowDDL = `CREATE TABLE %s (aid int PRIMARY KEY, bid int NOT NULL, abalance int NOT NULL, filler char(84))`

func narrowInsert(table string) string {
	return `INSERT INTO ` + table + ` SELECT g, 1 + (g - 1) / 100000, 0, '' FROM generate_series($1::int, $2::int) g`
}

// The wide table of mixed types.
const wideDDL = `CREATE TABLE %s (
	id bigint PRIMARY KEY,
	amount numeric(12,2) NOT NULL,
	created timestamptz NOT NULL,
	note text,
	doc jsonb,
	uid uuid NOT NULL,
	tags int[],
	qty int,
	ratio float8,
	active bool)`

func wideInsert(table string) string {
	return `INSERT INTO ` + table + ` SELECT g, (g % 100000) / 100.0 + 0.01,
		'2024-01-01T00:00:00Z'::timestamptz + g * interval '1 second',
		'note ' || md5(g::text), jsonb_build_object('k', g, 'tag', 'v' || (g % 10)),
		md5(g::text)::uuid, ARRAY[g % 7, g % 11, g % 13], g % 1000, g / 7.0, g % 2 = 0
		FROM generate_series($1::int, $2::int) g`
}

// load inserts rows from..to in txns transactions.
func (b *bench) load(ctx context.Context, insert string, from, to, txns int) error {
	per := (to - from + 1) / txns
	for i := 0; i < txns; i++ {
		lo, hi := from+i*per, from+(i+1)*per-1
		if i == txns-1 {
			hi = to
		}
		if err := b.exec(ctx, insert, lo, hi); err != nil {
			return err
		}
	}
	return nil
}

// freshTable (re)creates a table and a publication of it alone.
func (b *bench) freshTable(ctx context.Context, ddl, table string) error {
	return b.exec(ctx, fmt.Sprintf(`DROP PUBLICATION IF EXISTS %[1]s; DROP TABLE IF EXISTS %[1]s; %[2]s; CREATE PUBLICATION %[1]s FOR TABLE %[1]s`,
		table, fmt.Sprintf(ddl, table)))
}

// recvlogical runs pg_recvlogical on slot until endpos, writing to a file.
func (b *bench) recvlogical(ctx context.Context, slot, publication, endpos, file string, extra ...string) (measured, error) {
	args := []string{
		"-d", fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres", b.srv.Port) + os.Getenv("BENCH_RECV_CONNINFO"),
		"--slot", slot, "--start", "--endpos", endpos, "--no-loop", "-F", "0", "-f", file,
		"-o", "proto_version=2", "-o", "streaming=on", "-o", "publication_names=" + publication,
	}
	for _, o := range extra {
		args = append(args, "-o", o)
	}
	m, err := runCmd(exec.CommandContext(ctx, filepath.Join(b.srv.BinDir, "pg_recvlogical"), args...))
	if err == nil {
		if fi, serr := os.Stat(file); serr != nil || fi.Size() == 0 {
			err = fmt.Errorf("pg_recvlogical wrote nothing to %s", file)
		}
	}
	os.Remove(file)
	return m, err
}

// captureSection: 1. capture into the spool vs pg_recvlogical.
func (b *bench) captureSection(ctx context.Context) error {
	o := b.o
	fmt.Printf("\n1. capture into the durable spool vs pg_recvlogical writing the same stream to a file\n")
	fmt.Printf("   (pgoutput proto_version 2, streaming on; pg_recvlogical -F 0 does no fsync, walcake fsyncs each group)\n")
	const table = "cap_accounts"
	if err := b.freshTable(ctx, narrowDDL, table); err != nil {
		return err
	}
	backlogs := []struct {
		name string
		txns int
	}{
		{fmt.Sprintf("%s rows in 4 transactions", human(o.rows)), 4},
		{fmt.Sprintf("%s rows in 1 transaction", human(o.rows)), 1},
	}
	fmt.Printf("   %-28s %-34s %-34s %s\n", "backlog", "walcake capture", "pg_recvlogical", "ratio")
	for k, bl := range backlogs {
		if err := b.exec(ctx, "TRUNCATE "+table); err != nil {
			return err
		}
		for i := 0; i < o.pairs; i++ {
			for _, side := range []string{"w", "r", "b"} {
				if err := b.createSlot(ctx, fmt.Sprintf("bench_cap_%s%d", side, i)); err != nil {
					return err
				}
			}
		}
		if err := b.load(ctx, narrowInsert(table), 1, o.rows, bl.txns); err != nil {
			return err
		}
		endpos, err := b.insertLSN(ctx)
		if err != nil {
			return err
		}
		var wc, rl, bin stats
		var wcSender, rlSender []time.Duration
		var spoolBytes int64
		for i := 0; i < o.pairs; i++ {
			walcakeRun := func() error {
				spool := filepath.Join(b.work, fmt.Sprintf("cap-%d-%d", k, i))
				slot := fmt.Sprintf("bench_cap_w%d", i)
				sender := b.watchWalsender(ctx, slot)
				m, err := b.walcake(ctx, walcakeEnv{slot: slot, publication: table, spool: spool, dest: "file://" + b.work + "/unused"}, "capture", "--json")
				wcSender = append(wcSender, sender())
				if err != nil {
					return err
				}
				s, err := parseSummary(m.stdout)
				if err != nil {
					return err
				}
				if s.Captured.Changes != int64(o.rows) {
					return fmt.Errorf("walcake captured %d changes, want %d", s.Captured.Changes, o.rows)
				}
				spoolBytes = dirBytes(spool)
				os.RemoveAll(spool)
				wc.add(m)
				return nil
			}
			recvRun := func() error {
				slot := fmt.Sprintf("bench_cap_r%d", i)
				sender := b.watchWalsender(ctx, slot)
				m, err := b.recvlogical(ctx, slot, table, endpos, filepath.Join(b.work, "recv.out"))
				rlSender = append(rlSender, sender())
				rl.add(m)
				return err
			}
			first, second := walcakeRun, recvRun
			if i%2 == 1 {
				first, second = recvRun, walcakeRun
			}
			if err := first(); err != nil {
				return err
			}
			if err := second(); err != nil {
				return err
			}
			if bl.txns == 4 {
				// The walsender's own speed with binary 'true'.
				m, err := b.recvlogical(ctx, fmt.Sprintf("bench_cap_b%d", i), table, endpos, filepath.Join(b.work, "recv.out"), "binary=true")
				if err != nil {
					return err
				}
				bin.add(m)
			}
		}
		w, r := median(wc.wall), median(rl.wall)
		fmt.Printf("   %-28s %-34s %-34s %.2f\n", bl.name,
			wc.timing()+" "+rate(o.rows, w), rl.timing()+" "+rate(o.rows, r), r.Seconds()/w.Seconds())
		fmt.Printf("   %-28s walcake: %.2f CPU-s, peak RSS %s, spool %.0f bytes per change; pg_recvlogical: %.2f CPU-s\n", "",
			median(wc.cpu).Seconds(), mib(median(wc.maxRSS)), float64(spoolBytes)/float64(o.rows), median(rl.cpu).Seconds())
		fmt.Printf("   %-28s the walsender's CPU-s: %.2f serving walcake, %.2f serving pg_recvlogical\n", "",
			median(wcSender).Seconds(), median(rlSender).Seconds())
		if bl.txns == 4 {
			bw := median(bin.wall)
			fmt.Printf("   %-28s pg_recvlogical with binary 'true': %s %s (%.2f of text)\n", "",
				bin.timing(), rate(o.rows, bw), r.Seconds()/bw.Seconds())
		}
		if err := b.dropSlots(ctx, "bench_cap_"); err != nil {
			return err
		}
	}
	return b.exec(ctx, fmt.Sprintf("DROP PUBLICATION %[1]s; DROP TABLE %[1]s", table))
}

// compactSection: 2. compaction vs DuckDB CSV to ZSTD Parquet.
func (b *bench) compactSection(ctx context.Context) error {
	o := b.o
	fmt.Printf("\n2. compaction (spool to ZSTD Parquet, local-directory lake) vs DuckDB CSV to ZSTD Parquet, %d threads\n", o.threads)
	fmt.Printf("   (walcake: the whole `walcake compact` process; DuckDB: the COPY statement in-process)\n")
	duck, err := b.openDuck()
	if err != nil {
		return err
	}
	defer duck.Close()
	tables := []struct {
		name, ddl  string
		insert     func(string) string
		duckSelect string
		columns    string
	}{
		{"cmp_accounts", narrowDDL, narrowInsert, "*",
			`{'aid': 'INTEGER', 'bid': 'INTEGER', 'abalance': 'INTEGER', 'filler': 'VARCHAR'}`},
		{"cmp_wide", wideDDL, wideInsert,
			`* REPLACE (string_split(trim(tags, '{}'), ',')::INTEGER[] AS tags)`,
			`{'id': 'BIGINT', 'amount': 'DECIMAL(12,2)', 'created': 'TIMESTAMPTZ', 'note': 'VARCHAR', 'doc': 'JSON',
			  'uid': 'UUID', 'tags': 'VARCHAR', 'qty': 'INTEGER', 'ratio': 'DOUBLE', 'active': 'BOOLEAN'}`},
	}
	fmt.Printf("   %-28s %-34s %-34s %s\n", "table", "walcake compact", "DuckDB", "ratio")
	for _, tb := range tables {
		if err := b.freshTable(ctx, tb.ddl, tb.name); err != nil {
			return err
		}
		slot := "bench_" + tb.name
		if err := b.createSlot(ctx, slot); err != nil {
			return err
		}
		if err := b.load(ctx, tb.insert(tb.name), 1, o.rows, 4); err != nil {
			return err
		}
		spool := filepath.Join(b.work, tb.name+"-spool")
		env := walcakeEnv{slot: slot, publication: tb.name, spool: spool}
		if _, err := b.walcake(ctx, env, "capture"); err != nil {
			return err
		}
		csv := filepath.Join(b.work, tb.name+".csv")
		if err := b.exportCSV(ctx, tb.name, csv); err != nil {
			return err
		}
		var wc, dk stats
		var lakeBytes, duckBytes int64
		for i := 0; i < o.pairs; i++ {
			walcakeRun := func() error {
				run := filepath.Join(b.work, fmt.Sprintf("%s-run%d", tb.name, i))
				if err := copyDir(spool, filepath.Join(run, "spool")); err != nil {
					return err
				}
				e := env
				e.spool, e.dest = filepath.Join(run, "spool"), "file://"+filepath.Join(run, "lake")
				m, err := b.walcake(ctx, e, "compact", "--json")
				if err != nil {
					return err
				}
				s, err := parseSummary(m.stdout)
				if err != nil {
					return err
				}
				if s.rows() != int64(o.rows) {
					return fmt.Errorf("walcake compact wrote %d rows, want %d", s.rows(), o.rows)
				}
				lakeBytes = s.Committed.Bytes
				os.RemoveAll(run)
				wc.add(m)
				return nil
			}
			duckRun := func() error {
				out := filepath.Join(b.work, tb.name+".parquet")
				q := fmt.Sprintf(`COPY (SELECT %s FROM read_csv('%s', header = true, columns = %s)) TO '%s' (FORMAT parquet, COMPRESSION zstd)`,
					tb.duckSelect, csv, tb.columns, out)
				started := time.Now()
				if _, err := duck.ExecContext(ctx, q); err != nil {
					return fmt.Errorf("duckdb: %w", err)
				}
				dk.add(measured{wall: time.Since(started)})
				if fi, err := os.Stat(out); err == nil {
					duckBytes = fi.Size()
				}
				os.Remove(out)
				return nil
			}
			first, second := walcakeRun, duckRun
			if i%2 == 1 {
				first, second = duckRun, walcakeRun
			}
			if err := first(); err != nil {
				return err
			}
			if err := second(); err != nil {
				return err
			}
		}
		w, d := median(wc.wall), median(dk.wall)
		fmt.Printf("   %-28s %-34s %-34s %.2f\n", fmt.Sprintf("%s (%s rows)", tb.name, human(o.rows)),
			wc.timing()+" "+rate(o.rows, w), dk.timing()+" "+rate(o.rows, d), d.Seconds()/w.Seconds())
		fmt.Printf("   %-28s walcake: %.2f CPU-s, peak RSS %s, Parquet %s; DuckDB Parquet %s\n", "",
			median(wc.cpu).Seconds(), mib(median(wc.maxRSS)), mib(lakeBytes), mib(duckBytes))
		os.Remove(csv)
		os.RemoveAll(spool)
		if err := b.dropSlots(ctx, slot); err != nil {
			return err
		}
		if err := b.exec(ctx, fmt.Sprintf("DROP PUBLICATION %[1]s; DROP TABLE %[1]s", tb.name)); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) openDuck() (*sql.DB, error) {
	home := filepath.Join(b.work, "duckdb-home")
	if err := os.MkdirAll(home, 0o700); err != nil {
		return nil, err
	}
	config := url.Values{
		"home_directory":               {home},
		"autoinstall_known_extensions": {"false"},
		"autoload_known_extensions":    {"true"},
		"threads":                      {fmt.Sprint(b.o.threads)},
	}
	connector, err := duckdb.NewConnector("?"+config.Encode(), func(execer driver.ExecerContext) error {
		_, err := execer.ExecContext(context.Background(), "SET TimeZone = 'UTC'", nil)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("duckdb: %w", err)
	}
	db := sql.OpenDB(connector)
	db.SetMaxOpenConns(1)
	return db, nil
}

func (b *bench) exportCSV(ctx context.Context, table, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := b.conn.PgConn().CopyTo(ctx, f, "COPY "+table+" TO STDOUT WITH (FORMAT csv, HEADER)"); err != nil {
		return fmt.Errorf("export %s: %w", table, err)
	}
	return f.Close()
}

// runSection: 3. walcake run end to end into the S3-protocol server.
func (b *bench) runSection(ctx context.Context) error {
	o := b.o
	fmt.Printf("\n3. walcake run end to end on a mixed backlog into the S3-protocol server (versitygw on loopback)\n")
	var err error
	b.s3, err = testenv.StartS3(ctx, filepath.Join(b.work, "s3"))
	if err != nil {
		return err
	}
	if err := b.s3.CreateBucket(ctx, "bench"); err != nil {
		return err
	}
	if err := b.exec(ctx, fmt.Sprintf(narrowDDL+"; "+wideDDL, "run_accounts", "run_wide")); err != nil {
		return err
	}
	env := walcakeEnv{slot: "bench_run", publication: "bench_run", spool: filepath.Join(b.work, "run-spool"),
		dest: "s3://bench/lake", extra: []string{
			"AWS_ENDPOINT=" + b.s3.Endpoint, "AWS_REGION=" + b.s3.Region,
			"AWS_ACCESS_KEY_ID=" + b.s3.AccessKey, "AWS_SECRET_ACCESS_KEY=" + b.s3.SecretKey,
		}}
	if _, err := b.walcake(ctx, env, "setup", "--tables", "public.run_accounts,public.run_wide"); err != nil {
		return err
	}
	// The mix, scaled to o.rows changes: 40% inserts into the narrow table
	// in 4 transactions, 20% into the wide one in 2, 20% updates of the
	// narrow table, 10% of the wide one, 5% deletes, and 5% single-row
	// transactions.
	n := o.rows
	parts := []struct {
		what string
		do   func() error
	}{
		{"inserts", func() error { return b.load(ctx, narrowInsert("run_accounts"), 1, n*40/100, 4) }},
		{"inserts", func() error { return b.load(ctx, wideInsert("run_wide"), 1, n*20/100, 2) }},
		{"updates", func() error {
			return b.exec(ctx, "UPDATE run_accounts SET abalance = abalance + 1 WHERE aid <= $1", n*20/100)
		}},
		{"updates", func() error {
			return b.exec(ctx, "UPDATE run_wide SET qty = qty + 1, note = note || '!' WHERE id <= $1", n*10/100)
		}},
		{"deletes", func() error { return b.exec(ctx, "DELETE FROM run_accounts WHERE aid > $1", n*35/100) }},
		{"small transactions", func() error {
			return b.exec(ctx, fmt.Sprintf(`DO $$ BEGIN FOR i IN %d..%d LOOP
				INSERT INTO run_wide VALUES (i, 1.5, now(), 'small', '{"s": 1}', md5(i::text)::uuid, '{1}', 1, 0.5, true);
				COMMIT; END LOOP; END $$`, n*20/100+1, n*20/100+n*5/100))
		}},
	}
	loadStart := time.Now()
	for _, p := range parts {
		if err := p.do(); err != nil {
			return err
		}
	}
	fmt.Printf("   backlog: %s changes (40%% narrow inserts in 4 txns, 20%% wide inserts in 2, 20%% + 10%% updates, 5%% deletes, 5%% one-row txns), generated in %.1f s\n",
		human(n), time.Since(loadStart).Seconds())
	m, err := b.walcake(ctx, env, "run", "--json")
	if err != nil {
		return err
	}
	s, err := parseSummary(m.stdout)
	if err != nil {
		return err
	}
	if s.rows() != int64(n) {
		return fmt.Errorf("walcake run committed %d rows, want %d", s.rows(), n)
	}
	fmt.Printf("   walcake run: %.2f s, %s (%d txns, %d files, %s of Parquet), %.2f CPU-s, peak RSS %s\n",
		m.wall.Seconds(), rate(n, m.wall), s.Captured.Txns, s.Committed.Files, mib(s.Committed.Bytes), m.cpu.Seconds(), mib(m.maxRSS))
	return b.exec(ctx, "DROP TABLE run_accounts, run_wide")
}

// memorySection: 4 and 5. Peak memory while one large transaction passes,
// and the spool's bytes.
func (b *bench) memorySection(ctx context.Context) error {
	o := b.o
	fmt.Printf("\n4. peak RSS while one large transaction passes (capture streams it, compaction writes it)\n")
	fmt.Printf("5. spool bytes on disk per change, and what remains after compaction\n")
	fmt.Printf("   %-24s %-36s %-36s %-18s %s\n", "transaction", "capture", "compact", "spool per change", "spool after compact")
	for _, n := range []int{o.rows, o.big} {
		table := fmt.Sprintf("mem_%s", strings.ToLower(human(n)))
		if err := b.freshTable(ctx, narrowDDL, table); err != nil {
			return err
		}
		slot := "bench_" + table
		if err := b.createSlot(ctx, slot); err != nil {
			return err
		}
		if err := b.load(ctx, narrowInsert(table), 1, n, 1); err != nil {
			return err
		}
		spool := filepath.Join(b.work, table+"-spool")
		env := walcakeEnv{slot: slot, publication: table, spool: spool, dest: "file://" + filepath.Join(b.work, table+"-lake")}
		cm, err := b.walcake(ctx, env, "capture", "--json")
		if err != nil {
			return err
		}
		cs, err := parseSummary(cm.stdout)
		if err != nil {
			return err
		}
		if cs.Captured.Changes != int64(n) {
			return fmt.Errorf("captured %d changes, want %d", cs.Captured.Changes, n)
		}
		spoolBytes := dirBytes(spool)
		km, err := b.walcake(ctx, env, "compact", "--json")
		if err != nil {
			return err
		}
		ks, err := parseSummary(km.stdout)
		if err != nil {
			return err
		}
		if ks.rows() != int64(n) {
			return fmt.Errorf("compacted %d rows, want %d", ks.rows(), n)
		}
		left := dirBytes(spool)
		var segments int
		var leftFiles []string
		filepath.Walk(spool, func(path string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() {
				name, _ := filepath.Rel(spool, path)
				leftFiles = append(leftFiles, fmt.Sprintf("%s %d B", name, fi.Size()))
				if strings.HasSuffix(name, ".seg") || strings.HasSuffix(name, ".open") || strings.HasSuffix(name, ".stream") {
					segments++
				}
			}
			return nil
		})

		fmt.Printf("   %-24s %-36s %-36s %-18s %s\n", fmt.Sprintf("%s rows in 1 txn", human(n)),
			fmt.Sprintf("%s, %.1f s, %s", mib(cm.maxRSS), cm.wall.Seconds(), rate(n, cm.wall)),
			fmt.Sprintf("%s, %.1f s, %s", mib(km.maxRSS), km.wall.Seconds(), rate(n, km.wall)),
			fmt.Sprintf("%.0f B (%s)", float64(spoolBytes)/float64(n), mib(spoolBytes)),
			fmt.Sprintf("%d B, %d segment files", left, segments))
		fmt.Printf("   %-24s left in the spool after compaction: %s\n", "", strings.Join(leftFiles, ", "))
		os.RemoveAll(spool)
		os.RemoveAll(filepath.Join(b.work, table+"-lake"))
		if err := b.dropSlots(ctx, slot); err != nil {
			return err
		}
		if err := b.exec(ctx, fmt.Sprintf("DROP PUBLICATION %[1]s; DROP TABLE %[1]s", table)); err != nil {
			return err
		}
	}
	return nil
}
