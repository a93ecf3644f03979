package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// lagStats are dispatch-lag quantiles in milliseconds.
type lagStats struct {
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
	Min float64 `json:"min"`
}

// result is one run. The JSON fields, in this order, are exactly those of
// issue 5's result line; null marks a figure the run does not measure.
type result struct {
	System          string    `json:"system"`
	Store           string    `json:"store"`
	Point           string    `json:"point"`
	N               int       `json:"N"`
	K               int       `json:"K"`
	DMs             float64   `json:"D_ms"`
	C               int       `json:"C"`
	Attempts        int64     `json:"attempts"`
	WallS           float64   `json:"wall_s"`
	AttemptsPerS    float64   `json:"attempts_per_s"`
	LagMs           *lagStats `json:"lag_ms"`
	Early           int64     `json:"early"`
	Duplicates      int64     `json:"duplicates"`
	BytesPerPending *float64  `json:"bytes_per_pending"`

	// For the summary only.
	o                  options
	env                string
	runID              string
	dispatches         int
	earlyServer        int64
	earlyClient        int64
	earlyMax           time.Duration
	earlyExamples      []string
	aheadCount         int64
	aheadMax           time.Duration
	foreign            int64
	redisCalls         map[string]int64 // commands during the run; nil without Redis
	memoryDelta        int64
	payloadBytes       int
	slow               []redis.SlowLog
	checks             verdict
	cleanupErr         error
	unreadableStoreErr error
	cpu                cpuSample
	load0, load1       string
}

// runOnce sets up retryd, runs the workload once, reads the store's costs
// and checks the outcome.
func runOnce(ctx context.Context, o options, stderr io.Writer, retrydBin string) (*result, error) {
	env, err := setupEnvironment(ctx, o, retrydBin)
	if err != nil {
		return nil, err
	}
	defer env.close()
	var (
		res    *result
		runErr error
	)
	// The load generator's goroutines (gRPC client included) carry the
	// label side=client, retryd's side=retryd, so that one --in-process
	// profile separates them.
	pprof.Do(ctx, pprof.Labels("side", "client"), func(ctx context.Context) {
		res, runErr = measure(ctx, o, env, stderr)
	})
	return res, runErr
}

func measure(ctx context.Context, o options, env *environment, stderr io.Writer) (*result, error) {
	conns, err := openConns(env.addr, o.conns)
	if err != nil {
		return nil, err
	}
	defer closeConns(conns)
	r, err := newRunner(o, conns)
	if err != nil {
		return nil, err
	}
	res := &result{
		System: "retryd", Store: o.storeName(), Point: o.point,
		N: o.n, K: o.k, DMs: round(float64(o.delay)/float64(time.Millisecond), 3), C: o.c,
		o: o, env: env.desc, runID: r.runID, payloadBytes: r.payloadBytes,
	}

	var calls0 map[string]int64
	var mem0, file0 int64
	if env.redis != nil {
		if calls0, err = commandCalls(ctx, env.redis); err != nil {
			return nil, err
		}
		if !r.cycle {
			if mem0, err = usedMemory(ctx, env.redis); err != nil {
				return nil, err
			}
		}
	}
	if env.dataFile != "" && !r.cycle {
		if file0, err = fileSize(env.dataFile); err != nil {
			return nil, err
		}
	}
	res.load0 = loadAverage()
	cpu0 := sampleCPU(ctx, env.retrydPID, env.redis)
	start := time.Now()
	stopProfiles, err := startProfiles(o)
	if err != nil {
		return nil, err
	}
	wall, err := r.workload(ctx, stderr)
	if perr := stopProfiles(); perr != nil && err == nil {
		err = fmt.Errorf("write profiles: %w", perr)
	}
	if err != nil {
		return nil, err
	}
	res.cpu = sampleCPU(ctx, env.retrydPID, env.redis).sub(cpu0)
	res.load1 = loadAverage()

	res.Attempts = r.acked.Load()
	res.WallS = round(wall.Seconds(), 3)
	res.AttemptsPerS = round(float64(res.Attempts)/wall.Seconds(), 1)
	res.Early, res.Duplicates = r.earlyAny.Load(), r.duplicates.Load()
	res.earlyServer, res.earlyClient, res.earlyMax = r.earlyServer.Load(), r.earlyClient.Load(), time.Duration(r.earlyMax.Load())
	res.aheadCount, res.aheadMax = r.aheadCount.Load(), time.Duration(r.aheadMax.Load())
	res.foreign = r.foreign.Load()
	res.earlyExamples = r.earlyExamples
	res.dispatches = len(r.lags)
	res.LagMs = lagQuantiles(r.lags)

	if env.redis != nil {
		calls1, err := commandCalls(ctx, env.redis)
		if err != nil {
			return nil, err
		}
		res.redisCalls = commandDelta(calls0, calls1)
		if !r.cycle {
			mem1, err := usedMemory(ctx, env.redis)
			if err != nil {
				return nil, err
			}
			res.memoryDelta = mem1 - mem0
			res.BytesPerPending = perPending(res.memoryDelta, o.n, r.payloadBytes)
		}
		if res.slow, err = slowEntries(ctx, env.redis, start); err != nil {
			return nil, err
		}
	}
	if env.dataFile != "" && !r.cycle {
		file1, err := fileSize(env.dataFile)
		if err != nil {
			res.unreadableStoreErr = err
		} else {
			res.memoryDelta = file1 - file0
			res.BytesPerPending = perPending(res.memoryDelta, o.n, r.payloadBytes)
		}
	}

	if r.cycle {
		res.checks = r.verifyCycle(ctx)
	} else {
		res.checks = r.verifyPending(ctx)
		if o.target != "" {
			res.cleanupErr = r.cancelJobs(ctx)
		}
	}
	return res, nil
}

func perPending(grown int64, n, payload int) *float64 {
	v := round(float64(grown)/float64(n)-float64(payload), 1)
	return &v
}

func fileSize(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, fmt.Errorf("embedded store file: %w", err)
	}
	return fi.Size(), nil
}

func lagQuantiles(lags []int64) *lagStats {
	if len(lags) == 0 {
		return nil
	}
	slices.Sort(lags)
	q := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(lags)))) - 1
		return ms(lags[min(max(i, 0), len(lags)-1)])
	}
	return &lagStats{P50: q(0.50), P90: q(0.90), P99: q(0.99), Max: ms(lags[len(lags)-1]), Min: ms(lags[0])}
}

func ms(ns int64) float64 { return round(float64(ns)/1e6, 3) }

func round(v float64, places int) float64 {
	p := math.Pow(10, float64(places))
	return math.Round(v*p) / p
}

// checksPassed: every job ended as the workload says, nothing was
// dispatched twice, early or to the wrong run, and cleanup worked.
func (r *result) checksPassed() bool {
	return r.checks.err == nil && r.checks.bad == 0 && r.Early == 0 && r.Duplicates == 0 && r.foreign == 0 &&
		r.cleanupErr == nil && r.unreadableStoreErr == nil
}

func (r *result) writeJSON(w io.Writer) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func (r *result) printSummary(w io.Writer) {
	o := r.o
	fmt.Fprintf(w, "retryd (%s store) on the %s point: N=%d K=%d D=%v C=%d (%d Dispatch streams, %d connections)\n",
		r.Store, r.Point, r.N, r.K, o.delay, r.C, o.streams, o.conns)
	fmt.Fprintf(w, "  retryd         %s\n", r.env)
	fmt.Fprintf(w, "  attempts       %d in %.3f s = %.0f attempts/s\n", r.Attempts, r.WallS, r.AttemptsPerS)
	if l := r.LagMs; l != nil {
		fmt.Fprintf(w, "  dispatch lag   p50 %.3f ms, p90 %.3f ms, p99 %.3f ms, max %.3f ms, min %.3f ms (%d retries; receive time − the task's due_at)\n",
			l.P50, l.P90, l.P99, l.Max, l.Min, r.dispatches)
	}
	if r.Point != "memory" {
		fmt.Fprintf(w, "  early          %d (received before the task's due_at: %d; before the client's own report time + D: %d)", r.Early, r.earlyServer, r.earlyClient)
		if r.Early > 0 {
			fmt.Fprintf(w, ", by up to %v", r.earlyMax)
		}
		fmt.Fprintln(w)
		for _, e := range r.earlyExamples {
			fmt.Fprintf(w, "                 %s\n", e)
		}
		if r.aheadCount > 0 {
			fmt.Fprintf(w, "  clocks         retryd's due_at was before the client's report time + D for %d retries, by up to %v: "+
				"retryd's clock read earlier than this machine's (with Redis it schedules on Redis's clock, as it estimates it)\n",
				r.aheadCount, r.aheadMax)
		}
		fmt.Fprintf(w, "  duplicates     %d", r.Duplicates)
		if r.foreign > 0 {
			fmt.Fprintf(w, ", and %d tasks of jobs this run did not create (another worker's phase? use --phase)", r.foreign)
		}
		fmt.Fprintln(w)
	}
	r.printCPU(w)
	if r.redisCalls != nil {
		total := sumCalls(r.redisCalls)
		fmt.Fprintf(w, "  redis          %.2f commands per attempt (%d commands, those inside scripts included)\n",
			float64(total)/float64(r.Attempts), total)
		if o.verbose {
			fmt.Fprintf(w, "                 %s\n", formatCalls(r.redisCalls, r.Attempts))
		}
		if len(r.slow) == 0 {
			fmt.Fprintln(w, "  slowlog        no command over the slow-log threshold during the run")
		} else {
			fmt.Fprintf(w, "  slowlog        %d entries during the run, slowest %v: %s\n", len(r.slow), r.slow[0].Duration, slowArgs(r.slow[0]))
			if o.verbose {
				for _, e := range r.slow[1:min(len(r.slow), 10)] {
					fmt.Fprintf(w, "                 %v %s\n", e.Duration, slowArgs(e))
				}
			}
		}
	}
	if r.BytesPerPending != nil {
		what := "Redis used_memory"
		if r.Store != "redis" {
			what = "store file size"
		}
		fmt.Fprintf(w, "  memory         %.1f bytes per pending retry (%s grew %d bytes for %d retries, less the %d-byte payload each)\n",
			*r.BytesPerPending, what, r.memoryDelta, r.N, r.payloadBytes)
	}
	if r.unreadableStoreErr != nil {
		fmt.Fprintf(w, "  memory         not measured: %v\n", r.unreadableStoreErr)
	}
	switch c := r.checks; {
	case c.err != nil:
		fmt.Fprintf(w, "  checks         FAILED: could not read the jobs back: %v\n", c.err)
	case c.bad > 0:
		fmt.Fprintf(w, "  checks         FAILED: %d of %d jobs wrong:\n", c.bad, c.checked)
		for _, e := range c.examples {
			fmt.Fprintf(w, "                 %s\n", e)
		}
	case r.Point == "memory":
		fmt.Fprintf(w, "  checks         %d jobs in backoff, each with its retry due exactly %v after its failure\n", c.checked, o.delay)
	default:
		fmt.Fprintf(w, "  checks         %d jobs completed with exactly %d attempts each (GetJob)\n", c.checked, r.K+1)
	}
	if r.Early > 0 || r.Duplicates > 0 || r.foreign > 0 {
		fmt.Fprintf(w, "  checks         FAILED: %d early, %d duplicate and %d foreign dispatches\n", r.Early, r.Duplicates, r.foreign)
	}
	if r.cleanupErr != nil {
		fmt.Fprintf(w, "  cleanup        FAILED to cancel the run's jobs (prefix %s): %v\n", r.runID, r.cleanupErr)
	}
}

// printCPU says how much CPU each process used, in all and per attempt,
// and how loaded the machine was: on a shared machine the wall-clock
// figures move with other load, the CPU per attempt much less.
func (r *result) printCPU(w io.Writer) {
	var parts []string
	add := func(name string, d time.Duration) {
		if d >= 0 {
			parts = append(parts, fmt.Sprintf("%s %.2f s (%.0f µs/attempt)", name, d.Seconds(), float64(d.Microseconds())/float64(r.Attempts)))
		}
	}
	if r.cpu.retryd >= 0 {
		add("retryd", r.cpu.retryd)
		add("retrybench", r.cpu.self)
	} else if r.o.inProcess {
		add("retryd+retrybench (one process)", r.cpu.self)
	} else {
		add("retrybench", r.cpu.self)
	}
	add("redis-server", r.cpu.redis)
	fmt.Fprintf(w, "  cpu            %s over %.3f s of wall time on %d cores\n", strings.Join(parts, ", "), r.WallS, runtime.NumCPU())
	fmt.Fprintf(w, "  machine        load average %s before the run, %s after", r.load0, r.load1)
	if o := r.cpu.others(); o >= 0 && r.WallS > 0 && (r.cpu.retryd >= 0 || r.o.inProcess) {
		fmt.Fprintf(w, "; other processes used %.0f%% of a core during the run", 100*o.Seconds()/r.WallS)
	}
	fmt.Fprintln(w)
}

func slowArgs(e redis.SlowLog) string {
	args := e.Args
	if len(args) > 4 {
		args = append(slices.Clone(args[:4]), "…")
	}
	for i, a := range args {
		if len(a) > 24 {
			args[i] = a[:24] + "…"
		}
	}
	return strings.Join(args, " ")
}

// printMedians summarises several runs: the median and the spread (min to
// max) of each figure.
func printMedians(w io.Writer, rs []*result) {
	fmt.Fprintf(w, "\n%d runs, median [min … max]:\n", len(rs))
	line := func(name, unit string, get func(*result) (float64, bool)) {
		var vs []float64
		for _, r := range rs {
			if v, ok := get(r); ok {
				vs = append(vs, v)
			}
		}
		if len(vs) == 0 {
			return
		}
		slices.Sort(vs)
		fmt.Fprintf(w, "  %-20s %s [%s … %s] %s\n", name, num(median(vs)), num(vs[0]), num(vs[len(vs)-1]), unit)
	}
	line("attempts/s", "", func(r *result) (float64, bool) { return r.AttemptsPerS, true })
	line("lag p50", "ms", func(r *result) (float64, bool) { return lagOf(r, func(l *lagStats) float64 { return l.P50 }) })
	line("lag p99", "ms", func(r *result) (float64, bool) { return lagOf(r, func(l *lagStats) float64 { return l.P99 }) })
	line("lag max", "ms", func(r *result) (float64, bool) { return lagOf(r, func(l *lagStats) float64 { return l.Max }) })
	line("redis cmds/attempt", "", func(r *result) (float64, bool) {
		if r.redisCalls == nil {
			return 0, false
		}
		return float64(sumCalls(r.redisCalls)) / float64(r.Attempts), true
	})
	line("bytes/pending retry", "", func(r *result) (float64, bool) {
		if r.BytesPerPending == nil {
			return 0, false
		}
		return *r.BytesPerPending, true
	})
	failed := 0
	for _, r := range rs {
		if !r.checksPassed() {
			failed++
		}
	}
	if failed > 0 {
		fmt.Fprintf(w, "  self-checks FAILED in %d of %d runs\n", failed, len(rs))
	} else {
		fmt.Fprintf(w, "  self-checks passed in every run\n")
	}
}

func lagOf(r *result, f func(*lagStats) float64) (float64, bool) {
	if r.LagMs == nil {
		return 0, false
	}
	return f(r.LagMs), true
}

func median(sorted []float64) float64 {
	n := len(sorted)
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
}

func num(v float64) string {
	switch {
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.3f", v)
}

// progress draws a bar on stderr: redrawn in place on a terminal, a line
// every 5 s otherwise (--progress always), nothing for runs under 2 s.
type progress struct {
	w        io.Writer
	mode     string
	tty      bool
	total    int64
	shown    bool
	lastLine time.Duration
}

func newProgress(w io.Writer, mode string, total int64) *progress {
	p := &progress{w: w, mode: mode, total: total}
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	return p
}

func (p *progress) update(done int64, elapsed time.Duration) {
	if p.mode == "never" || elapsed < 2*time.Second || (p.mode == "auto" && !p.tty) {
		return
	}
	if !p.tty {
		if elapsed-p.lastLine < 5*time.Second {
			return
		}
		p.lastLine = elapsed
	}
	const width = 30
	frac := float64(done) / float64(p.total)
	bar := strings.Repeat("#", int(frac*width)) + strings.Repeat(".", width-int(frac*width))
	line := fmt.Sprintf("[%s] %3.0f%% %d/%d attempts, %.0f/s, %.0fs", bar, frac*100, done, p.total,
		float64(done)/elapsed.Seconds(), elapsed.Seconds())
	if p.tty {
		fmt.Fprintf(p.w, "\r%s", line)
	} else {
		fmt.Fprintln(p.w, line)
	}
	p.shown = true
}

func (p *progress) finish() {
	if p.shown && p.tty {
		fmt.Fprintln(p.w)
	}
}
