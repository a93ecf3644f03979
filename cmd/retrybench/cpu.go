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
	// all is every process's CPU time (/proc/stat), so that the summary
	// can say how much the rest of the machine used during the run.
	all time.Duration
}

// sampleCPU reads the CPU time of retryd (by pid), Redis (INFO cpu: its
// main and background threads) and this process.
func sampleCPU(ctx context.Context, retrydPID int, rc *redis.Client) cpuSample {
	s := cpuSample{retryd: -1, redis: -1, self: selfCPU(), all: machineBusy()}
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

// others is the CPU time the machine spent outside the run's processes
// (-1 when not every process of the run could be measured).
func (s cpuSample) others() time.Duration {
	if s.all < 0 || s.self < 0 || s.retryd < 0 && s.redis >= 0 {
		return -1
	}
	o := s.all - s.self - max(s.retryd, 0) - max(s.redis, 0)
	return max(o, 0)
}

// sub is the CPU used between two samples.
func (s cpuSample) sub(before cpuSample) cpuSample {
	d := func(a, b time.Duration) time.Duration {
		if a < 0 || b < 0 {
			return -1
		}
		return a - b
	}
	return cpuSample{retryd: d(s.retryd, before.retryd), redis: d(s.redis, before.redis), self: d(s.self, before.self), all: d(s.all, before.all)}
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

// machineBusy is the CPU time all processes have used so far (user, nice,
// system, irq, softirq and steal of /proc/stat's "cpu" line), or -1.
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return -1
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return -1
	}
	var ticks int64
	for _, i := range []int{1, 2, 3, 6, 7, 8} { // user nice system irq softirq steal
		v, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return -1
		}
		ticks += v
	}
	return time.Duration(ticks) * clockTick
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
