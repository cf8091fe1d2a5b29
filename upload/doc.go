// Package upload holds the object stores that compaction writes the lake to:
// S3 (and S3-compatible servers such as MinIO or versitygw) and a local
// directory. Both satisfy compact.Store and pass the same conformance suite
// (compact/storetest).
//
// Keys are slash-separated paths relative to the store's root (the S3 bucket
// and prefix, or the directory). A key is valid when fs.ValidPath accepts it:
// no leading or trailing slash, no empty, "." or ".." elements. Both stores
// reject other keys with ErrInvalidKey, so a key can never escape the root.
//
// # Caveats
//
// An object is visible whole or not at all. S3 gives that per request; Dir
// writes a temporary file in the target directory, fsyncs it, renames it over
// the key and fsyncs the directory. A crash can leave a temporary file
// (".walcake-tmp-*"); List never reports it and the next Put of the same
// directory does not mind it.
//
// Put reads body from its start, whatever was read before, and fails without
// creating an object when body's length is not size (ErrSizeMismatch).
//
// List reports keys in ascending byte order, the order S3 uses, also for Dir:
// "a.b" sorts before "a/b". Dir cannot hold a key that is also a directory of
// other keys ("a/b" and "a/b/c"); neither can S3-compatible servers that map
// keys to files. The lake's layout never needs that.
//
// S3 sends objects below S3Config.MultipartThreshold with one PutObject and
// larger ones as a multipart upload that buffers (Concurrency+2) × PartSize
// bytes in memory. Errors never contain credentials.
package upload
