package storetest

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/retryd/retryd/store"
)

// hostile are strings that break code which splices values into Lua, SQL,
// JSON, key names or format strings, or which assumes printable UTF-8.
var hostile = []string{
	`it's "quoted" and \back\slashed\`,
	"line one\nline two\r\n\ttabbed",
	"]]",
	"]] .. redis.call('FLUSHALL') .. [[",
	"{}",
	"{job-1}",
	"{",
	`'); DROP TABLE pipeline_job; --`,
	`redis.call("DEL", KEYS[1])`,
	"%s %d %v %!x",
	"nul\x00byte\x00",
	"invalid utf-8 \xff\xfe \xc3\x28",
	"ünïcödé 🚀 \u202ertl",
	"   ",
	"retryd:{job-1}:attempts",
	strings.Repeat("64 KiB of message ", 64*1024/18+1)[:64*1024],
}

// hostilePayloads are opaque payloads that must come back byte for byte.
var hostilePayloads = [][]byte{
	allBytes(64 * 1024),
	[]byte("\xff\xfe\xfd invalid utf-8 \xc3\x28"),
	{0, 0, 0},
	[]byte(`{"q":"]] \" ' {} ` + "\n" + `"}`),
	[]byte(`"; DROP TABLE jobs; --`),
}

// allBytes is n bytes that run through every byte value.
func allBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31 + i/256)
	}
	return b
}

func testData(t *testing.T, newStore Factory) {
	// Each hostile string is a job id, an error type and message, a label
	// key and value, a verdict's reason, a worker id and a cancel reason;
	// every one comes back byte for byte from GetJob, Claim, ListJobs and
	// Stats.
	t.Run("HostileStrings", func(t *testing.T) {
		h := setup(t, newStore)
		wantStats := store.PhaseStats{Phase: extraction, FailuresByType: map[string]uint64{}}
		var wantJobs []store.Job
		for i, s := range hostile {
			// Job ids are keys: keep them to a sane length.
			jobID := fmt.Sprintf("%02d:%s", i, s[:min(len(s), 200)])
			start := at(time.Duration(i) * time.Hour)
			f0 := failure(jobID, extraction, 0, start)
			f0.ErrorType, f0.ErrorMessage = s, s
			f0.Labels = map[string]string{s: s, "document_id": s}
			f0.Payload = hostilePayloads[i%len(hostilePayloads)]
			f0.Verdict.Reason = s
			h.fail(f0)

			tasks, err := h.s.Claim(h.ctx, store.ClaimRequest{
				Phases: []string{extraction}, Limit: 10, Now: f0.Verdict.DueAt, LeaseFor: leaseFor, WorkerID: s,
			})
			require.NoError(t, err)
			require.Len(t, tasks, 1)
			task := tasks[0]
			requireEqual(t, store.Task{
				JobID: jobID, Phase: extraction, RetryCount: 1, Cycle: 1, Payload: f0.Payload, Labels: f0.Labels,
				LeaseID: task.LeaseID, LeaseExpiresAt: f0.Verdict.DueAt.Add(leaseFor), DueAt: f0.Verdict.DueAt,
			}, task, "task of job %q", jobID)

			f1 := leasedFailure(task, start.Add(time.Minute+10*time.Second))
			f1.ErrorType, f1.ErrorMessage = s, s
			f1.Verdict = giveUp(s)
			h.fail(f1)
			res := h.fail(f1)
			requireEqual(t, store.FailureResult{Verdict: f1.Verdict, Duplicate: true}, res, "duplicate report of job %q", jobID)

			_, err = h.s.RetryJob(h.ctx, jobID, "", start.Add(3*time.Minute))
			require.NoError(t, err)
			task = h.claimOne(start.Add(3*time.Minute), extraction)
			requireEqual(t, f0.Payload, task.Payload, "payload after RetryJob of job %q", jobID)
			_, err = h.s.CancelJob(h.ctx, jobID, s, start.Add(4*time.Minute))
			require.NoError(t, err)

			want := store.Job{
				ID: jobID, State: store.StateCanceled, Phase: extraction, Cycle: 2, Labels: f0.Labels,
				LastFailedPhase: extraction, LastFailedRetryCount: 1, LastFailedAt: f1.Now,
				LastErrorType: s, LastError: s, FinalError: s,
				CreatedAt: start, UpdatedAt: start.Add(4 * time.Minute),
				Attempts: []store.Attempt{
					failedAttempt(f0, 1, f0.Payload, "", start),
					failedAttempt(f1, 1, f0.Payload, s, f0.Verdict.DueAt),
				},
			}
			h.requireJob(want)
			wantJobs = append([]store.Job{withoutAttempts(want)}, wantJobs...)
			wantStats.Attempts += 2
			wantStats.Retries++
			wantStats.GivenUp++
			wantStats.FailuresByType[s] += 2
		}
		requireEqual(t, wantJobs, h.listAll(store.ListQuery{}, 3), "ListJobs")
		requireEqual(t, wantJobs, h.listAll(store.ListQuery{State: store.StateCanceled, Phase: extraction}, 5), "ListJobs")
		requireEqual(t, []store.PhaseStats{wantStats}, h.stats(store.StatsQuery{Since: at(0), Until: at(100 * time.Hour)}), "Stats")
	})

	t.Run("PayloadBytes", func(t *testing.T) {
		h := setup(t, newStore)
		for i, p := range hostilePayloads {
			jobID := fmt.Sprintf("job-%d", i)
			s := success(jobID, extraction, 0, at(0))
			s.Payload, s.Output = p, p
			s.NextPhase, s.NextPayload = chunking, p
			h.succeed(s)
			f := failure(jobID, chunking, 0, at(time.Minute))
			f.Payload = nil
			h.fail(f)
			tasks := h.claim(f.Verdict.DueAt, 10, chunking)
			require.Len(t, tasks, 1)
			requireEqual(t, p, tasks[0].Payload, "task payload %d", i)
			j := h.job(jobID)
			require.Len(t, j.Attempts, 2)
			requireEqual(t, p, j.Attempts[0].Payload, "attempt payload %d", i)
			requireEqual(t, p, j.Attempts[0].Output, "attempt output %d", i)
			requireEqual(t, p, j.Attempts[1].Payload, "hand-off payload %d", i)
			h.succeed(leasedSuccess(tasks[0], f.Verdict.DueAt.Add(time.Second)))
		}
	})

	t.Run("HostilePhaseName", func(t *testing.T) {
		h := setup(t, newStore)
		phase := `chunk "x" ]] {y} 🚀 ' --`
		f := failure("job-1", phase, 0, at(0))
		h.fail(f)
		due, ok := h.nextDue(phase)
		require.True(t, ok)
		require.True(t, due.Equal(f.Verdict.DueAt))
		require.Empty(t, h.claim(f.Verdict.DueAt, 10, extraction, chunking), "another phase's claim")
		require.Equal(t, []string{"job-1"}, jobIDs(h.listAll(store.ListQuery{Phase: phase}, 10)))
		task := h.claimOne(f.Verdict.DueAt, phase)
		require.Equal(t, phase, task.Phase)
		h.succeed(leasedSuccess(task, f.Verdict.DueAt.Add(time.Second)))
		requireEqual(t, []store.PhaseStats{{
			Phase: phase, Attempts: 2, Retries: 1, SuccessfulRetries: 1,
			FailuresByType: map[string]uint64{f.ErrorType: 1},
		}}, h.stats(store.StatsQuery{Since: at(0), Until: at(time.Hour), Phase: phase}), "Stats")
	})
}

func testLifecycle(t *testing.T, newStore Factory) {
	t.Run("Ping", func(t *testing.T) {
		h := setup(t, newStore)
		require.NoError(t, h.s.Ping(h.ctx))
	})

	// The specification's "Testing Retries" at the store: a job that always
	// fails in extraction runs at +0, +60 s, +360 s and +1260 s, then gives
	// up with total_retries 3 and four failed attempts.
	t.Run("SpecificationSchedule", func(t *testing.T) {
		h := setup(t, newStore)
		delays := []time.Duration{60 * time.Second, 300 * time.Second, 900 * time.Second}
		f := failure("job-1", extraction, 0, at(0))
		f.Verdict = retryIn(1, delays[0], f.Now)
		h.fail(f)
		var starts []time.Duration
		for rc := uint32(1); rc <= 3; rc++ {
			due, ok := h.nextDue(extraction)
			require.True(t, ok)
			require.Empty(t, h.claim(due.Add(-time.Microsecond), 10, extraction))
			task := h.claimOne(due, extraction)
			require.Equal(t, rc, task.RetryCount)
			starts = append(starts, due.Sub(Base))
			g := leasedFailure(task, due)
			if rc < 3 {
				g.Verdict = retryIn(rc+1, delays[rc], due)
			} else {
				g.Verdict = giveUp("max retries (3) reached.")
			}
			h.fail(g)
		}
		require.Equal(t, []time.Duration{60 * time.Second, 360 * time.Second, 1260 * time.Second}, starts)
		j := h.job("job-1")
		require.Equal(t, store.StateFailed, j.State)
		require.Equal(t, uint32(3), j.TotalRetries)
		require.Len(t, j.Attempts, 4)
		for i, a := range j.Attempts {
			require.Equal(t, store.AttemptFailed, a.Status)
			require.Equal(t, uint32(i), a.RetryCount)
		}
	})
}
