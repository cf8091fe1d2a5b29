package compact

import (
	"context"
	"io"
)

// Store is what compaction needs from an object store. Keys are
// slash-separated paths relative to the lake's root (the store applies its own
// bucket and prefix). upload.S3 and upload.Dir implement it; the suite in
// compact/storetest checks every implementation against these contracts.
type Store interface {
	// Put writes the object at key, replacing any object already there. The
	// object becomes visible whole or not at all. size is body's length in
	// bytes; body may be read more than once (it is rewound on retries).
	Put(ctx context.Context, key string, body io.ReadSeeker, size int64) error

	// Get opens the object at key. It returns an error wrapping fs.ErrNotExist
	// when the key is absent. The caller closes the reader.
	Get(ctx context.Context, key string) (io.ReadCloser, error)

	// List calls fn for every object whose key starts with prefix, in
	// ascending key order. It stops early and returns fn's error if fn fails.
	List(ctx context.Context, prefix string, fn func(Object) error) error

	// Delete removes the object at key. Deleting an absent key is not an
	// error.
	Delete(ctx context.Context, key string) error
}

// Object describes one stored object. It is an alias of an unnamed struct
// type so that a store can produce it without importing this package
// (upload declares the identical alias and so satisfies Store without
// depending on compact).
type Object = struct {
	Key  string // relative to the lake's root
	Size int64  // bytes
}
