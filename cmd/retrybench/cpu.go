package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// clockTick is the unit of /proc/<pid>/stat's CPU times (USER_HZ, which
// Linux fixes at 100 for user space).
const clockTick = 10 * time.Millisecond

// cpuSample is the CPU time the run's processes have used so far; a field
// is negative when it cannot be read (a --target retryd, an in-process one).
type cpuSample struct {
	retryd time.Duration
	redis  time.Duration
	self   time.Duration
}

// sampleCPU reads the CPU time of retryd (by pid), Redis (INFO cpu: its
// main and background threads) and this process.
func sampleCPU(ctx context.Context, retrydPID int, rc *redis.Client) cpuSample {
	s := cpuSample{retryd: -1, redis: -1, self: selfCPU()}
	if retrydPID > 0 {
		s.retryd = processCPU(retrydPID)
	}
	if rc != nil {
		if info, err := rc.Info(ctx, "cpu").Result(); err == nil {
			user, err1 := strconv.ParseFloat(infoField(info, "used_cpu_user"), 64)
			sys, err2 := strconv.ParseFloat(infoField(info, "used_cpu_sys"), 64)
			if err1 == nil && err2 == nil {
				s.redis = time.Duration((user + sys) * float64(time.Second))
			}
		}
	}
	return s
}

// sub is the CPU used between two samples.
func (s cpuSample) sub(before cpuSample) cpuSample {
	d := func(a, b time.Duration) time.Duration {
		if a < 0 || b < 0 {
			return -1
		}
		return a - b
	}
	return cpuSample{retryd: d(s.retryd, before.retryd), redis: d(s.redis, before.redis), self: d(s.self, before.self)}
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return -1
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// processCPU reads utime+stime of a process from /proc/<pid>/stat.
func processCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// The command name (field 2) is in parentheses and may hold spaces:
	// count fields after its closing parenthesis.
	_, rest, ok := strings.Cut(string(b), ") ")
	if !ok {
		return -1
	}
	f := strings.Fields(rest)
	if len(f) < 13 {
		return -1
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	return time.Duration(utime+stime) * clockTick
}

// loadAverage is the 1-minute load average, or "?".
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}
