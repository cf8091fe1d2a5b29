package upload

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

var (
	// ErrInvalidKey reports a key (or list prefix) that is not a clean
	// slash-separated relative path and could escape the store's root.
	ErrInvalidKey = errors.New("invalid key")

	// ErrSizeMismatch reports a Put whose body length differs from its size.
	ErrSizeMismatch = errors.New("body length does not match size")
)

// tempPrefix starts the name of Dir's temporary files. Keys whose last
// element starts with it are rejected, and List skips such files.
const tempPrefix = ".walcake-tmp-"

// Dir is a Store in a local directory: the object at key "a/b/c" is the file
// root/a/b/c. Files are created with mode 0600 and directories 0700 (a lake
// holds a database's rows). It is safe for concurrent use, also by several
// processes.
type Dir struct {
	root string
}

// NewDir returns a Dir rooted at root, creating the directory (mode 0700) if
// it is missing.
func NewDir(root string) (*Dir, error) {
	if root == "" {
		return nil, errors.New("dir: root is empty")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("dir: root %s: %w", root, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("dir: create root: %w", err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("dir: root: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("dir: root %s is not a directory", abs)
	}
	return &Dir{root: abs}, nil
}

// Root returns the absolute path of the directory.
func (d *Dir) Root() string { return d.root }

// String returns the store as a file URL, for logs.
func (d *Dir) String() string { return "file://" + filepath.ToSlash(d.root) }

// Put writes body to key through a temporary file in the key's directory,
// fsynced and renamed over the key; the directory is fsynced after the rename.
func (d *Dir) Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	if err := checkKey(key); err != nil {
		return fmt.Errorf("dir: put %q: %w", key, err)
	}
	if strings.HasPrefix(path.Base(key), tempPrefix) {
		return fmt.Errorf("dir: put %q: %w: names starting with %s are reserved", key, ErrInvalidKey, tempPrefix)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("dir: put %s: %w", key, context.Cause(ctx))
	}
	if _, err := body.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("dir: put %s: rewind body: %w", key, err)
	}
	dst := d.path(key)
	f, err := d.createTemp(path.Dir(key))
	if err != nil {
		return fmt.Errorf("dir: put %s: %w", key, err)
	}
	if err := writeFile(ctx, f, body, size); err != nil {
		_ = os.Remove(f.Name())
		return fmt.Errorf("dir: put %s: %w", key, err)
	}
	if err := os.Rename(f.Name(), dst); err != nil {
		_ = os.Remove(f.Name())
		return fmt.Errorf("dir: put %s: %w", key, err)
	}
	if err := syncDir(filepath.Dir(dst)); err != nil {
		return fmt.Errorf("dir: put %s: %w", key, err)
	}
	return nil
}

// createTemp creates a temporary file in directory rel (a key's directory),
// creating the directory first. A concurrent Delete may remove a directory it
// has just emptied between the two steps; createTemp then tries again.
func (d *Dir) createTemp(rel string) (*os.File, error) {
	for attempt := 0; ; attempt++ {
		if err := d.mkdirAll(rel); err != nil {
			return nil, err
		}
		f, err := os.CreateTemp(d.path(rel), tempPrefix+"*")
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, fs.ErrNotExist) || attempt == 4 {
			return nil, err
		}
	}
}

// writeFile copies exactly size bytes from body into f, fsyncs and closes it.
// f is closed whatever happens.
func writeFile(ctx context.Context, f *os.File, body io.Reader, size int64) error {
	n, err := io.Copy(f, &ctxReader{ctx: ctx, r: body})
	if err == nil && n != size {
		err = fmt.Errorf("%w: body has %d bytes, size is %d", ErrSizeMismatch, n, size)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// mkdirAll creates directory rel and its missing parents, fsyncing the parent
// of every directory it creates so that the new entries survive a crash.
func (d *Dir) mkdirAll(rel string) error {
	if rel == "." {
		return nil
	}
	if fi, err := os.Stat(d.path(rel)); err == nil && fi.IsDir() {
		return nil
	}
	if err := d.mkdirAll(path.Dir(rel)); err != nil {
		return err
	}
	err := os.Mkdir(d.path(rel), 0o700)
	if errors.Is(err, fs.ErrExist) {
		return nil // made concurrently, or a file: CreateTemp will say which
	}
	if err != nil {
		return err
	}
	return syncDir(d.path(path.Dir(rel)))
}

// Get opens the file at key. A missing key, or a key naming a directory,
// returns an error wrapping fs.ErrNotExist.
func (d *Dir) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := checkKey(key); err != nil {
		return nil, fmt.Errorf("dir: get %q: %w", key, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("dir: get %s: %w", key, context.Cause(ctx))
	}
	f, err := os.Open(d.path(key))
	if errors.Is(err, syscall.ENOTDIR) {
		return nil, fmt.Errorf("dir: get %s: %w", key, fs.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("dir: get %s: %w", key, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("dir: get %s: %w", key, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("dir: get %s: %w", key, fs.ErrNotExist)
	}
	return f, nil
}

// List calls fn for every file whose key starts with prefix, in ascending key
// order. Temporary files of unfinished Puts are skipped.
func (d *Dir) List(ctx context.Context, prefix string, fn func(Object) error) error {
	if err := checkPrefix(prefix); err != nil {
		return fmt.Errorf("dir: list %q: %w", prefix, err)
	}
	start := ""
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		start = prefix[:i]
	}
	err := d.walk(ctx, start, prefix, fn)
	var fe fnError
	if errors.As(err, &fe) {
		return fe.err // fn's own error, as it was
	}
	if err != nil {
		return fmt.Errorf("dir: list %s: %w", prefix, err)
	}
	return nil
}

// fnError carries an error of List's callback through walk.
type fnError struct{ err error }

func (e fnError) Error() string { return e.err.Error() }

// walk lists directory rel ("" for the root) depth first. Entries are sorted
// by key, a directory's key ending in "/", so that the files come out in the
// byte order of their full keys.
func (d *Dir) walk(ctx context.Context, rel, prefix string, fn func(Object) error) error {
	entries, err := os.ReadDir(d.path(rel))
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil // gone, or never there: nothing under it
	}
	if err != nil {
		return err
	}
	type item struct {
		key   string // a directory's ends in "/"
		entry fs.DirEntry
	}
	items := make([]item, 0, len(entries))
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, tempPrefix) {
			continue
		}
		key := name
		if rel != "" {
			key = rel + "/" + name
		}
		switch {
		case e.IsDir():
			key += "/"
			if !strings.HasPrefix(key, prefix) && !strings.HasPrefix(prefix, key) {
				continue
			}
		case e.Type().IsRegular():
			if !strings.HasPrefix(key, prefix) {
				continue
			}
		default:
			continue // symlinks, sockets: not objects
		}
		items = append(items, item{key: key, entry: e})
	}
	sort.Slice(items, func(i, j int) bool { return items[i].key < items[j].key })
	for _, it := range items {
		if err := ctx.Err(); err != nil {
			return context.Cause(ctx)
		}
		if it.entry.IsDir() {
			if err := d.walk(ctx, strings.TrimSuffix(it.key, "/"), prefix, fn); err != nil {
				return err
			}
			continue
		}
		fi, err := it.entry.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted since ReadDir
		}
		if err != nil {
			return err
		}
		if err := fn(Object{Key: it.key, Size: fi.Size()}); err != nil {
			return fnError{err}
		}
	}
	return nil
}

// Delete removes the file at key, then every parent directory that is left
// empty, up to the root. An absent key is not an error.
func (d *Dir) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return fmt.Errorf("dir: delete %q: %w", key, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("dir: delete %s: %w", key, context.Cause(ctx))
	}
	p := d.path(key)
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("dir: delete %s: %w", key, err)
	}
	if fi.IsDir() {
		return nil // a directory of other keys, not an object
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("dir: delete %s: %w", key, err)
	}
	for dir := path.Dir(key); dir != "."; dir = path.Dir(dir) {
		if os.Remove(d.path(dir)) != nil {
			break // not empty (or already gone): stop climbing
		}
	}
	return nil
}

// path returns the file path of key (or key directory) rel.
func (d *Dir) path(rel string) string {
	if rel == "" || rel == "." {
		return d.root
	}
	return filepath.Join(d.root, filepath.FromSlash(rel))
}

// Object describes one stored object: its key, relative to the store's root,
// and its size in bytes. It is the same type as compact.Object (both are
// aliases of this unnamed struct), so the stores satisfy compact.Store without
// this package importing compact.
type Object = struct {
	Key  string
	Size int64
}

// checkKey reports whether key is a clean relative slash-separated path, the
// same rule for every store so that a lake can move between them.
func checkKey(key string) error {
	if !fs.ValidPath(key) || key == "." || strings.ContainsRune(key, 0) {
		return ErrInvalidKey
	}
	return nil
}

// checkPrefix accepts "" and any prefix whose directory part (up to the last
// slash) is a valid key; the last element is only compared as a string.
func checkPrefix(prefix string) error {
	if strings.ContainsRune(prefix, 0) {
		return ErrInvalidKey
	}
	i := strings.LastIndexByte(prefix, '/')
	if i < 0 {
		return nil
	}
	return checkKey(prefix[:i])
}

// syncDir fsyncs a directory so that entries created or renamed in it are
// durable.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// ctxReader stops a copy when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r *ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, context.Cause(r.ctx)
	}
	return r.r.Read(p)
}
