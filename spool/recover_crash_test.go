package spool

import (
	"os"
	"path/filepath"
	"testing"
)

// A capture killed between creating a segment's file and creating its
// buckets leaves an open segment with no bucket at all. The next writer must
// remove it, not fail on it at every start (found by the randomized crash
// test in cmd/walcake).
func TestRecoverSegmentKilledAtCreation(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sp, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "00000000000000000001"+openExt)
	db, err := openBolt(path) // a bbolt file as bolt.Open leaves it: no buckets
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	w, err := sp.OpenWriter()
	if err != nil {
		t.Fatalf("OpenWriter with a segment killed at creation: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("the bucketless segment is still there: %v", err)
	}
	if segs, err := sp.Sealed(); err != nil || len(segs) != 0 {
		t.Errorf("sealed segments %v (%v), want none", segs, err)
	}
}
