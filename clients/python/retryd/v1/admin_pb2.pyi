from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from retryd.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CancelJobRequest(_message.Message):
    __slots__ = ["job_id", "reason"]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ["job"]
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _types_pb2.Job
    def __init__(self, job: _Optional[_Union[_types_pb2.Job, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ["job_id"]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ["job"]
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _types_pb2.Job
    def __init__(self, job: _Optional[_Union[_types_pb2.Job, _Mapping]] = ...) -> None: ...

class GetRetryStatsRequest(_message.Message):
    __slots__ = ["phase", "window"]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    phase: str
    window: _duration_pb2.Duration
    def __init__(self, window: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., phase: _Optional[str] = ...) -> None: ...

class GetRetryStatsResponse(_message.Message):
    __slots__ = ["phases", "since"]
    PHASES_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    phases: _containers.RepeatedCompositeFieldContainer[PhaseStats]
    since: _timestamp_pb2.Timestamp
    def __init__(self, phases: _Optional[_Iterable[_Union[PhaseStats, _Mapping]]] = ..., since: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class JobSummary(_message.Message):
    __slots__ = ["current_phase", "failed_at", "job_id", "labels", "last_error", "last_error_type", "next_attempt_at", "retry_count", "seconds_since_failure", "state", "updated_at"]
    class LabelsEntry(_message.Message):
        __slots__ = ["key", "value"]
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CURRENT_PHASE_FIELD_NUMBER: _ClassVar[int]
    FAILED_AT_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_AT_FIELD_NUMBER: _ClassVar[int]
    RETRY_COUNT_FIELD_NUMBER: _ClassVar[int]
    SECONDS_SINCE_FAILURE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    current_phase: str
    failed_at: _timestamp_pb2.Timestamp
    job_id: str
    labels: _containers.ScalarMap[str, str]
    last_error: str
    last_error_type: str
    next_attempt_at: _timestamp_pb2.Timestamp
    retry_count: int
    seconds_since_failure: float
    state: _types_pb2.JobState
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[_types_pb2.JobState, str]] = ..., current_phase: _Optional[str] = ..., retry_count: _Optional[int] = ..., failed_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., seconds_since_failure: _Optional[float] = ..., next_attempt_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., last_error_type: _Optional[str] = ..., last_error: _Optional[str] = ..., updated_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ["in_backoff", "page_size", "page_token", "phase", "state"]
    IN_BACKOFF_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    in_backoff: bool
    page_size: int
    page_token: str
    phase: str
    state: _types_pb2.JobState
    def __init__(self, state: _Optional[_Union[_types_pb2.JobState, str]] = ..., phase: _Optional[str] = ..., in_backoff: bool = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ["jobs", "next_page_token"]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobSummary]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class PhaseStats(_message.Message):
    __slots__ = ["attempts", "failures_by_error_type", "given_up", "phase", "success_rate_pct", "successful_retries", "total_retries"]
    class FailuresByErrorTypeEntry(_message.Message):
        __slots__ = ["key", "value"]
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_BY_ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    GIVEN_UP_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    SUCCESSFUL_RETRIES_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_PCT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_RETRIES_FIELD_NUMBER: _ClassVar[int]
    attempts: int
    failures_by_error_type: _containers.ScalarMap[str, int]
    given_up: int
    phase: str
    success_rate_pct: float
    successful_retries: int
    total_retries: int
    def __init__(self, phase: _Optional[str] = ..., total_retries: _Optional[int] = ..., successful_retries: _Optional[int] = ..., success_rate_pct: _Optional[float] = ..., failures_by_error_type: _Optional[_Mapping[str, int]] = ..., attempts: _Optional[int] = ..., given_up: _Optional[int] = ...) -> None: ...

class RetryJobRequest(_message.Message):
    __slots__ = ["from_phase", "job_id"]
    FROM_PHASE_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    from_phase: str
    job_id: str
    def __init__(self, job_id: _Optional[str] = ..., from_phase: _Optional[str] = ...) -> None: ...

class RetryJobResponse(_message.Message):
    __slots__ = ["job"]
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _types_pb2.Job
    def __init__(self, job: _Optional[_Union[_types_pb2.Job, _Mapping]] = ...) -> None: ...

class RetryJobsRequest(_message.Message):
    __slots__ = ["dry_run", "error_types", "failed_since", "page_size", "page_token", "phase"]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPES_FIELD_NUMBER: _ClassVar[int]
    FAILED_SINCE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    error_types: _containers.RepeatedScalarFieldContainer[str]
    failed_since: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    phase: str
    def __init__(self, phase: _Optional[str] = ..., error_types: _Optional[_Iterable[str]] = ..., failed_since: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., dry_run: bool = ...) -> None: ...

class RetryJobsResponse(_message.Message):
    __slots__ = ["jobs", "next_page_token", "skipped_job_ids"]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobSummary]
    next_page_token: str
    skipped_job_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobSummary, _Mapping]]] = ..., skipped_job_ids: _Optional[_Iterable[str]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
