package compact

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
)

const (
	manifestPrefix = "_walcake/manifests/"
	schemaPrefix   = "_walcake/schemas/"
)

// lsnHex is an LSN in fixed-width hex, so that names sort like LSNs.
func lsnHex(lsn pglogrepl.LSN) string { return fmt.Sprintf("%016X", uint64(lsn)) }

func parseLSNHex(s string) (pglogrepl.LSN, error) {
	v, err := strconv.ParseUint(s, 16, 64)
	if err != nil || len(s) != 16 {
		return 0, fmt.Errorf("not a fixed-width hex LSN: %q", s)
	}
	return pglogrepl.LSN(v), nil
}

// dataKey is <schema>.<table>/dt=<YYYY-MM-DD>/<first>-<last>-<n>.parquet.
func dataKey(table string, day time.Time, first, last pglogrepl.LSN, n int) string {
	return fmt.Sprintf("%s/dt=%s/%s-%s-%d.parquet", table, day.UTC().Format(time.DateOnly), lsnHex(first), lsnHex(last), n)
}

func manifestKey(last pglogrepl.LSN) string { return manifestPrefix + lsnHex(last) + ".json" }

func schemaKey(table, version string) string { return schemaPrefix + table + "/" + version + ".json" }

// tableName is how a table is named in the lake: <schema>.<table>, exact
// but for the characters that would break a path or make two tables share a
// name, which are percent-encoded: '%', '.', '/', '\\' ("a.b"."c" is
// a%2Eb.c, "a"."b.c" is a.b%2Ec). [issue 4: same-named tables never collide]
func tableName(schema, table string) string {
	return sanitize(schema) + "." + sanitize(table)
}

func sanitize(s string) string {
	if !strings.ContainsAny(s, "%./\\\x00") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '%', '.', '/', '\\', 0:
			fmt.Fprintf(&b, "%%%02X", c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
