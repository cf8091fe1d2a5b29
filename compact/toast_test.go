package compact

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/parquet-go/parquet-go"

	"github.com/wal-cake/wal-cake/spool"
)

const testLake = "file:///lake"

func openTestToast(t *testing.T, dir string, head pglogrepl.LSN) *toastStore {
	t.Helper()
	s, err := openToastStore(dir, testLake, head, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.close() })
	return s
}

// repeated returns a value of n bytes that compresses well (prefix repeated).
func repeated(prefix string, n int) string {
	return strings.Repeat(prefix, n/len(prefix)+1)[:n]
}

// noisy returns n bytes that do not compress.
func noisy(seed byte, n int) string {
	b := make([]byte, n)
	x := uint32(seed) + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = 'a' + byte(x%26)
	}
	return string(b)
}

// TestDecodeFillsFromStore runs the decoder with a state store through the
// paths of an unchanged TOAST value.
func TestDecodeFillsFromStore(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	store := openTestToast(t, dir, 0)
	h := newDecodeHarness(t, store)
	body1, body2, body3 := repeated("one ", 9000), noisy(1, 9000), repeated("three ", 20000)
	short := func(s string) string { return fmt.Sprintf("<%d bytes %.8s>", len(s), s) }
	shorten := func(rows []string) []string {
		for i, r := range rows {
			for _, b := range []string{body1, body2, body3} {
				r = strings.ReplaceAll(r, b, short(b))
			}
			rows[i] = r
		}
		return rows
	}
	h.feed(relationMsg(1, "public", "docs", identityDefault, idCol, bodyCol, noteCol))
	h.feed(
		insertMsg(1, v("1"), v(body1), v("n")),
		insertMsg(1, v("2"), v(body2), v("n")),
		insertMsg(1, v("3"), v("small"), v("n")),
		updateMsg(1, 0, nil, v("1"), unchangedTOAST, v("n2")),                       // filled
		updateMsg(1, 0, nil, v("3"), unchangedTOAST, v("n2")),                       // small values are not kept
		updateMsg(1, 'K', []tv{v("2"), nil, nil}, v("20"), unchangedTOAST, v("n2")), // key change: from the old key
		updateMsg(1, 0, nil, v("2"), unchangedTOAST, v("n3")),                       // the old key was moved away
		updateMsg(1, 0, nil, v("20"), unchangedTOAST, v("n3")),                      // ... to the new key
		updateMsg(1, 0, nil, v("1"), v(body3), v("n4")),                             // a new value replaces the kept one
		updateMsg(1, 0, nil, v("1"), unchangedTOAST, v("n5")),
		updateMsg(1, 0, nil, v("1"), v("tiny"), v(repeated("pad", 3000))), // a small value removes it
		updateMsg(1, 0, nil, v("1"), unchangedTOAST, v("n6")),
		deleteMsg(1, 'K', v("20"), nil, nil),
		insertMsg(1, v("20"), v("again"), nil),
		updateMsg(1, 0, nil, v("20"), unchangedTOAST, nil), // the delete forgot the old value
	)
	sameStrings(t, "fills", shorten(h.take()), shorten([]string{
		"public.docs I seq=0 unchanged=[] [1 " + body1 + " n]",
		"public.docs I seq=1 unchanged=[] [2 " + body2 + " n]",
		"public.docs I seq=2 unchanged=[] [3 small n]",
		"public.docs U seq=3 unchanged=[] [1 " + body1 + " n2]",
		"public.docs U seq=4 unchanged=[body] [3 NULL n2]",
		"public.docs D seq=5 unchanged=[] [2 NULL NULL]",
		"public.docs U seq=6 unchanged=[] [20 " + body2 + " n2]",
		"public.docs U seq=7 unchanged=[body] [2 NULL n3]",
		"public.docs U seq=8 unchanged=[] [20 " + body2 + " n3]",
		"public.docs U seq=9 unchanged=[] [1 " + body3 + " n4]",
		"public.docs U seq=10 unchanged=[] [1 " + body3 + " n5]",
		"public.docs U seq=11 unchanged=[] [1 tiny " + repeated("pad", 3000) + "]",
		"public.docs U seq=12 unchanged=[body] [1 NULL n6]",
		"public.docs D seq=13 unchanged=[] [20 NULL NULL]",
		"public.docs I seq=14 unchanged=[] [20 again NULL]",
		"public.docs U seq=15 unchanged=[body] [20 NULL NULL]",
	}))

	// A truncate forgets the table; so does a type change of the column.
	h.feed(insertMsg(1, v("5"), v(body1), nil), truncateMsg(0, 1))
	h.feed(insertMsg(1, v("5"), v(body1), nil))
	h.feed(relationMsg(1, "public", "docs", identityDefault, idCol, relCol{"body", pgtype.VarcharOID, -1, false}, noteCol))
	h.feed(updateMsg(1, 0, nil, v("5"), unchangedTOAST, nil))
	got := shorten(h.take())
	sameStrings(t, "truncate and type change", got[len(got)-1:], []string{
		"public.docs U seq=19 unchanged=[body] [5 NULL NULL]",
	})
	if err := store.committed(100); err != nil {
		t.Fatal(err)
	}
}

// TestToastStoreCrashes checks that the store never fills a value the lake
// does not have as the key's newest, whatever step a crash interrupts.
func TestToastStoreCrashes(t *testing.T) {
	t.Parallel()
	body1, body2 := noisy(1, 9000), noisy(2, 9000)
	// fill reports what an update of key 1 with an unchanged body gets.
	fill := func(t *testing.T, s *toastStore, commit pglogrepl.LSN) string {
		t.Helper()
		h := newDecodeHarness(t, s)
		h.txn(commit)
		h.feed(relationMsg(1, "public", "docs", identityDefault, idCol, bodyCol, noteCol))
		h.feed(updateMsg(1, 0, nil, v("1"), unchangedTOAST, nil))
		r := h.rows[0]
		switch {
		case len(r.unchanged) > 0:
			return "unfilled"
		case r.cols[1] == body1:
			return "body1"
		case r.cols[1] == body2:
			return "body2"
		}
		return "WRONG"
	}
	// write commits one insert of key 1 with body at commit, as a batch
	// whose manifest is (or is not) written.
	write := func(t *testing.T, s *toastStore, body string, commit pglogrepl.LSN, manifest bool) {
		t.Helper()
		h := newDecodeHarness(t, s)
		h.txn(commit)
		h.feed(relationMsg(1, "public", "docs", identityDefault, idCol, bodyCol, noteCol))
		h.feed(updateMsg(1, 0, nil, v("1"), v(body), nil))
		if manifest {
			if err := s.committed(commit); err != nil {
				t.Fatal(err)
			}
		}
	}

	for _, tt := range []struct {
		name string
		run  func(t *testing.T, dir string) string
		want string
	}{
		{"in step", func(t *testing.T, dir string) string {
			s := openTestToast(t, dir, 0)
			write(t, s, body1, 100, true)
			s.close()
			return fill(t, openTestToast(t, dir, 100), 200)
		}, "body1"},
		{"batch cut short before its manifest", func(t *testing.T, dir string) string {
			s := openTestToast(t, dir, 0)
			write(t, s, body1, 100, true)
			write(t, s, body2, 200, false)
			if err := s.flush(); err != nil { // its writes reached the file
				t.Fatal(err)
			}
			s.close()
			// The lake's head is still 100: body2 never reached the lake,
			// and the value it replaced is gone.
			return fill(t, openTestToast(t, dir, 100), 150)
		}, "unfilled"},
		{"batch cut short, other keys kept", func(t *testing.T, dir string) string {
			s := openTestToast(t, dir, 0)
			write(t, s, body1, 100, true)
			h := newDecodeHarness(t, s)
			h.txn(200)
			h.feed(relationMsg(1, "public", "docs", identityDefault, idCol, bodyCol, noteCol))
			h.feed(insertMsg(1, v("2"), v(body2), nil))
			s.flush()
			s.close()
			return fill(t, openTestToast(t, dir, 100), 150)
		}, "body1"},
		{"crash between manifest and store", func(t *testing.T, dir string) string {
			s := openTestToast(t, dir, 0)
			write(t, s, body1, 100, true)
			write(t, s, body2, 200, false)
			s.flush()
			s.close()
			// The lake's head is 200 but the store still says 100.
			return fill(t, openTestToast(t, dir, 200), 300)
		}, "unfilled"},
		{"lake ahead of the store", func(t *testing.T, dir string) string {
			s := openTestToast(t, dir, 0)
			write(t, s, body1, 100, true)
			s.close()
			return fill(t, openTestToast(t, dir, 300), 400)
		}, "unfilled"},
		{"another lake", func(t *testing.T, dir string) string {
			s := openTestToast(t, dir, 0)
			write(t, s, body1, 100, true)
			s.close()
			other, err := openToastStore(dir, "s3://other", 100, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			defer other.close()
			return fill(t, other, 200)
		}, "unfilled"},
		{"missing store", func(t *testing.T, dir string) string {
			s := openTestToast(t, dir, 0)
			write(t, s, body1, 100, true)
			s.close()
			os.Remove(filepath.Join(dir, toastFileName))
			return fill(t, openTestToast(t, dir, 100), 200)
		}, "unfilled"},
		{"corrupt store", func(t *testing.T, dir string) string {
			s := openTestToast(t, dir, 0)
			write(t, s, body1, 100, true)
			s.close()
			os.WriteFile(filepath.Join(dir, toastFileName), bytes.Repeat([]byte{0xAB}, 64<<10), 0o600)
			return fill(t, openTestToast(t, dir, 100), 200)
		}, "unfilled"},
		{"redone batch", func(t *testing.T, dir string) string {
			s := openTestToast(t, dir, 0)
			write(t, s, body1, 100, true)
			write(t, s, body2, 200, false)
			s.flush()
			s.close()
			// The batch is redone after the crash and commits.
			s = openTestToast(t, dir, 100)
			write(t, s, body2, 200, true)
			s.close()
			return fill(t, openTestToast(t, dir, 200), 300)
		}, "body2"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.run(t, t.TempDir()); got != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
}

// TestToastStoreFull checks that a store past its size keeps no new values
// and removes those that change, so that it does not grow.
func TestToastStoreFull(t *testing.T) {
	t.Parallel()
	store := openTestToast(t, t.TempDir(), 0)
	h := newDecodeHarness(t, store)
	h.feed(relationMsg(1, "public", "docs", identityDefault, idCol, bodyCol, noteCol))
	h.feed(insertMsg(1, v("1"), v(noisy(1, 9000)), nil))
	store.maxFile = 1 // full from now on
	h.feed(
		insertMsg(1, v("2"), v(noisy(2, 9000)), nil),
		updateMsg(1, 0, nil, v("1"), unchangedTOAST, v("kept before")),
		updateMsg(1, 0, nil, v("2"), unchangedTOAST, v("not kept")),
		updateMsg(1, 0, nil, v("1"), v(noisy(3, 9000)), v("changed")),
		updateMsg(1, 0, nil, v("1"), unchangedTOAST, v("removed")),
	)
	var got []string
	for _, r := range h.rows {
		got = append(got, fmt.Sprintf("%s %s %v", r.cols[0], r.cols[2], r.unchanged))
	}
	sameStrings(t, "full store", got, []string{
		"1 NULL []", "2 NULL []", "1 kept before []", "2 not kept [body]", "1 changed []", "1 removed [body]",
	})
}

func TestToastEntryCorrupt(t *testing.T) {
	t.Parallel()
	var e toastEntry
	for _, b := range [][]byte{nil, {1, 2, 3}, append(make([]byte, 8), 0xFF), append(make([]byte, 8), 1, 'a', 1, 0, 0, 9)} {
		if err := e.decode(b); err == nil {
			t.Errorf("decode(%x) = nil, want an error", b)
		}
	}
}

// BenchmarkDecodeWithStore decodes inserts and updates of rows with a 3 kB
// value, which the TOAST state store keeps, with and without the store.
func BenchmarkDecodeWithStore(b *testing.B) {
	for _, withStore := range []bool{false, true} {
		b.Run(fmt.Sprintf("store=%v", withStore), func(b *testing.B) {
			ctx := context.Background()
			d := newDecoder(newCatalog(nil))
			if withStore {
				s, err := openToastStore(b.TempDir(), testLake, 0, slog.New(slog.DiscardHandler))
				if err != nil {
					b.Fatal(err)
				}
				defer s.close()
				d.toast = s
			}
			if err := d.relation(ctx, relationMsg(1, "public", "docs", identityDefault, idCol, bodyCol, noteCol)); err != nil {
				b.Fatal(err)
			}
			body := noisy(3, 3000)
			meta := &rowMeta{txn: spool.Txn{Xid: 7, CommitLSN: 100, CommitTime: time.Unix(1700000000, 0)}}
			emit := func(ts *tableSchema, row parquet.Row, op string, size int) error { return nil }
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				id := strconv.Itoa(i % 100000)
				msg := insertMsg(1, v(id), v(body), v("n"))
				if i%2 == 1 {
					msg = updateMsg(1, 0, nil, v(id), unchangedTOAST, v("n2"))
				}
				if err := d.change(meta, 100, msg, emit); err != nil {
					b.Fatal(err)
				}
				i++
			}
			d.toast.flush()
		})
	}
}
