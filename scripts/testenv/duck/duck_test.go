package duck

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestReadParquet(t *testing.T) {
	db := Open(t)
	dir := t.TempDir()
	v1 := filepath.Join(dir, "v1.parquet")
	v2 := filepath.Join(dir, "v2.parquet")

	// Two schema versions: v2 adds a column.
	Rows(t, db, "COPY (SELECT 1::BIGINT AS id, 'one' AS name) TO '"+v1+"' (FORMAT parquet, COMPRESSION zstd)")
	Rows(t, db, "COPY (SELECT 2::BIGINT AS id, 'two' AS name, true AS flag) TO '"+v2+"' (FORMAT parquet, COMPRESSION zstd)")

	got := Rows(t, db, `SELECT id, name, flag FROM read_parquet(?, union_by_name=true, hive_partitioning=false) ORDER BY id`,
		filepath.Join(dir, "*.parquet"))
	want := [][]any{{int64(1), "one", nil}, {int64(2), "two", true}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("rows = %#v, want %#v", got, want)
	}

	codecs := Rows(t, db, `SELECT DISTINCT compression FROM parquet_metadata(?)`, v1)
	if len(codecs) != 1 || codecs[0][0] != "ZSTD" {
		t.Errorf("compression = %v, want ZSTD", codecs)
	}

	// Offline settings hold, and nothing went to the real home directory.
	settings := Rows(t, db, `SELECT current_setting('autoinstall_known_extensions'), current_setting('home_directory'), current_setting('TimeZone')`)
	if settings[0][0] != false || settings[0][1] == "" || settings[0][2] != "UTC" {
		t.Errorf("settings = %v", settings)
	}
	if home, _ := os.UserHomeDir(); settings[0][1] == home {
		t.Errorf("home_directory is the user's home %s", home)
	}
}
