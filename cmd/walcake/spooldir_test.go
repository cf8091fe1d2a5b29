package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Run from a checkout with the default SPOOL_DIR, ./spool is wal-cake's own
// spool package: walcake must refuse it rather than write there.
func TestSpoolDirRefusesSourceTree(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "spool")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "doc.go"), []byte("package spool\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(walcakeBin, "capture")
	cmd.Dir = dir
	cmd.Env = append(minimalEnv(), "PG_CONN_STRING=postgres://nobody@127.0.0.1:1/x")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "holds Go source files") {
		t.Fatalf("walcake capture in a checkout: %v\n%s", err, out)
	}
	if entries, _ := os.ReadDir(src); len(entries) != 1 {
		t.Errorf("walcake wrote into the source directory: %d entries", len(entries))
	}
}
