package server

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	retrydv1 "github.com/retryd/retryd/gen/retryd/v1"
	"github.com/retryd/retryd/store"
)

// defaultStatsWindow is the specification's monitoring window.
const defaultStatsWindow = 7 * 24 * time.Hour

// adminService implements retrydv1.AdminServiceServer for operators.
type adminService struct {
	retrydv1.UnimplementedAdminServiceServer
	*deps
}

func (s *adminService) RetryJob(ctx context.Context, req *retrydv1.RetryJobRequest) (*retrydv1.RetryJobResponse, error) {
	var v violations
	v.jobID("job_id", req.GetJobId())
	v.phase("from_phase", req.GetFromPhase(), false)
	if err := v.err(); err != nil {
		return nil, err
	}
	job, err := s.store.RetryJob(ctx, req.GetJobId(), req.GetFromPhase(), s.clock.Now())
	if err != nil {
		return nil, storeError(ctx, s.log, "RetryJob", err)
	}
	s.log.InfoContext(ctx, "job re-driven by an operator", "job_id", job.ID, "phase", job.Phase, "cycle", job.Cycle)
	out, err := jobToProto(job)
	if err != nil {
		s.damaged(ctx, job.ID, err)
	}
	return &retrydv1.RetryJobResponse{Job: out}, nil
}

// RetryJobs re-drives a page of failed jobs: it lists up to page_size
// failed jobs (newest first, as ListJobs), keeps those the filters match,
// and re-drives each with the store's RetryJob, which re-checks the state
// atomically: a job that stopped being failed meanwhile is skipped, not
// retried twice. A store error stops the page; what was re-driven before
// it stays re-driven (each RetryJob is its own change) and is logged.
func (s *adminService) RetryJobs(ctx context.Context, req *retrydv1.RetryJobsRequest) (*retrydv1.RetryJobsResponse, error) {
	var v violations
	v.phase("phase", req.GetPhase(), false)
	if n := len(req.GetErrorTypes()); n > MaxErrorTypeFilters {
		v.add("error_types", "has %d items, the limit is %d", n, MaxErrorTypeFilters)
	}
	for i, t := range req.GetErrorTypes() {
		if t == "" {
			v.add(fmt.Sprintf("error_types[%d]", i), "must not be empty")
		}
		v.text(fmt.Sprintf("error_types[%d]", i), t, MaxErrorTypeBytes)
	}
	v.timestamp("failed_since", req.GetFailedSince())
	v.page(req.GetPageSize(), req.GetPageToken())
	if err := v.err(); err != nil {
		return nil, err
	}
	page, err := s.store.ListJobs(ctx, store.ListQuery{
		State:  store.StateFailed,
		Phase:  req.GetPhase(),
		Limit:  pageSize(req.GetPageSize()),
		Cursor: req.GetPageToken(),
	})
	if err != nil {
		return nil, storeError(ctx, s.log, "RetryJobs", err)
	}
	var since time.Time
	if req.GetFailedSince() != nil {
		since = req.GetFailedSince().AsTime()
	}
	now := s.clock.Now()
	resp := &retrydv1.RetryJobsResponse{NextPageToken: page.NextCursor}
	for _, j := range page.Jobs {
		if !since.IsZero() && j.UpdatedAt.Before(since) {
			// Newest first: every job from here on gave up before since.
			resp.NextPageToken = ""
			break
		}
		if j.LastFailedAt.Before(since) ||
			(len(req.GetErrorTypes()) > 0 && !slices.Contains(req.GetErrorTypes(), j.LastErrorType)) {
			continue
		}
		if !req.GetDryRun() {
			redriven, err := s.store.RetryJob(ctx, j.ID, "", now)
			switch {
			case errors.Is(err, store.ErrJobNotFailed), errors.Is(err, store.ErrNotFound):
				resp.SkippedJobIds = append(resp.SkippedJobIds, j.ID)
				continue
			case err != nil:
				s.log.WarnContext(ctx, "bulk re-drive stopped by an error", "redriven", len(resp.GetJobs()), "job_id", j.ID, "err", err)
				return nil, storeError(ctx, s.log, "RetryJobs", err)
			}
			s.log.InfoContext(ctx, "job re-driven by an operator", "job_id", redriven.ID, "phase", redriven.Phase, "cycle", redriven.Cycle, "bulk", true)
		}
		resp.Jobs = append(resp.Jobs, summaryToProto(j, now))
	}
	return resp, nil
}

func (s *adminService) CancelJob(ctx context.Context, req *retrydv1.CancelJobRequest) (*retrydv1.CancelJobResponse, error) {
	var v violations
	v.jobID("job_id", req.GetJobId())
	v.text("reason", req.GetReason(), MaxReasonBytes)
	if err := v.err(); err != nil {
		return nil, err
	}
	reason := req.GetReason()
	if reason == "" {
		reason = "canceled by an operator"
	}
	job, err := s.store.CancelJob(ctx, req.GetJobId(), reason, s.clock.Now())
	if err != nil {
		return nil, storeError(ctx, s.log, "CancelJob", err)
	}
	if job.LeaseID != "" {
		s.dispatcher.LeaseReleased(job.LeaseID)
	}
	out, err := jobToProto(job)
	if err != nil {
		s.damaged(ctx, job.ID, err)
	}
	return &retrydv1.CancelJobResponse{Job: out}, nil
}

func (s *adminService) GetJob(ctx context.Context, req *retrydv1.GetJobRequest) (*retrydv1.GetJobResponse, error) {
	var v violations
	v.jobID("job_id", req.GetJobId())
	if err := v.err(); err != nil {
		return nil, err
	}
	job, err := s.store.GetJob(ctx, req.GetJobId())
	if err != nil {
		return nil, storeError(ctx, s.log, "GetJob", err)
	}
	out, err := jobToProto(job)
	if err != nil {
		s.damaged(ctx, job.ID, err)
	}
	return &retrydv1.GetJobResponse{Job: out}, nil
}

func (s *adminService) ListJobs(ctx context.Context, req *retrydv1.ListJobsRequest) (*retrydv1.ListJobsResponse, error) {
	var v violations
	if _, ok := retrydv1.JobState_name[int32(req.GetState())]; !ok {
		v.add("state", "%d is not a JobState", req.GetState())
	}
	v.phase("phase", req.GetPhase(), false)
	v.page(req.GetPageSize(), req.GetPageToken())
	if req.GetInBackoff() && req.GetState() != retrydv1.JobState_JOB_STATE_UNSPECIFIED &&
		req.GetState() != retrydv1.JobState_JOB_STATE_PROCESSING {
		v.add("in_backoff", "only processing jobs are in backoff; drop state or ask for JOB_STATE_PROCESSING")
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	page, err := s.store.ListJobs(ctx, store.ListQuery{
		State:     stateFromProto(req.GetState()),
		Phase:     req.GetPhase(),
		InBackoff: req.GetInBackoff(),
		Limit:     pageSize(req.GetPageSize()),
		Cursor:    req.GetPageToken(),
	})
	if err != nil {
		return nil, storeError(ctx, s.log, "ListJobs", err)
	}
	now := s.clock.Now()
	resp := &retrydv1.ListJobsResponse{NextPageToken: page.NextCursor}
	for _, j := range page.Jobs {
		resp.Jobs = append(resp.Jobs, summaryToProto(j, now))
	}
	return resp, nil
}

func (s *adminService) GetRetryStats(ctx context.Context, req *retrydv1.GetRetryStatsRequest) (*retrydv1.GetRetryStatsResponse, error) {
	var v violations
	v.duration("window", req.GetWindow(), store.StatsBucket, MaxStatsWindow)
	v.phase("phase", req.GetPhase(), false)
	if err := v.err(); err != nil {
		return nil, err
	}
	window := defaultStatsWindow
	if req.GetWindow() != nil {
		window = req.GetWindow().AsDuration()
	}
	now := s.clock.Now()
	since := now.Add(-window).Truncate(store.StatsBucket)
	rows, err := s.store.Stats(ctx, store.StatsQuery{Since: since, Until: now, Phase: req.GetPhase()})
	if err != nil {
		return nil, storeError(ctx, s.log, "GetRetryStats", err)
	}
	resp := &retrydv1.GetRetryStatsResponse{Since: ts(since)}
	for _, r := range rows {
		resp.Phases = append(resp.Phases, &retrydv1.PhaseStats{
			Phase:               r.Phase,
			TotalRetries:        r.Retries,
			SuccessfulRetries:   r.SuccessfulRetries,
			SuccessRatePct:      successRate(r.SuccessfulRetries, r.Retries),
			FailuresByErrorType: r.FailuresByType,
			Attempts:            r.Attempts,
			GivenUp:             r.GivenUp,
		})
	}
	return resp, nil
}

// successRate is the specification's ROUND(100.0 * successful / NULLIF(total, 0), 1),
// with 0 instead of NULL when there were no retries.
func successRate(successful, total uint64) float64 {
	if total == 0 {
		return 0
	}
	return math.Round(1000*float64(successful)/float64(total)) / 10
}

// damaged logs stored bytes that no longer decode; the job is still
// returned, without them.
func (s *adminService) damaged(ctx context.Context, jobID string, err error) {
	s.log.ErrorContext(ctx, "stored job has data that does not decode; shown without it", "job_id", jobID, "err", err)
}
