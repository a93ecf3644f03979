package scheduler_test

import (
	"fmt"
	"time"

	"github.com/retryd/retryd/scheduler"
)

// The specification's schedule for a job that keeps failing, with jitter off
// so that the delays are exact.
func ExamplePolicy_Decide() {
	cfg := scheduler.DefaultPolicyConfig()
	cfg.Jitter = 0
	p, err := scheduler.NewPolicy(cfg, nil)
	if err != nil {
		panic(err)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for retryCount := range uint32(4) {
		v := p.Decide(scheduler.Report{
			Phase:      "extraction",
			RetryCount: retryCount,
			ErrorType:  "requests.exceptions.ConnectionError",
		}, now)
		fmt.Println(v.Reason)
	}
	fmt.Println(p.Decide(scheduler.Report{Phase: "extraction", ErrorType: "HTTPError", HTTPStatus: 404}, now).Reason)
	// Output:
	// retry 1 of 3 in 1m0s: requests.exceptions.ConnectionError (as ConnectionError) is a retryable error type
	// retry 2 of 3 in 5m0s: requests.exceptions.ConnectionError (as ConnectionError) is a retryable error type
	// retry 3 of 3 in 15m0s: requests.exceptions.ConnectionError (as ConnectionError) is a retryable error type
	// gave up after 3 of 3 retries: requests.exceptions.ConnectionError (as ConnectionError) is a retryable error type
	// not retryable: HTTP status 404 is a client error (4xx other than 429)
}

// A per-phase override, as EXTRACTION_MAX_RETRIES=5 sets it.
func ExamplePolicy_Phase() {
	five := 5
	cfg := scheduler.DefaultPolicyConfig()
	cfg.Phases = map[string]scheduler.PhaseOverride{"extraction": {MaxRetries: &five}}
	p, err := scheduler.NewPolicy(cfg, nil)
	if err != nil {
		panic(err)
	}
	fmt.Println(p.Phase("extraction"))
	fmt.Println(p.Phase("chunking"))
	// Output:
	// 5 retries (6 attempts) after 1m0s, 5m0s, 15m0s, 15m0s, 15m0s
	// 3 retries (4 attempts) after 1m0s, 5m0s, 15m0s
}
