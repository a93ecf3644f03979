package scheduler

// Fault points: places inside the dispatch cycle where a test build of
// retryd can crash on purpose, so that the fault tests (test/fault) cover a
// crash at exactly that point instead of hoping a kill -9 lands there.
//
// Production builds compile Fault to an empty function (fault_off.go). A
// binary built with `go build -tags retrydfault` reads RETRYD_FAULT at start
// (fault_on.go): "<point>" or "<point>@<n>" makes the process SIGKILL itself
// the n-th time (default: the first) it reaches that point. Nothing else
// changes in that build.
const (
	// FaultAfterClaim is reached when a claim returned tasks, before any of
	// them is handed to its stream: the tasks are leased in the store and
	// no worker has them.
	FaultAfterClaim = "crash-after-claim"
	// FaultAfterSend is reached when a task was sent down its stream,
	// before the worker's report: the worker has the task (the fault build
	// gives the transport a moment to deliver it) and the process that
	// leased it dies.
	FaultAfterSend = "crash-after-send"
)
