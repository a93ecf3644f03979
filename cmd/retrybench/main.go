// Command retrybench measures retryd on the "retry cycle" workload of
// issue 5 and checks that retryd got it right.
//
// N jobs start at once: each job's original attempt fails and is reported
// (ReportFailure, retry_count 0); every retry retryd dispatches fails again
// until the job has failed K times, and its next attempt succeeds
// (ReportSuccess). Every delay is exactly D (jitter 0). The workers are
// Dispatch streams with C tasks in flight in all. A retry's due time is the
// moment its previous failure was reported plus D, and its dispatch lag is
// the moment the worker received it minus that due time.
//
//	retrybench --spawn redis --point throughput
//	retrybench --spawn embedded --point lag --runs 5
//	retrybench --target 127.0.0.1:50051 --point lag --n 500
//
// It runs against a retryd it starts (--spawn redis: with a redis-server it
// starts on a free loopback port, never 6379; --spawn embedded: in a
// temporary data directory) or against a running one (--target). A readable
// summary goes to standard error, with a progress bar on long runs; the
// last line of each run on standard output is one JSON object with the
// fields issue 5 lists. The exit status is 1 when a self-check failed
// (a job without exactly K+1 attempts, a duplicate or an early dispatch)
// and 2 on a usage or setup error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"
)

// Exit statuses.
const (
	exitOK      = 0
	exitChecks  = 1 // the run finished but a self-check failed
	exitFailure = 2 // usage, setup or a run that could not finish
)

// loadGeneratorGOGC is the load generator's GOGC: a fourth of the
// collections of Go's default 100, for a heap that stays small anyway.
const loadGeneratorGOGC = 400

// point is a standard workload point of issue 5.
type point struct {
	n, k, c int
	d       time.Duration
}

// points are the standard points. The throughput point's D is 1 ms because
// retryd's delays must be positive (the issue allows "0 (or 1 ms)"). The
// memory point stops once its M retries are pending (due in an hour): K=1
// says that each job has failed once.
var points = map[string]point{
	"throughput": {n: 20000, k: 3, c: 50, d: time.Millisecond},
	"lag":        {n: 2000, k: 3, c: 50, d: 2 * time.Second},
	"memory":     {n: 200000, k: 1, c: 50, d: time.Hour},
}

// options is the parsed command line.
type options struct {
	target        string
	spawn         string
	retrydPath    string
	inProcess     bool
	point         string
	n, k, c       int
	delay         time.Duration
	streams       int
	conns         int
	phase         string
	runs          int
	storeLabel    string
	targetRedis   string
	targetDataDir string
	redisSocket   bool
	cpuProfile    string
	memProfile    string
	timeout       time.Duration
	progress      string
	verbose       bool
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is the whole command; it returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	opts, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintln(stderr, "retrybench:", err)
		return exitFailure
	}
	// The load generator shares the cores with retryd and Redis: it spends
	// memory rather than CPU on its garbage, unless GOGC says otherwise.
	// With --in-process the heap is retryd's too and keeps Go's default.
	if os.Getenv("GOGC") == "" && !opts.inProcess {
		defer debug.SetGCPercent(debug.SetGCPercent(loadGeneratorGOGC))
	}
	retrydBin := opts.retrydPath
	if opts.spawn != "" && !opts.inProcess && retrydBin == "" {
		dir, err := os.MkdirTemp("", "retrybench-bin-")
		if err != nil {
			fmt.Fprintln(stderr, "retrybench:", err)
			return exitFailure
		}
		defer os.RemoveAll(dir)
		if retrydBin, err = buildRetryd(ctx, dir); err != nil {
			fmt.Fprintln(stderr, "retrybench:", err)
			return exitFailure
		}
	}
	code := exitOK
	var results []*result
	for i := range opts.runs {
		if ctx.Err() != nil {
			return exitFailure
		}
		if opts.runs > 1 {
			fmt.Fprintf(stderr, "\nrun %d of %d\n", i+1, opts.runs)
		}
		res, err := runOnce(ctx, opts, stderr, retrydBin)
		if err != nil {
			fmt.Fprintln(stderr, "retrybench:", err)
			return exitFailure
		}
		res.printSummary(stderr)
		if err := res.writeJSON(stdout); err != nil {
			fmt.Fprintln(stderr, "retrybench:", err)
			return exitFailure
		}
		if !res.checksPassed() {
			code = exitChecks
		}
		results = append(results, res)
	}
	if len(results) > 1 {
		printMedians(stderr, results)
	}
	return code
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("retrybench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.target, "target", "", "address of a running retryd (host:port); or use --spawn")
	fs.StringVar(&o.spawn, "spawn", "", `start a retryd for the run: "redis" (with its own redis-server) or "embedded" (temporary data dir)`)
	fs.StringVar(&o.retrydPath, "retryd", "", "retryd binary for --spawn (default: go build ./cmd/retryd into a temporary directory)")
	fs.BoolVar(&o.inProcess, "in-process", false, "with --spawn: run retryd inside this process instead (for --cpuprofile/--memprofile)")
	fs.StringVar(&o.point, "point", "throughput", "standard point: throughput, lag or memory")
	fs.IntVar(&o.n, "n", 0, "jobs (memory point: pending retries M); 0 = the point's")
	fs.IntVar(&o.k, "k", 0, "failures per job before its success; 0 = the point's")
	fs.DurationVar(&o.delay, "delay", 0, "every retry delay D; 0 = the point's")
	fs.IntVar(&o.c, "concurrency", 0, "tasks in flight over all Dispatch streams (and concurrent reports); 0 = the point's")
	fs.IntVar(&o.streams, "streams", 4, "Dispatch streams sharing the concurrency")
	fs.IntVar(&o.conns, "conns", 2, "gRPC connections to retryd")
	fs.StringVar(&o.phase, "phase", "retrybench", "phase of the benchmark's jobs (use a distinct one per concurrent run on one retryd)")
	fs.IntVar(&o.runs, "runs", 1, "repeat the run (each --spawn run on a fresh retryd); the medians go to stderr")
	fs.StringVar(&o.storeLabel, "store", "", `with --target: the store to name in the results ("redis", "embedded")`)
	fs.StringVar(&o.targetRedis, "target-redis", "", "with --target: Redis URL of its store, to read INFO (commands per attempt, memory)")
	fs.StringVar(&o.targetDataDir, "target-data-dir", "", "with --target: data directory of its embedded store, to measure the file's growth")
	fs.BoolVar(&o.redisSocket, "redis-socket", false, "with --spawn redis: a unix socket instead of a loopback TCP port")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of this process during the run (with --in-process retryd's too, labelled side=retryd|client)")
	fs.StringVar(&o.memProfile, "memprofile", "", "write an allocation profile of this process at the end of the run (with --in-process retryd's too)")
	fs.DurationVar(&o.timeout, "timeout", 15*time.Minute, "give up on a run after this long")
	fs.StringVar(&o.progress, "progress", "auto", "progress bar on stderr: auto (a terminal, runs over 2s), always or never")
	fs.BoolVar(&o.verbose, "v", false, "more detail in the summary (Redis commands by name, SLOWLOG entries)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: retrybench (--spawn redis|embedded | --target ADDR) [flags]\n\n"+
			"Runs issue 5's retry-cycle workload against retryd and checks the result.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	p, ok := points[o.point]
	if !ok {
		return o, fmt.Errorf("--point %q: want throughput, lag or memory", o.point)
	}
	if o.n == 0 {
		o.n = p.n
	}
	if o.k == 0 {
		o.k = p.k
	}
	if o.c == 0 {
		o.c = p.c
	}
	if o.delay == 0 {
		o.delay = p.d
	}
	var errs []error
	switch {
	case o.target == "" && o.spawn == "":
		errs = append(errs, errors.New("say where retryd is: --target ADDR or --spawn redis|embedded"))
	case o.target != "" && o.spawn != "":
		errs = append(errs, errors.New("--target and --spawn exclude each other"))
	case o.spawn != "" && o.spawn != "redis" && o.spawn != "embedded":
		errs = append(errs, fmt.Errorf("--spawn %q: want redis or embedded", o.spawn))
	}
	if o.target != "" && (o.inProcess || o.retrydPath != "" || o.redisSocket) {
		errs = append(errs, errors.New("--in-process, --retryd and --redis-socket go with --spawn"))
	}
	if o.spawn != "" && (o.targetRedis != "" || o.targetDataDir != "" || o.storeLabel != "") {
		errs = append(errs, errors.New("--target-redis, --target-data-dir and --store go with --target"))
	}
	if o.inProcess && o.retrydPath != "" {
		errs = append(errs, errors.New("--in-process and --retryd exclude each other"))
	}
	if o.n < 1 {
		errs = append(errs, fmt.Errorf("--n %d: at least one job", o.n))
	}
	if o.k < 1 || o.k > 1000 {
		errs = append(errs, fmt.Errorf("--k %d: want 1 to 1000 failures per job", o.k))
	}
	if o.delay <= 0 {
		errs = append(errs, fmt.Errorf("--delay %v: retryd's delays are positive (use 1ms for \"no delay\")", o.delay))
	}
	if o.c < 1 {
		errs = append(errs, fmt.Errorf("--concurrency %d: at least 1", o.c))
	}
	if o.streams < 1 || o.conns < 1 {
		errs = append(errs, errors.New("--streams and --conns must be at least 1"))
	}
	o.streams = min(o.streams, o.c)
	if o.runs < 1 {
		errs = append(errs, fmt.Errorf("--runs %d: at least 1", o.runs))
	}
	if o.progress != "auto" && o.progress != "always" && o.progress != "never" {
		errs = append(errs, fmt.Errorf("--progress %q: want auto, always or never", o.progress))
	}
	if strings.TrimSpace(o.phase) == "" {
		errs = append(errs, errors.New("--phase is empty"))
	}
	return o, errors.Join(errs...)
}

// storeName is the store named in the results.
func (o options) storeName() string {
	switch {
	case o.spawn != "":
		return o.spawn
	case o.storeLabel != "":
		return o.storeLabel
	case o.targetRedis != "":
		return "redis"
	case o.targetDataDir != "":
		return "embedded"
	}
	return "unknown"
}
