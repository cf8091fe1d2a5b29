package upload_test

import (
	"os"
	"testing"

	"github.com/wal-cake/wal-cake/scripts/testenv"
)

// TestMain stops the shared S3 test server after the tests.
func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }
