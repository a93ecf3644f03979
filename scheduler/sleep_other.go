//go:build !linux

package scheduler

import "time"

// sleepShort sleeps d; without nanosleep it is a Go timer (see
// sleep_linux.go).
func sleepShort(d time.Duration) { time.Sleep(d) }
