package server_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
	"github.com/retryd/retryd/internal/testredis"
	"github.com/retryd/retryd/server"
	"github.com/retryd/retryd/store/redisstore"
)

// TestUndecodablePayloadIsGivenUp: a due task whose stored payload no longer
// decodes (corruption, a store bug) is recorded as a failed attempt and its
// job fails, instead of ending every stream it is handed to; the stream goes
// on with the next task.
func TestUndecodablePayloadIsGivenUp(t *testing.T) {
	t.Parallel()
	rs := testredis.Start(t)
	ctx := context.Background()
	st, err := redisstore.Open(ctx, rs.URL(), redisstore.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
	b := setupOn(t, st, defaultOptions())

	for _, job := range []string{"poison", "healthy"} {
		_, err := b.retry.ReportFailure(ctx, &retrydv1.ReportFailureRequest{
			JobId: job, Phase: "extraction", ErrorType: "Timeout", Payload: mustStruct(t, map[string]any{"doc": job}),
		})
		require.NoError(t, err)
	}
	// Corrupt the poison job's stored payload: bytes that are not a Struct.
	require.NoError(t, rs.Client().HSet(ctx, "{retryd}:a:poison", "#1", "\xff\xff\xff not protobuf").Err())

	w := b.dispatch(t, &retrydv1.DispatchRequest{Phases: []string{"extraction"}, WorkerId: "w", MaxInFlight: 2})
	r := w.next(t)
	require.Equal(t, "healthy", r.task.GetJobId(), "the healthy task arrives on the same stream")
	w.none(t, 2*scaled[0])

	got, err := b.admin.GetJob(ctx, &retrydv1.GetJobRequest{JobId: "poison"})
	require.NoError(t, err)
	j := got.GetJob()
	require.Equal(t, retrydv1.JobState_JOB_STATE_FAILED, j.GetState())
	require.Equal(t, server.UndecodablePayloadType, j.GetFinalErrorType())
	require.Len(t, j.GetAttempts(), 2)
	require.Equal(t, "w", j.GetAttempts()[1].GetWorkerId())
}
