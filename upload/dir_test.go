package upload_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/wal-cake/wal-cake/compact"
	"github.com/wal-cake/wal-cake/compact/storetest"
	"github.com/wal-cake/wal-cake/upload"
)

var _ compact.Store = (*upload.Dir)(nil)

func TestDirConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) compact.Store {
		d, err := upload.NewDir(filepath.Join(t.TempDir(), "lake"))
		if err != nil {
			t.Fatal(err)
		}
		return d
	})
}

func newDir(t *testing.T) *upload.Dir {
	t.Helper()
	d, err := upload.NewDir(filepath.Join(t.TempDir(), "lake"))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestNewDir(t *testing.T) {
	t.Parallel()
	base := t.TempDir()
	root := filepath.Join(base, "a", "b")
	d, err := upload.NewDir(root)
	if err != nil {
		t.Fatal(err)
	}
	if got := d.Root(); got != root {
		t.Errorf("Root() = %q, want %q", got, root)
	}
	fi, err := os.Stat(root)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o700 {
		t.Errorf("root mode = %v, want 0700", got)
	}
	if got, want := d.String(), "file://"+filepath.ToSlash(root); got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	// Reopening an existing root is fine; a file is not a root.
	if _, err := upload.NewDir(root); err != nil {
		t.Errorf("NewDir of an existing directory: %v", err)
	}
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := upload.NewDir(file); err == nil {
		t.Errorf("NewDir(%q) of a file succeeded, want an error", file)
	}
	if _, err := upload.NewDir(""); err == nil {
		t.Error("NewDir(\"\") succeeded, want an error")
	}
}

func TestDirRejectsEscapingKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := newDir(t)
	outside := filepath.Join(filepath.Dir(d.Root()), "outside")
	for _, key := range []string{
		"", ".", "..", "../outside", "a/../../outside", "a/..", "./a", "a/./b",
		"/abs", "/" + outside, "a//b", "a/", "a\x00b",
		".walcake-tmp-123", "a/.walcake-tmp-x", // reserved for Dir's temporary files
	} {
		if err := d.Put(ctx, key, bytes.NewReader([]byte("x")), 1); !errors.Is(err, upload.ErrInvalidKey) {
			t.Errorf("Put(%q) = %v, want ErrInvalidKey", key, err)
		}
		if key == ".walcake-tmp-123" || key == "a/.walcake-tmp-x" {
			continue // readable names, only reserved for writing
		}
		if _, err := d.Get(ctx, key); !errors.Is(err, upload.ErrInvalidKey) {
			t.Errorf("Get(%q) = %v, want ErrInvalidKey", key, err)
		}
		if err := d.Delete(ctx, key); !errors.Is(err, upload.ErrInvalidKey) {
			t.Errorf("Delete(%q) = %v, want ErrInvalidKey", key, err)
		}
	}
	for _, prefix := range []string{"../", "../x", "/abs/", "a/../b", "a//b"} {
		err := d.List(ctx, prefix, func(compact.Object) error { return nil })
		if !errors.Is(err, upload.ErrInvalidKey) {
			t.Errorf("List(%q) = %v, want ErrInvalidKey", prefix, err)
		}
	}
	if _, err := os.Stat(outside); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("something was written outside the root: %v", err)
	}
}

func TestDirLayout(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := newDir(t)
	const key = "public.orders/dt=2026-11-25/00000000016B3748-00000000016B3790-0.parquet"
	if err := d.Put(ctx, key, bytes.NewReader([]byte("data")), 4); err != nil {
		t.Fatal(err)
	}
	// The object is a plain file at root/key, readable by any tool.
	b, err := os.ReadFile(filepath.Join(d.Root(), filepath.FromSlash(key)))
	if err != nil || string(b) != "data" {
		t.Errorf("file at key = %q, %v; want \"data\"", b, err)
	}

	// A temporary file left by a crashed Put is not an object.
	tmp := filepath.Join(d.Root(), "public.orders", ".walcake-tmp-123456")
	if err := os.WriteFile(tmp, []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	var keys []string
	if err := d.List(ctx, "", func(o compact.Object) error { keys = append(keys, o.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0] != key {
		t.Errorf("List = %q, want only %q", keys, key)
	}

	// Delete removes the directories it empties, up to (not including) the root.
	if err := os.Remove(tmp); err != nil {
		t.Fatal(err)
	}
	if err := d.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(d.Root())
	if err != nil {
		t.Fatalf("root after Delete: %v", err)
	}
	if len(entries) != 0 {
		t.Errorf("root after deleting its only key holds %d entries, want none", len(entries))
	}
}

func TestDirPutFailureKeepsOldObject(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := newDir(t)
	if err := d.Put(ctx, "k", bytes.NewReader([]byte("old")), 3); err != nil {
		t.Fatal(err)
	}
	err := d.Put(ctx, "k", io.NewSectionReader(failingReaderAt{}, 0, 1<<20), 1<<20)
	if err == nil {
		t.Fatal("Put with a failing body succeeded")
	}
	r, err := d.Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if b, _ := io.ReadAll(r); string(b) != "old" {
		t.Errorf("after a failed Put, k = %q, want \"old\"", b)
	}
	entries, _ := os.ReadDir(d.Root())
	if len(entries) != 1 {
		t.Errorf("root holds %d entries after a failed Put, want 1 (no temporary file left)", len(entries))
	}
}

type failingReaderAt struct{}

func (failingReaderAt) ReadAt([]byte, int64) (int, error) { return 0, errors.New("disk on fire") }
