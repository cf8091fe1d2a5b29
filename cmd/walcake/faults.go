package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

// Test seams, set through the environment so that tests can drive the real
// binary. They are not options for production use.
const (
	// envFailpoint names a step at which the process kills itself with
	// SIGKILL: "compact-after-manifest", or "compact-after-first-upload:2"
	// for the second time the step is reached. "<step>:hang" blocks there
	// instead, deaf to cancellation, like a step that does not stop: the
	// signal tests use it.
	envFailpoint = "WALCAKE_FAILPOINT"
	// envSpoolENOSPC makes every spool write after the first N fail with
	// ENOSPC, as a full disk would.
	envSpoolENOSPC = "WALCAKE_FAULT_SPOOL_ENOSPC_AFTER"
)

// failpointFromEnv returns the failpoint function WALCAKE_FAILPOINT asks
// for, or nil.
func failpointFromEnv() func(string) {
	spec := os.Getenv(envFailpoint)
	if spec == "" {
		return nil
	}
	name, countText, _ := strings.Cut(spec, ":")
	if countText == "hang" {
		return func(step string) {
			if step == name {
				fmt.Fprintf(os.Stderr, "walcake: failpoint %s reached, hanging\n", step)
				select {}
			}
		}
	}
	want := 1
	if n, err := strconv.Atoi(countText); err == nil && n > 0 {
		want = n
	}
	var mu sync.Mutex
	hits := 0
	return func(step string) {
		if step != name {
			return
		}
		mu.Lock()
		hits++
		fire := hits == want
		mu.Unlock()
		if fire {
			fmt.Fprintf(os.Stderr, "walcake: failpoint %s reached, killing the process\n", step)
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // the signal is on its way
		}
	}
}

// spoolFaultFromEnv returns a spool BeforeWrite hook that fails writes with
// ENOSPC after the number of writes WALCAKE_FAULT_SPOOL_ENOSPC_AFTER gives,
// or nil.
func spoolFaultFromEnv() func() error {
	n, err := strconv.Atoi(os.Getenv(envSpoolENOSPC))
	if err != nil || n < 0 {
		return nil
	}
	var writes atomic.Int64
	return func() error {
		if writes.Add(1) > int64(n) {
			return syscall.ENOSPC
		}
		return nil
	}
}
