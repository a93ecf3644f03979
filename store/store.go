// Package store is the storage seam of retryd: one interface, implemented by
// store/redisstore (production, replicas) and store/boltstore (the embedded
// default), both held to the same behaviour by store/storetest.
//
// A store never decides anything. The scheduler decides (a pure function of
// the policy, the report, the clock and a random source); the store applies
// that decision atomically, together with the idempotency and lease checks
// below, and returns only once the change is durable. A store never reads a
// clock: every method that needs "now" is given it.
//
// # The job state machine
//
// A job is created by its first report. Each attempt is identified by
// (cycle, phase, retry_count): the cycle starts at 1 and every manual
// RetryJob starts a new one. At most one attempt of a job is pending at a
// time: either scheduled (in the due index of its phase, at DueAt) or leased
// (claimed by a Dispatch stream, until LeaseExpiresAt).
//
// RecordFailure and RecordSuccess check, in this order:
//  1. job absent: a report naming a lease fails with ErrLeaseNotHeld;
//     otherwise the job is created in cycle 1.
//  2. the attempt (job's cycle, phase, retry_count) is already recorded:
//     the same outcome returns the stored result with Duplicate set and
//     changes nothing; the other outcome fails with ErrConflict.
//  3. the job is failed, completed or canceled: ErrJobTerminal.
//  4. the report names a lease: it must be the job's current lease for that
//     phase and retry_count, else ErrLeaseNotHeld. A lease still counts as
//     held after its expiry until the reaper records it (the report wins).
//     With Failure.LeaseExpired set (the reaper), the lease must also have
//     expired (LeaseExpiresAt <= Now), else ErrLeaseActive.
//  5. the report names no lease but the job has a pending attempt:
//     ErrAttemptPending (retryd owns that attempt; it must be reported with
//     the lease of its Dispatch task).
//  6. an unleased failure with a retry verdict, when a later attempt of the
//     same phase is recorded in the job's cycle (reports of a worker that
//     runs its own retries, arriving out of order): ErrConflict. Its retries
//     would come round to the recorded attempt, whose report could never
//     be accepted nor its lease end.
//
// Then it records the attempt, ends any lease (EventLeaseReleased), moves
// the job's current phase, keeps the labels (non-nil replaces) and the
// phase's payload (non-nil replaces), counts the stats, and applies the
// outcome: a retry verdict schedules (phase, NextRetryCount) at DueAt
// (EventScheduled); a give-up verdict fails the job (FinalError,
// FinalErrorType, TotalRetries = retry_count); a success moves the job to
// NextPhase (staying processing) or completes it.
package store

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Sentinel errors. Implementations wrap them with fmt.Errorf("%w: ...") so
// that the message says which job, lease or state was involved; the server
// maps them to gRPC codes with errors.Is in one place.
var (
	// ErrNotFound: no job with that id.
	ErrNotFound = errors.New("job not found")
	// ErrLeaseNotHeld: the lease is unknown, was reported, expired and was
	// reaped, or does not belong to that job, phase and retry_count.
	ErrLeaseNotHeld = errors.New("lease not held")
	// ErrLeaseActive: the reaper tried to expire a lease that was extended.
	ErrLeaseActive = errors.New("lease has not expired")
	// ErrConflict: the attempt was already recorded with the other outcome,
	// or (check 6) an unleased failure came after a later attempt of its
	// phase (OutOfOrder).
	ErrConflict = errors.New("attempt already recorded with another outcome")
	// ErrJobTerminal: the job is failed, completed or canceled.
	ErrJobTerminal = errors.New("job is in a terminal state")
	// ErrAttemptPending: an unleased report while retryd holds a pending attempt.
	ErrAttemptPending = errors.New("job has a pending attempt")
	// ErrJobNotFailed: RetryJob on a job that is not failed.
	ErrJobNotFailed = errors.New("job is not failed")
	// ErrUnknownPhase: RetryJob from a phase the job has no payload or attempt for.
	ErrUnknownPhase = errors.New("job has never run that phase")
	// ErrInvalidArgument: a malformed argument the server could not check,
	// such as a ListJobs cursor that is not one this store issued.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrUnavailable: the backend cannot be reached. The change was not
	// acknowledged; it may or may not have been applied (a connection can
	// drop after a script ran), which is safe because reports are idempotent
	// and callers retry them.
	ErrUnavailable = errors.New("store unavailable")
)

// Store persists jobs, attempts, the retry schedule and leases. Every method
// is safe for concurrent use, by several goroutines and (Redis) by several
// retryd processes sharing one backend.
type Store interface {
	// RecordFailure applies a failed attempt and its verdict (see the package
	// doc for the checks). On a duplicate it returns the stored verdict.
	RecordFailure(ctx context.Context, f Failure) (FailureResult, error)
	// RecordSuccess applies a successful attempt (see the package doc).
	RecordSuccess(ctx context.Context, s Success) (SuccessResult, error)

	// Claim leases up to c.Limit scheduled attempts of c.Phases whose DueAt
	// is at or before c.Now, earliest due first across the phases. Each one
	// leaves the due index and is leased until c.Now+c.LeaseFor. Two
	// concurrent claims never return the same attempt.
	Claim(ctx context.Context, c ClaimRequest) ([]Task, error)
	// ExtendLease moves a held, unexpired lease's expiry to until (never
	// earlier than it was). ErrLeaseNotHeld otherwise.
	ExtendLease(ctx context.Context, jobID, leaseID string, until, now time.Time) (time.Time, error)
	// ReturnLease gives a leased attempt back unrun (a task that could not
	// be sent, or graceful shutdown): it is scheduled again at its original
	// DueAt and no attempt is recorded. ErrLeaseNotHeld if not held.
	ReturnLease(ctx context.Context, jobID, leaseID string) error
	// ExpiredLeases lists up to limit leases whose expiry is at or before
	// now, earliest first, for the reaper to record as failed attempts.
	ExpiredLeases(ctx context.Context, now time.Time, limit int) ([]Lease, error)

	// NextDue returns the earliest DueAt among scheduled attempts of the
	// phases, and false when there is none.
	NextDue(ctx context.Context, phases []string) (time.Time, bool, error)
	// NextLeaseExpiry returns the earliest lease expiry, and false when no
	// attempt is leased.
	NextLeaseExpiry(ctx context.Context) (time.Time, bool, error)
	// Subscribe streams schedule and lease events (from this process, and
	// for shared backends from every process) until ctx ends, then closes
	// the channel. Events may be dropped when the reader is slow or the
	// backend reconnects: they are hints that make wake-ups prompt, never the
	// only source of truth.
	Subscribe(ctx context.Context) (<-chan Event, error)

	// RetryJob starts a new cycle of a failed job: fromPhase ("" = the phase
	// of the most recent failed attempt) is scheduled due at now with
	// retry_count 0 and that phase's stored payload. ErrNotFound,
	// ErrJobNotFailed, ErrUnknownPhase.
	RetryJob(ctx context.Context, jobID, fromPhase string, now time.Time) (Job, error)
	// CancelJob cancels a processing or failed job, dropping its pending
	// attempt. Canceling a canceled job returns it unchanged; a completed
	// job gives ErrJobTerminal. ErrNotFound.
	CancelJob(ctx context.Context, jobID, reason string, now time.Time) (Job, error)
	// GetJob returns the job with every attempt, oldest first. ErrNotFound.
	GetJob(ctx context.Context, jobID string) (Job, error)
	// ListJobs returns a page of jobs (without attempts), most recently
	// updated first.
	ListJobs(ctx context.Context, q ListQuery) (JobPage, error)
	// Stats sums the per-phase counters of attempts finished in [Since, Until).
	// Counters are kept per hour; Since is rounded down to the hour.
	Stats(ctx context.Context, q StatsQuery) ([]PhaseStats, error)

	// Expire applies the backend's retention, so that nothing grows without
	// bound: it deletes terminal jobs (failed, completed, canceled, with
	// their attempts and payloads) last updated before now minus the job
	// retention; then, while more than the backend's MaxTerminalJobs
	// terminal jobs remain, the least recently updated of them; and the
	// hourly stats counters older than the stats retention. Jobs that are
	// processing (scheduled, leased or running outside retryd) are never
	// deleted. A backend may stop early to keep one call short; it then
	// sets More, and the caller calls again. The scheduler's janitor calls
	// it periodically and reports the counts.
	Expire(ctx context.Context, now time.Time) (ExpireResult, error)

	// Ping reports whether the backend answers.
	Ping(ctx context.Context) error
	// Close releases the backend. The store is unusable afterwards.
	Close() error
}

// OutOfOrder is check 6's refusal, worded alike by every backend: an
// unleased failure of retry_count retry reported after the recorded
// attempt of retry_count recorded of the same phase and cycle.
func OutOfOrder(jobID, phase string, retry, recorded uint32) error {
	return fmt.Errorf("%w: job %q %s #%d reported after #%d of the same phase was recorded; report a phase's attempts in order",
		ErrConflict, jobID, phase, retry, recorded)
}

// JobState mirrors retryd.v1.JobState (same numbers).
type JobState uint8

// Job states.
const (
	StateProcessing JobState = 1
	StateFailed     JobState = 2
	StateCompleted  JobState = 3
	StateCanceled   JobState = 4
)

// String returns the lower-case state name used in keys and messages.
func (s JobState) String() string {
	switch s {
	case StateProcessing:
		return "processing"
	case StateFailed:
		return "failed"
	case StateCompleted:
		return "completed"
	case StateCanceled:
		return "canceled"
	}
	return "unspecified"
}

// AttemptStatus mirrors retryd.v1.AttemptStatus.
type AttemptStatus uint8

// Attempt statuses.
const (
	AttemptFailed    AttemptStatus = 1
	AttemptSucceeded AttemptStatus = 2
)

// Decision mirrors retryd.v1.Decision.
type Decision uint8

// Decisions.
const (
	DecisionRetry  Decision = 1
	DecisionGiveUp Decision = 2
)

// Verdict is the scheduler's decision about one failed attempt, stored with
// the attempt so that a repeated report gets the very same answer.
type Verdict struct {
	Decision  Decision
	Retryable bool
	// Reason is one sentence naming the rule that decided.
	Reason string
	// NextRetryCount, Delay and DueAt are set for DecisionRetry only.
	NextRetryCount uint32
	Delay          time.Duration
	DueAt          time.Time
}

// Failure is a failed attempt with the verdict to apply.
type Failure struct {
	JobID      string
	Phase      string
	RetryCount uint32
	// LeaseID is set when the attempt came from Dispatch.
	LeaseID string
	// LeaseExpired marks the reaper's report of an expired lease.
	LeaseExpired bool
	ErrorType    string
	ErrorMessage string
	HTTPStatus   uint32
	// Payload is opaque (an encoded google.protobuf.Struct); nil keeps the
	// phase's stored payload.
	Payload []byte
	// Labels replace the job's labels when non-nil.
	Labels map[string]string
	// StartedAt zero means the lease's start, or Now when unleased.
	StartedAt time.Time
	Now       time.Time
	Verdict   Verdict
}

// FailureResult is what RecordFailure applied.
type FailureResult struct {
	// Verdict is the stored verdict: f.Verdict, or the first report's on a duplicate.
	Verdict Verdict
	// Duplicate is true when the attempt had already been recorded.
	Duplicate bool
}

// Success is a successful attempt.
type Success struct {
	JobID      string
	Phase      string
	RetryCount uint32
	LeaseID    string
	// NextPhase "" completes the job.
	NextPhase string
	// NextPayload, when non-nil, is stored as NextPhase's payload.
	NextPayload []byte
	// Output is opaque and kept on the attempt.
	Output []byte
	// Payload is the attempt's arguments; nil keeps the phase's stored payload.
	Payload   []byte
	Labels    map[string]string
	StartedAt time.Time
	Now       time.Time
}

// SuccessResult is what RecordSuccess applied.
type SuccessResult struct {
	// State is the job's state afterwards.
	State     JobState
	Duplicate bool
}

// ClaimRequest asks for due attempts.
type ClaimRequest struct {
	Phases   []string
	Limit    int
	Now      time.Time
	LeaseFor time.Duration
	WorkerID string
}

// Task is a leased attempt, as handed to a worker.
type Task struct {
	JobID          string
	Phase          string
	RetryCount     uint32
	Cycle          uint32
	Payload        []byte
	Labels         map[string]string
	LeaseID        string
	LeaseExpiresAt time.Time
	DueAt          time.Time
}

// Lease is a leased attempt as seen by the reaper.
type Lease struct {
	JobID      string
	LeaseID    string
	Phase      string
	RetryCount uint32
	Cycle      uint32
	WorkerID   string
	LeasedAt   time.Time
	ExpiresAt  time.Time
}

// EventKind says what an Event reports.
type EventKind uint8

// Event kinds.
const (
	// EventScheduled: an attempt of Phase was scheduled, due at DueAt.
	EventScheduled EventKind = 1
	// EventLeaseReleased: LeaseID ended (reported, reaped, returned, canceled).
	EventLeaseReleased EventKind = 2
)

// Event is a hint for the dispatcher.
type Event struct {
	Kind    EventKind
	Phase   string
	DueAt   time.Time
	LeaseID string
}

// Job is a job's record. Attempts is filled by GetJob only.
type Job struct {
	ID     string
	State  JobState
	Phase  string
	Cycle  uint32
	Labels map[string]string

	// The pending attempt: PendingPhase is "" when there is none. DueAt is
	// its due time; LeaseID is set while it is leased.
	PendingPhase      string
	PendingRetryCount uint32
	DueAt             time.Time
	LeaseID           string
	LeaseExpiresAt    time.Time
	WorkerID          string

	// The most recent failed attempt, for listings.
	LastFailedPhase      string
	LastFailedRetryCount uint32
	LastFailedAt         time.Time
	LastErrorType        string
	LastError            string

	FinalError     string
	FinalErrorType string
	TotalRetries   uint32

	CreatedAt time.Time
	UpdatedAt time.Time

	Attempts []Attempt
}

// InBackoff reports whether a retry is scheduled and not yet leased.
func (j Job) InBackoff() bool { return j.PendingPhase != "" && j.LeaseID == "" }

// Attempt is one recorded attempt.
type Attempt struct {
	Cycle        uint32
	Phase        string
	RetryCount   uint32
	Status       AttemptStatus
	ErrorType    string
	ErrorMessage string
	HTTPStatus   uint32
	Payload      []byte
	Output       []byte
	WorkerID     string
	StartedAt    time.Time
	FinishedAt   time.Time
	// Verdict is set on failed attempts.
	Verdict Verdict
}

// ListQuery filters ListJobs. Zero fields do not filter.
type ListQuery struct {
	State     JobState
	Phase     string
	InBackoff bool
	// Limit is the page size (the server bounds it).
	Limit int
	// Cursor is the NextCursor of the previous page; opaque to callers.
	Cursor string
}

// JobPage is a page of ListJobs.
type JobPage struct {
	Jobs       []Job
	NextCursor string
}

// MaxStatsErrorTypes bounds the distinct error types the stats count per
// phase and hour; the failures of further types that hour count under
// OtherErrorType. Without it a worker whose error types vary without end
// (an id or a message in the class name) would grow the counters by one
// per failure. The same bound and name as retryd's metric label.
const MaxStatsErrorTypes = 200

// OtherErrorType is the error type the stats count failures under beyond
// MaxStatsErrorTypes.
const OtherErrorType = "other"

// StatsQuery picks the window and phase of Stats.
type StatsQuery struct {
	Since time.Time
	Until time.Time
	// Phase "" means every phase.
	Phase string
}

// PhaseStats are the counters of one phase over a window.
type PhaseStats struct {
	Phase string
	// Attempts finished (failed or succeeded).
	Attempts uint64
	// Retries: finished attempts with retry_count > 0.
	Retries uint64
	// SuccessfulRetries: of those, the ones that succeeded.
	SuccessfulRetries uint64
	// GivenUp: failed attempts whose verdict was to give up.
	GivenUp uint64
	// FailuresByType counts failed attempts by error type: at most
	// MaxStatsErrorTypes types per phase and hour, the failures of further
	// types that hour under OtherErrorType.
	FailuresByType map[string]uint64
}

// StatsBucket is the resolution of the stats counters.
const StatsBucket = time.Hour

// Retention defaults shared by both backends: terminal jobs are kept a day
// longer than the default 7-day stats window so that a week's failed jobs
// can still be inspected and re-driven; hourly counters are kept 30 days.
const (
	DefaultJobRetention   = 8 * 24 * time.Hour
	DefaultStatsRetention = 30 * 24 * time.Hour
)

// DefaultMaxTerminalJobs is the count bound both backends apply to terminal
// jobs unless told otherwise. The age bound alone does not protect a Redis
// from a burst (a week of a busy pipeline's completed jobs can outgrow its
// memory); a million jobs take about 2 GB of Redis with typical histories
// and small payloads, which a production Redis for retryd is sized for.
const DefaultMaxTerminalJobs = 1_000_000

// NoCountBound as a backend's MaxTerminalJobs turns the count bound off:
// terminal jobs are then only removed by age.
const NoCountBound = -1

// ExpireResult says what one Expire call removed.
type ExpireResult struct {
	// ByAge counts terminal jobs removed because they were last updated
	// longer than the job retention ago.
	ByAge int
	// ByCount counts terminal jobs removed, least recently updated first,
	// because more than MaxTerminalJobs were kept.
	ByCount int
	// StatsHours counts the hours whose stats counters were removed.
	StatsHours int
	// More is set when the call stopped at its per-call limit with more
	// left to remove.
	More bool
}

// Jobs is the number of jobs removed for either reason.
func (r ExpireResult) Jobs() int { return r.ByAge + r.ByCount }

// BacklogCounter is implemented by stores that can count scheduled retries
// per phase cheaply; the metrics endpoint exports it as retryd_backlog and
// retryd_backlog_overdue_seconds.
type BacklogCounter interface {
	// Backlog returns the scheduled (not leased) attempts per phase.
	Backlog(ctx context.Context) (map[string]PhaseBacklog, error)
}

// PhaseBacklog is what waits in one phase's schedule.
type PhaseBacklog struct {
	// Scheduled is the number of scheduled, unleased attempts.
	Scheduled int64
	// OldestDue is the earliest due time among them; zero when there are
	// none. Long past, it says that no worker takes the phase's retries.
	OldestDue time.Time
}
