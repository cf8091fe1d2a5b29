// Package storetest is the conformance suite for compact.Store: every store
// (upload.Dir, upload.S3, test fakes) must pass Run.
package storetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/wal-cake/wal-cake/compact"
)

// LargeObjectSize is the size of the suite's large objects: 12 MiB plus a few
// bytes, so that a store configured with a multipart threshold and part size
// of 5 MiB (S3's minimum) sends three parts, the last one short. Callers that
// build the store choose those thresholds.
const LargeObjectSize = 12<<20 + 7

// Run runs the suite. newStore is called once per subtest and returns an
// empty store for it (a fresh directory, a fresh key prefix); subtests run in
// parallel.
func Run(t *testing.T, newStore func(t *testing.T) compact.Store) {
	tests := []struct {
		name string
		run  func(t *testing.T, s compact.Store)
	}{
		{"RoundTrip", testRoundTrip},
		{"Overwrite", testOverwrite},
		{"GetMissing", testGetMissing},
		{"List", testList},
		{"ListLakeKeys", testListLakeKeys},
		{"ListStops", testListStops},
		{"Delete", testDelete},
		{"Large", testLarge},
		{"PartlyReadBody", testPartlyReadBody},
		{"SizeMismatch", testSizeMismatch},
		{"Cancelled", testCancelled},
		{"Concurrent", testConcurrent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.run(t, newStore(t))
		})
	}
}

// ctx returns a context for one subtest, bounded so that a hung store fails
// the test instead of stalling the run.
func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

// data returns n deterministic pseudo-random bytes.
func data(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, uint64(n)))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n - n%8; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

func put(t *testing.T, s compact.Store, key string, body []byte) {
	t.Helper()
	if err := s.Put(ctx(t), key, bytes.NewReader(body), int64(len(body))); err != nil {
		t.Fatalf("Put(%q, %d bytes): %v", key, len(body), err)
	}
}

func get(t *testing.T, s compact.Store, key string) []byte {
	t.Helper()
	r, err := s.Get(ctx(t), key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("Get(%q): read: %v", key, err)
	}
	return b
}

// checkBody compares without printing megabytes.
func checkBody(t *testing.T, key string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Errorf("Get(%q) = %d bytes (sha256 %x), want %d bytes (sha256 %x)",
			key, len(got), sha256.Sum256(got), len(want), sha256.Sum256(want))
	}
}

func list(t *testing.T, s compact.Store, prefix string) []compact.Object {
	t.Helper()
	var got []compact.Object
	err := s.List(ctx(t), prefix, func(o compact.Object) error {
		got = append(got, o)
		return nil
	})
	if err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	return got
}

func checkMissing(t *testing.T, s compact.Store, key string) {
	t.Helper()
	r, err := s.Get(ctx(t), key)
	if err == nil {
		r.Close()
		t.Errorf("Get(%q) succeeded, want an error wrapping fs.ErrNotExist", key)
		return
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Get(%q) = %v, want an error wrapping fs.ErrNotExist", key, err)
	}
}

func testRoundTrip(t *testing.T, s compact.Store) {
	tests := []struct {
		key  string
		size int
	}{
		{"x", 1},
		{"empty", 0},
		{"public.orders/dt=2026-11-25/00000000016B3748-00000000016B3790-0.parquet", 4096},
		{"_walcake/manifests/00000000016B3790.json", 300},
		{"_walcake/schemas/public.orders/1.json", 120},
		{"Mixed Case/with space/ünïcode=ok.bin", 10},
		{"deep/a/b/c/d/e/f/g/h", 64<<10 + 3},
	}
	for i, tt := range tests {
		body := data(tt.size, uint64(i))
		put(t, s, tt.key, body)
		checkBody(t, tt.key, get(t, s, tt.key), body)
	}
	var want []compact.Object
	for _, tt := range tests {
		want = append(want, compact.Object{Key: tt.key, Size: int64(tt.size)})
	}
	slices.SortFunc(want, func(a, b compact.Object) int { return compareKeys(a.Key, b.Key) })
	checkList(t, "", list(t, s, ""), want)
}

func compareKeys(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func checkList(t *testing.T, prefix string, got, want []compact.Object) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("List(%q):\n got %v\nwant %v", prefix, got, want)
	}
}

func testOverwrite(t *testing.T, s compact.Store) {
	const key = "t/overwrite.parquet"
	long, short := data(10_000, 1), data(100, 2)
	put(t, s, key, long)
	put(t, s, key, short)
	checkBody(t, key, get(t, s, key), short)
	checkList(t, "t/", list(t, s, "t/"), []compact.Object{{Key: key, Size: 100}})
	put(t, s, key, nil)
	checkBody(t, key, get(t, s, key), nil)
	checkList(t, "t/", list(t, s, "t/"), []compact.Object{{Key: key, Size: 0}})
}

func testGetMissing(t *testing.T, s compact.Store) {
	checkMissing(t, s, "never/written.parquet")
	put(t, s, "dir/sub/file", []byte("x"))
	checkMissing(t, s, "dir/sub")       // a "directory", not an object
	checkMissing(t, s, "dir/sub/file2") // a sibling
	checkMissing(t, s, "dir/sub/file/x")
	checkMissing(t, s, "dir/sub/fil") // a prefix of a key
}

// listKeys, in ascending order, holds keys that sort differently as strings
// and as paths walked directory by directory ("a.b" < "a/b" because '.' < '/').
var listKeys = []compact.Object{
	{Key: "a.b", Size: 1},
	{Key: "a/b", Size: 2},
	{Key: "a/bc/x", Size: 3},
	{Key: "a/c-d", Size: 6}, // '-' < '/'
	{Key: "a/c/d", Size: 4},
	{Key: "a/c/d.e", Size: 5},
	{Key: "ab", Size: 7},
	{Key: "b/z", Size: 0},
}

func testList(t *testing.T, s compact.Store) {
	// Put in reverse order: List must sort, not replay.
	for i := len(listKeys) - 1; i >= 0; i-- {
		put(t, s, listKeys[i].Key, data(int(listKeys[i].Size), uint64(i)))
	}
	// pick returns the objects of keys in listKeys' (ascending) order.
	pick := func(keys ...string) []compact.Object {
		var objs []compact.Object
		for _, o := range listKeys {
			if slices.Contains(keys, o.Key) {
				objs = append(objs, o)
			}
		}
		return objs
	}
	tests := []struct {
		prefix string
		want   []compact.Object
	}{
		{"", listKeys},
		{"a", pick("a.b", "a/b", "a/bc/x", "a/c/d", "a/c/d.e", "a/c-d", "ab")},
		{"a/", pick("a/b", "a/bc/x", "a/c/d", "a/c/d.e", "a/c-d")},
		{"a/b", pick("a/b", "a/bc/x")},
		{"a/bc", pick("a/bc/x")},
		{"a/bc/", pick("a/bc/x")},
		{"a/bc/x", pick("a/bc/x")},
		{"a/c", pick("a/c/d", "a/c/d.e", "a/c-d")},
		{"a/c/", pick("a/c/d", "a/c/d.e")},
		{"a/c/d", pick("a/c/d", "a/c/d.e")},
		{"b/", pick("b/z")},
		{"c", nil},
		{"a/bd", nil},
		{"a/bc/x/", nil},
		{"a/c/d/e", nil},
		{"zzz/", nil},
	}
	for _, tt := range tests {
		checkList(t, tt.prefix, list(t, s, tt.prefix), tt.want)
	}
}

func testListLakeKeys(t *testing.T, s compact.Store) {
	// LSNs are fixed-width hex, so names sort like LSNs.
	keys := []string{
		"_walcake/manifests/00000000016B3790.json",
		"_walcake/manifests/0000000001700000.json",
		"_walcake/manifests/00000000FFFFFFFF.json",
		"_walcake/schemas/public.orders/1.json",
		"public.orders/dt=2026-11-24/00000000016B3700-00000000016B3748-0.parquet",
		"public.orders/dt=2026-11-25/00000000016B3748-00000000016B3790-0.parquet",
		"public.orders/dt=2026-11-25/00000000016B3748-00000000016B3790-1.parquet",
		"public.orders/dt=2026-11-25/00000000016B3790-0000000001700000-0.parquet",
		"public.orders_archive/dt=2026-11-25/00000000016B3748-00000000016B3790-0.parquet",
	}
	for i, k := range slices.Backward(keys) {
		put(t, s, k, data(100+i, uint64(i)))
	}
	objs := func(ks []string) []compact.Object {
		var o []compact.Object
		for _, k := range ks {
			i := slices.Index(keys, k)
			o = append(o, compact.Object{Key: k, Size: int64(100 + i)})
		}
		return o
	}
	checkList(t, "_walcake/manifests/", list(t, s, "_walcake/manifests/"), objs(keys[:3]))
	checkList(t, "public.orders/", list(t, s, "public.orders/"), objs(keys[4:8]))
	checkList(t, "public.orders/dt=2026-11-25/", list(t, s, "public.orders/dt=2026-11-25/"), objs(keys[5:8]))
	checkList(t, "public.orders", list(t, s, "public.orders"), objs(keys[4:]))
	checkList(t, "", list(t, s, ""), objs(keys))
}

func testListStops(t *testing.T, s compact.Store) {
	for i := range 5 {
		put(t, s, fmt.Sprintf("stop/%d", i), []byte{byte(i)})
	}
	stop := errors.New("stop here")
	var seen []string
	err := s.List(ctx(t), "stop/", func(o compact.Object) error {
		seen = append(seen, o.Key)
		if len(seen) == 2 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) {
		t.Errorf("List with fn failing = %v, want fn's error", err)
	}
	if want := []string{"stop/0", "stop/1"}; !slices.Equal(seen, want) {
		t.Errorf("List called fn with %v, want %v and then stop", seen, want)
	}
}

func testDelete(t *testing.T, s compact.Store) {
	c := ctx(t)
	put(t, s, "del/a/b/c", []byte("c"))
	put(t, s, "del/a/b/d", []byte("dd"))
	put(t, s, "del/x", []byte("x"))

	if err := s.Delete(c, "del/a/b/c"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	checkMissing(t, s, "del/a/b/c")
	checkBody(t, "del/a/b/d", get(t, s, "del/a/b/d"), []byte("dd"))
	checkList(t, "del/", list(t, s, "del/"), []compact.Object{{Key: "del/a/b/d", Size: 2}, {Key: "del/x", Size: 1}})

	// Emptying a directory and writing into it again.
	if err := s.Delete(c, "del/a/b/d"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	checkList(t, "del/a", list(t, s, "del/a"), nil)
	put(t, s, "del/a/b/e", []byte("e"))
	checkList(t, "del/a", list(t, s, "del/a"), []compact.Object{{Key: "del/a/b/e", Size: 1}})

	for _, key := range []string{
		"del/a/b/c",     // deleted already
		"never/written", // never there
		"del/a/b",       // a "directory" of another key
		"del/x/y",       // under an object
	} {
		if err := s.Delete(c, key); err != nil {
			t.Errorf("Delete(%q) of an absent key = %v, want nil", key, err)
		}
	}
	checkBody(t, "del/a/b/e", get(t, s, "del/a/b/e"), []byte("e"))
	checkBody(t, "del/x", get(t, s, "del/x"), []byte("x"))
}

func testLarge(t *testing.T, s compact.Store) {
	for _, size := range []int{5 << 20, LargeObjectSize} {
		key := fmt.Sprintf("large/%d.parquet", size)
		body := data(size, 7)
		put(t, s, key, body)
		checkBody(t, key, get(t, s, key), body)
		checkList(t, key, list(t, s, key), []compact.Object{{Key: key, Size: int64(size)}})
	}
}

// testPartlyReadBody: Put sends the whole body even when the caller (or an
// earlier failed attempt) has already read part of it.
func testPartlyReadBody(t *testing.T, s compact.Store) {
	for _, size := range []int{100, LargeObjectSize} {
		key := fmt.Sprintf("partly/%d", size)
		body := data(size, 9)
		r := bytes.NewReader(body)
		if _, err := io.CopyN(io.Discard, r, 10); err != nil {
			t.Fatal(err)
		}
		if err := s.Put(ctx(t), key, r, int64(size)); err != nil {
			t.Fatalf("Put(%q) of a partly read body: %v", key, err)
		}
		checkBody(t, key, get(t, s, key), body)
	}
}

// testSizeMismatch: a size that is not the body's length fails and leaves
// the key as it was.
func testSizeMismatch(t *testing.T, s compact.Store) {
	const key = "mismatch/x"
	old := []byte("old contents")
	put(t, s, key, old)
	for _, size := range []int64{5, 100} {
		body := data(50, 3)
		if err := s.Put(ctx(t), key, bytes.NewReader(body), size); err == nil {
			t.Errorf("Put(%d-byte body, size %d) succeeded, want an error", len(body), size)
		}
		checkBody(t, key, get(t, s, key), old)
	}
	if err := s.Put(ctx(t), "mismatch/new", bytes.NewReader([]byte("abc")), 4); err == nil {
		t.Errorf("Put(3-byte body, size 4) succeeded, want an error")
	}
	checkMissing(t, s, "mismatch/new")
}

func testCancelled(t *testing.T, s compact.Store) {
	put(t, s, "cancel/existing", []byte("x"))
	c, cancel := context.WithCancel(ctx(t))
	cancel()
	check := func(op string, err error) {
		t.Helper()
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a cancelled context = %v, want an error wrapping context.Canceled", op, err)
		}
	}
	for _, size := range []int{10, LargeObjectSize} {
		key := fmt.Sprintf("cancel/new-%d", size)
		check("Put", s.Put(c, key, bytes.NewReader(data(size, 1)), int64(size)))
		checkMissing(t, s, key)
	}
	r, err := s.Get(c, "cancel/existing")
	if err == nil {
		// A lazy store may open without I/O; reading must then fail.
		_, err = io.ReadAll(r)
		r.Close()
	}
	check("Get", err)
	check("List", s.List(c, "cancel/", func(compact.Object) error { return nil }))
	check("Delete", s.Delete(c, "cancel/existing"))
	checkBody(t, "cancel/existing", get(t, s, "cancel/existing"), []byte("x"))
}

// testConcurrent puts and deletes keys of one directory from several
// goroutines, the way compaction's uploads and orphan clean-up overlap.
func testConcurrent(t *testing.T, s compact.Store) {
	const n = 16
	c := ctx(t)
	for i := range n {
		put(t, s, fmt.Sprintf("conc/d/old-%02d", i), []byte("old"))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range n {
		wg.Go(func() {
			key := fmt.Sprintf("conc/d/new-%02d", i)
			body := data(1000+i, uint64(i))
			errs <- s.Put(c, key, bytes.NewReader(body), int64(len(body)))
		})
		wg.Go(func() {
			errs <- s.Delete(c, fmt.Sprintf("conc/d/old-%02d", i))
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	var want []compact.Object
	for i := range n {
		want = append(want, compact.Object{Key: fmt.Sprintf("conc/d/new-%02d", i), Size: int64(1000 + i)})
	}
	checkList(t, "conc/", list(t, s, "conc/"), want)
}
