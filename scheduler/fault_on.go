//go:build retrydfault

package scheduler

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// fault is the point RETRYD_FAULT names and the count at which it fires.
var fault struct {
	point string
	at    int64
	seen  atomic.Int64
}

// sendFlush is how long FaultAfterSend waits before the crash: Send hands
// the message to gRPC's transport, which writes it shortly after; the point
// is a worker that holds the task when retryd dies.
const sendFlush = 100 * time.Millisecond

func init() {
	spec := os.Getenv("RETRYD_FAULT")
	if spec == "" {
		return
	}
	point, n, hasN := strings.Cut(spec, "@")
	if point != FaultAfterClaim && point != FaultAfterSend {
		fmt.Fprintf(os.Stderr, "retryd: RETRYD_FAULT=%q: unknown fault point (want %s or %s, optionally @N)\n", spec, FaultAfterClaim, FaultAfterSend)
		os.Exit(2)
	}
	at := int64(1)
	if hasN {
		v, err := strconv.ParseInt(n, 10, 64)
		if err != nil || v < 1 {
			fmt.Fprintf(os.Stderr, "retryd: RETRYD_FAULT=%q: the count after @ must be a positive number\n", spec)
			os.Exit(2)
		}
		at = v
	}
	fault.point, fault.at = point, at
	fmt.Fprintf(os.Stderr, "retryd: fault build: will crash when %s is reached for the %d. time\n", point, at)
}

// Fault crashes the process (SIGKILL, as kill -9 would: no deferred
// function, no graceful shutdown) when point is the one RETRYD_FAULT names
// and this is the configured time it is reached.
func Fault(point string) {
	if point != fault.point || fault.seen.Add(1) != fault.at {
		return
	}
	fmt.Fprintf(os.Stderr, "retryd: fault: crashing at %s\n", point)
	if point == FaultAfterSend {
		time.Sleep(sendFlush)
	}
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // SIGKILL is not delivered synchronously; never return
}
