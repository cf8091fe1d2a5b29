package spool

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pglogrepl"
)

// ErrLocked is returned when another process holds a lock on the spool.
var ErrLocked = errors.New("spool: locked by another process")

const (
	sealedExt = ".seg"
	openExt   = ".open"
)

// Options configures a spool. Zero values take the defaults.
type Options struct {
	// SegmentMaxBytes seals a segment at the next transaction boundary once
	// its file is this large. Default 64 MiB.
	SegmentMaxBytes int64
	// SegmentMaxAge seals a segment at the next transaction boundary once it
	// has been open this long. Default 1 minute.
	SegmentMaxAge time.Duration
	// GroupBytes is how many bytes of messages are buffered before they are
	// written in one bbolt transaction (one fsync), in the background while
	// the next group fills. Default 1 MiB.
	GroupBytes int
	// BeforeWrite, when set, runs before each group is written; an error it
	// returns fails the write as a disk error would. It is the seam through
	// which tests inject ENOSPC.
	BeforeWrite func() error
}

func (o *Options) setDefaults() {
	if o.SegmentMaxBytes <= 0 {
		o.SegmentMaxBytes = 64 << 20
	}
	if o.SegmentMaxAge <= 0 {
		o.SegmentMaxAge = time.Minute
	}
	if o.GroupBytes <= 0 {
		o.GroupBytes = 1 << 20
	}
}

// Spool is a directory of segment files.
type Spool struct {
	dir  string
	opts Options
}

// Open opens the spool in dir, creating the directory (mode 0700) if needed.
func Open(dir string, opts Options) (*Spool, error) {
	opts.setDefaults()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool: create %s: %w", dir, err)
	}
	return &Spool{dir: dir, opts: opts}, nil
}

// Dir returns the spool's directory.
func (s *Spool) Dir() string { return s.dir }

// TempDir returns a directory inside the spool for scratch files, created on
// demand; compaction writes Parquet files there before uploading them.
func (s *Spool) TempDir() (string, error) {
	d := filepath.Join(s.dir, "tmp")
	if err := os.MkdirAll(d, 0o700); err != nil {
		return "", fmt.Errorf("spool: create %s: %w", d, err)
	}
	return d, nil
}

// SegmentInfo describes one sealed segment file.
type SegmentInfo struct {
	Path      string
	FirstLSN  pglogrepl.LSN // commit LSN of its first transaction
	LastLSN   pglogrepl.LSN // commit LSN of its last transaction
	SizeBytes int64
}

// Name returns the segment's file name.
func (si SegmentInfo) Name() string { return filepath.Base(si.Path) }

// Sealed lists the sealed segments in commit order.
func (s *Spool) Sealed() ([]SegmentInfo, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("spool: list %s: %w", s.dir, err)
	}
	var segs []SegmentInfo
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, sealedExt) {
			continue
		}
		first, last, ok := parseSealedName(name)
		if !ok {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return nil, fmt.Errorf("spool: stat %s: %w", name, err)
		}
		segs = append(segs, SegmentInfo{Path: filepath.Join(s.dir, name), FirstLSN: first, LastLSN: last, SizeBytes: info.Size()})
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i].FirstLSN < segs[j].FirstLSN })
	return segs, nil
}

// openSegments lists the paths of segments that are still open (being written,
// or left behind by a capture that crashed).
func (s *Spool) openSegments() ([]string, error) {
	matches, err := filepath.Glob(filepath.Join(s.dir, "*"+openExt))
	if err != nil {
		return nil, fmt.Errorf("spool: list open segments: %w", err)
	}
	sort.Strings(matches)
	return matches, nil
}

// unsealed lists the paths of open segments and of streamed transactions in
// progress.
func (s *Spool) unsealed() ([]string, error) {
	open, err := s.openSegments()
	if err != nil {
		return nil, err
	}
	streams, err := filepath.Glob(filepath.Join(s.dir, "*"+streamExt))
	if err != nil {
		return nil, fmt.Errorf("spool: list streams: %w", err)
	}
	return append(open, streams...), nil
}

// HasOpenSegments reports whether a segment or a streamed transaction is
// still open: capture is running, or crashed and left one for the next
// capture to recover.
func (s *Spool) HasOpenSegments() (bool, error) {
	open, err := s.unsealed()
	return len(open) > 0, err
}

// Drop deletes a sealed segment once its transactions are in the lake.
func (s *Spool) Drop(si SegmentInfo) error {
	if err := os.Remove(si.Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("spool: drop %s: %w", si.Name(), err)
	}
	return syncDir(s.dir)
}

func sealedName(first, last pglogrepl.LSN) string {
	return fmt.Sprintf("%016X-%016X%s", uint64(first), uint64(last), sealedExt)
}

func parseSealedName(name string) (first, last pglogrepl.LSN, ok bool) {
	base := strings.TrimSuffix(name, sealedExt)
	a, b, found := strings.Cut(base, "-")
	if !found || len(a) != 16 || len(b) != 16 {
		return 0, 0, false
	}
	f, err1 := strconv.ParseUint(a, 16, 64)
	l, err2 := strconv.ParseUint(b, 16, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return pglogrepl.LSN(f), pglogrepl.LSN(l), true
}

// Position is a point in the commit stream: a transaction's commit LSN and the
// LSN just past its commit record, which is what the server is told.
type Position struct {
	CommitLSN pglogrepl.LSN `json:"commit_lsn"`
	EndLSN    pglogrepl.LSN `json:"end_lsn"`
}

// Committed reads the position of the newest transaction compaction has
// committed to the lake from this spool; zero when there is none.
func (s *Spool) Committed() (Position, error) {
	var p Position
	err := s.readMark("committed.json", &p)
	return p, err
}

// SetCommitted records the newest transaction now in the lake.
func (s *Spool) SetCommitted(p Position) error {
	return s.writeMark("committed.json", p)
}

// Scanned reads the position capture had reached, with every transaction
// that committed before it written to a sealed segment, when it last stopped;
// zero when unknown. Compaction may confirm the slot up to it once every
// segment is in the lake, so that an idle publication does not pin WAL.
func (s *Spool) Scanned() (pglogrepl.LSN, error) {
	var v struct {
		LSN pglogrepl.LSN `json:"lsn"`
	}
	err := s.readMark("scanned.json", &v)
	return v.LSN, err
}

// SetScanned records the position capture reached; see Scanned.
func (s *Spool) SetScanned(lsn pglogrepl.LSN) error {
	return s.writeMark("scanned.json", struct {
		LSN pglogrepl.LSN `json:"lsn"`
	}{lsn})
}

// ClearScanned forgets the scanned mark (capture does so when it starts).
func (s *Spool) ClearScanned() error {
	err := os.Remove(filepath.Join(s.dir, "scanned.json"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("spool: clear scanned mark: %w", err)
	}
	return nil
}

func (s *Spool) readMark(name string, v any) error {
	b, err := os.ReadFile(filepath.Join(s.dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("spool: read %s: %w", name, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("spool: parse %s: %w", name, err)
	}
	return nil
}

func (s *Spool) writeMark(name string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("spool: encode %s: %w", name, err)
	}
	return writeFileAtomic(s.dir, name, b)
}

// writeFileAtomic replaces dir/name with data: temp file, fsync, rename, fsync
// of the directory.
func writeFileAtomic(dir, name string, data []byte) error {
	f, err := os.CreateTemp(dir, "."+name+".tmp*")
	if err != nil {
		return fmt.Errorf("spool: write %s: %w", name, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("spool: write %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("spool: sync %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("spool: close %s: %w", name, err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fmt.Errorf("spool: chmod %s: %w", name, err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("spool: rename %s: %w", name, err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("spool: open dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("spool: sync dir %s: %w", dir, err)
	}
	return nil
}

// Lock is an exclusive advisory lock on a file in the spool directory.
type Lock struct{ f *os.File }

// Lock takes the named lock (e.g. "capture", "compact") without waiting; it
// returns an error wrapping ErrLocked when another process holds it.
func (s *Spool) Lock(name string) (*Lock, error) {
	path := filepath.Join(s.dir, name+".lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("spool: open lock %s: %w", name, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s lock in %s (is another walcake %s running?)", ErrLocked, name, s.dir, name)
		}
		return nil, fmt.Errorf("spool: lock %s: %w", name, err)
	}
	return &Lock{f: f}, nil
}

// Unlock releases the lock.
func (l *Lock) Unlock() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close() // closing releases the flock
	l.f = nil
	return err
}

// Stats summarises the spool for `walcake status`.
type Stats struct {
	Sealed     int
	Open       int // open segments and streamed transactions in progress
	Bytes      int64
	FirstLSN   pglogrepl.LSN // first commit LSN among sealed segments
	LastLSN    pglogrepl.LSN // last commit LSN among sealed segments
	Committed  Position
	OldestSeal time.Time // modification time of the oldest sealed segment
}

// Stat reports the spool's segments and marks.
func (s *Spool) Stat() (Stats, error) {
	var st Stats
	segs, err := s.Sealed()
	if err != nil {
		return st, err
	}
	for i, seg := range segs {
		st.Sealed++
		st.Bytes += seg.SizeBytes
		if i == 0 {
			st.FirstLSN = seg.FirstLSN
			if fi, err := os.Stat(seg.Path); err == nil {
				st.OldestSeal = fi.ModTime()
			}
		}
		st.LastLSN = seg.LastLSN
	}
	open, err := s.unsealed()
	if err != nil {
		return st, err
	}
	for _, p := range open {
		st.Open++
		if fi, err := os.Stat(p); err == nil {
			st.Bytes += fi.Size()
		}
	}
	st.Committed, err = s.Committed()
	return st, err
}
