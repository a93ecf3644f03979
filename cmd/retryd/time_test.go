package main_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
	"github.com/retryd/retryd/internal/testredis"
)

// skewTolerance is how early a retry may be dispatched, as README.md
// ("Time") documents it: the round trip that timesync accepts for a
// measurement of Redis TIME (20 ms), plus the clocks' drift.
const skewTolerance = 25 * time.Millisecond

// TestSkewedReplicaDispatchesNothingEarly: two replicas on one Redis, one
// with its clock 10 s ahead (RETRYD_TEST_CLOCK_SKEW). Failures are reported
// to the other one, with a 2 s delay; the retries are dispatched by the
// replica that runs ahead. On the shared clock (--time-source auto, the
// default) none arrives earlier than its due time minus the documented
// tolerance. On its local clock (--time-source local) the same replica
// dispatches every one of them at once, seconds early: the skew is real.
//
// The due time compared against is the server's own (Task.due_at, set by
// the replica with the right clock); the test runs on the Redis host, so
// its clock is Redis's.
func TestSkewedReplicaDispatchesNothingEarly(t *testing.T) {
	t.Parallel()
	const delay = 2 * time.Second
	for _, tc := range []struct {
		source string
		early  bool
	}{{"auto", false}, {"local", true}} {
		t.Run(tc.source, func(t *testing.T) {
			t.Parallel()
			url := testredis.Start(t).URL()
			args := []string{"--redis-url", url, "--retry-delays", delay.String(), "--jitter", "0", "--time-source", tc.source}
			honest := start(t, nil, append(args, "--data-dir", t.TempDir())...)
			ahead := start(t, []string{"RETRYD_TEST_CLOCK_SKEW=+10s"}, append(args, "--data-dir", t.TempDir())...)
			reportTo, _ := clients(t, honest.addr)
			dispatchFrom, _ := clients(t, ahead.addr)
			ctx := context.Background()
			stream, err := dispatchFrom.Dispatch(ctx, &retrydv1.DispatchRequest{Phases: []string{"extraction"}, WorkerId: "w", MaxInFlight: 10})
			require.NoError(t, err)
			// The stream is registered once it has delivered something; a
			// heartbeat comes every 15 s, so just report and wait.
			due := map[string]time.Time{}
			for i := range 5 {
				id := fmt.Sprintf("skew-%d", i)
				resp, err := reportTo.ReportFailure(ctx, &retrydv1.ReportFailureRequest{JobId: id, Phase: "extraction", ErrorType: "Timeout"})
				require.NoError(t, err)
				require.Equal(t, delay, resp.GetDelay().AsDuration())
				due[id] = resp.GetNextAttemptAt().AsTime()
			}
			var worst time.Duration // the earliest arrival relative to due (negative: early)
			for got := 0; got < len(due); {
				msg, err := stream.Recv()
				require.NoError(t, err)
				task := msg.GetTask()
				if task == nil {
					continue
				}
				at := time.Now()
				got++
				// Stored in microseconds, rounded up.
				require.WithinDuration(t, due[task.GetJobId()], task.GetDueAt().AsTime(), time.Microsecond, "the task carries the due time the report was given")
				lag := at.Sub(task.GetDueAt().AsTime())
				if got == 1 || lag < worst {
					worst = lag
				}
			}
			t.Logf("--time-source %s, clock 10s ahead: earliest retry arrived %v relative to its due time", tc.source, worst)
			if tc.early {
				require.Less(t, worst, -time.Second, "on its own clock the replica should dispatch early")
				return
			}
			require.GreaterOrEqual(t, worst, -skewTolerance, "a retry was dispatched early")
			require.Less(t, worst, 2*time.Second, "and not late")
		})
	}
}
