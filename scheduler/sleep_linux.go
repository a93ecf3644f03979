//go:build linux

package scheduler

import (
	"syscall"
	"time"
)

// sleepShort sleeps d on the kernel's high-resolution timer (nanosleep),
// not on a Go timer, which on Linux fires up to a millisecond late (see
// timerSlack). The goroutine's thread blocks for d; d is at most
// timerSlack.
func sleepShort(d time.Duration) {
	ts := syscall.NsecToTimespec(int64(d))
	_ = syscall.Nanosleep(&ts, nil) // interrupted early: the caller checks the clock and sleeps again
}
