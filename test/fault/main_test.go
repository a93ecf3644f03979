// Package fault_test proves retryd's guarantees against real processes and
// real faults: several retryd replicas on one redis-server, kill -9 of a
// replica (also at exact points of the dispatch cycle, through the fault
// hooks of a `-tags retrydfault` build), Redis killed and restarted, a Redis
// that refuses writes or runs out of memory. Every fault test ends with the
// conservation check of conservation_test.go.
//
// The tests start their own redis-server (internal/testredis) and retryd
// binary (built once, in TestMain), talk to them over gRPC like workers
// do, and read Redis through the store package to check the outcome.
package fault_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"
)

// retrydBin is retryd built with the fault hooks (scheduler/fault_on.go).
var retrydBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "retryd-fault")
	if err != nil {
		panic(err)
	}
	retrydBin = filepath.Join(dir, "retryd")
	out, err := exec.Command("go", "build", "-tags", "retrydfault", "-o", retrydBin, "../../cmd/retryd").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "go build -tags retrydfault ../../cmd/retryd: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goroutines leaked: %v\n", err)
			code = 1
		}
	}
	os.RemoveAll(dir)
	os.Exit(code)
}
