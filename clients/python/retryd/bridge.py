"""The RQ bridge: retryd's due retries, enqueued into an RQ queue.

It replaces the specification's ``queue.enqueue_in(delay, task, ...)``:
retryd keeps the retry in its durable schedule, and when it is due hands it
to this bridge over ``Dispatch``; the bridge enqueues it into the RQ queue
as the decorated task, with the payload as keyword arguments plus
``retry_count`` and ``lease_id``, and the task (``@retryd.task``) reports
the attempt's outcome itself — that report is the acknowledgement.

    python3 -m retryd.bridge --phase extraction --rq-queue extraction \\
        --task myapp.workers.extract_text_task \\
        --redis-url redis://localhost:6379/0 --target 127.0.0.1:50051

Exactly-once enqueueing. Each attempt gets the deterministic RQ job id
``<job_id>:<phase>:<retry_count>`` (``:c<cycle>`` appended for a job
re-driven by an operator, whose retry counts start again at 0). The bridge
checks and enqueues under a Redis WATCH on that job's key, so a redelivered
attempt — a second bridge, or the same attempt handed out again — is never
enqueued twice: if it is still queued, only its ``lease_id`` is updated to
the current lease; if it already started or finished, it is left alone and
the new lease lapses (retryd then records the attempt as failed and
schedules the next one, visibly, instead of the bridge running it twice).
RQ 1.x accepts any string as a job id; RQ 2.1+ refuses ``:`` and later any
character but letters, digits, ``_`` and ``-`` — when the installed RQ
refuses the plain id, every character outside ``[A-Za-z0-9-]`` is written
as ``_xx`` (its hex byte), which keeps distinct attempts distinct.

Leases and queueing time. A task leased to the bridge stays unreported
while it waits in the RQ queue and while it runs, so ``--lease-duration``
must cover the queue wait; the decorated task extends the lease as soon as
it starts (and skips the run if the lease is already gone) and keeps
extending it while it runs, so the job's run time does not count.
``--max-in-flight`` bounds how many dispatched, unreported attempts the
bridge holds — that is, how many retries sit in the RQ queue or run at
once — which keeps a burst of due retries from flooding RQ and keeps the
queue wait (and so the needed lease) short.

If the bridge dies, nothing is lost: attempts it enqueued run and report on
their own; attempts it received but did not enqueue lapse and are retried.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import time
from typing import Optional, Sequence

from . import __version__
from .client import DEFAULT_TARGET, RetryClient, Task
from .errors import RPCError
from .stream import DispatchStream

__all__ = ["RQBridge", "rq_job_id", "sanitize_job_id", "parse_duration", "main"]

log = logging.getLogger("retryd.bridge")

_SAFE = re.compile(r"[A-Za-z0-9-]")


def sanitize_job_id(raw: str) -> str:
    """An injective rewrite of ``raw`` into ``[A-Za-z0-9_-]``: every other
    byte (``_`` included, as the escape character) becomes ``_xx``."""
    out = []
    for ch in raw:
        if _SAFE.fullmatch(ch):
            out.append(ch)
        else:
            out.extend(f"_{b:02x}" for b in ch.encode("utf-8"))
    return "".join(out)


def _rq_accepts(job_id: str, connection) -> bool:
    from rq.job import Job

    try:
        Job(connection=connection).set_id(job_id)
    except ValueError:
        return False
    return True


def rq_job_id(task: Task, connection=None) -> str:
    """The RQ job id of a dispatched attempt: ``<job_id>:<phase>:<retry_count>``
    (``:c<cycle>`` appended after a manual re-drive), sanitised when the
    installed RQ refuses it."""
    raw = f"{task.job_id}:{task.phase}:{task.retry_count}"
    if task.cycle > 1:
        raw += f":c{task.cycle}"
    if connection is not None and _rq_accepts(raw, connection):
        return raw
    if connection is None:
        return raw
    return sanitize_job_id(raw)


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds from ``"90"``, ``"1.5"``, ``"250ms"``, ``"10m"``, ``"1h30m"``."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if value < 0:
            raise ValueError(f"negative duration {text!r}")
        return value
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"invalid duration {text!r} (use seconds or 250ms, 30s, 10m, 1h)")
    return total


class RQBridge:
    """Enqueues the due retries of ``phase`` into ``queue`` as ``task_path``.

    ``queue`` is an ``rq.Queue``; ``task_path`` the dotted path of the
    ``@retryd.task``-decorated function. ``enqueue_kwargs`` go to
    ``Queue.create_job`` (``timeout``, ``result_ttl``, ``failure_ttl``).
    """

    _NOT_STARTED = ("queued", "deferred", "scheduled")

    def __init__(
        self,
        client: RetryClient,
        *,
        phase: str,
        queue,
        task_path: str,
        worker_id: str,
        max_in_flight: int = 32,
        lease_duration: Optional[float] = 600.0,
        enqueue_kwargs: Optional[dict] = None,
        backoff_max: float = 10.0,
        idle_timeout: float = 60.0,
    ):
        self.client = client
        self.phase = phase
        self.queue = queue
        self.task_path = task_path
        self.enqueue_kwargs = dict(enqueue_kwargs or {})
        self.stream = DispatchStream(
            client,
            [phase],
            worker_id=worker_id,
            max_in_flight=max_in_flight,
            lease_duration=lease_duration,
            backoff_max=backoff_max,
            idle_timeout=idle_timeout,
        )
        #: Counters: attempts enqueued, leases moved onto a queued job, and
        #: redeliveries left alone because the attempt already started or ran.
        self.enqueued = 0
        self.relet = 0
        self.skipped = 0

    def run(self) -> None:
        """Bridge until :meth:`stop`."""
        self.stream.run(self.handle)

    def stop(self) -> None:
        self.stream.stop()

    def handle(self, task: Task) -> None:
        """Enqueue one dispatched attempt, retrying Redis errors until the
        lease is nearly over (then it lapses and retryd retries it)."""
        import redis

        delay = 0.05
        while True:
            try:
                self._enqueue(task)
                return
            except redis.exceptions.RedisError as err:
                remaining = None
                if task.lease_expires_at is not None:
                    remaining = task.lease_expires_at.timestamp() - time.time()
                if self.stream.stopping or (remaining is not None and remaining < 2 * delay):
                    log.error(
                        "could not enqueue job %s %s retry %d (%s); its lease will lapse and retryd will retry it",
                        task.job_id, task.phase, task.retry_count, err,
                    )
                    return
                log.warning("enqueueing job %s failed (%s); retrying in %.2fs", task.job_id, err, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _enqueue(self, task: Task) -> None:
        from redis import WatchError
        from rq.job import Job

        connection = self.queue.connection
        job_id = rq_job_id(task, connection)
        kwargs = dict(task.payload)
        kwargs["retry_count"] = task.retry_count
        kwargs["lease_id"] = task.lease_id
        key = Job.key_for(job_id)
        with connection.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw_status = pipe.hget(key, "status")
                    status = raw_status.decode() if isinstance(raw_status, bytes) else raw_status
                    if status is None:
                        job = self.queue.create_job(
                            self.task_path,
                            kwargs=kwargs,
                            job_id=job_id,
                            description=f"{self.task_path} {task.job_id} {task.phase} retry {task.retry_count}",
                            **self.enqueue_kwargs,
                        )
                        pipe.multi()
                        self.queue.enqueue_job(job, pipeline=pipe)
                        pipe.execute()
                        self.enqueued += 1
                        log.info("enqueued %s (job %s %s retry %d)", job_id, task.job_id, task.phase, task.retry_count)
                    elif status in self._NOT_STARTED:
                        job = Job.fetch(job_id, connection=connection, serializer=self.queue.serializer)
                        _ = job.args  # decode the stored call first: RQ rebuilds it from all four parts
                        job.kwargs = kwargs
                        pipe.multi()
                        job.save(pipeline=pipe, include_meta=False, include_result=False)
                        pipe.execute()
                        self.relet += 1
                        log.info("%s was redelivered while queued; it now carries lease %s", job_id, task.lease_id)
                    else:
                        pipe.unwatch()
                        self.skipped += 1
                        log.warning(
                            "%s was redelivered but is already %s in RQ; not running it again "
                            "(lease %s will lapse and retryd records the attempt)",
                            job_id, status, task.lease_id,
                        )
                    return
                except WatchError:
                    continue  # the job changed under us (a worker took it): look again


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python3 -m retryd.bridge",
        description="Enqueue retryd's due retries of one phase into an RQ queue.",
    )
    p.add_argument("--phase", required=True, help="the retryd phase to bridge (e.g. extraction)")
    p.add_argument("--rq-queue", help="the RQ queue to enqueue into (default: the phase)")
    p.add_argument("--task", required=True, help="dotted path of the @retryd.task function (e.g. myapp.tasks.extract_text_task)")
    p.add_argument(
        "--redis-url",
        default=os.environ.get("RQ_REDIS_URL") or os.environ.get("REDIS_URL") or "redis://localhost:6379/0",
        help="RQ's Redis (redis://, rediss://, unix://); default $RQ_REDIS_URL, $REDIS_URL or redis://localhost:6379/0",
    )
    p.add_argument("--target", default=os.environ.get("RETRYD_TARGET", DEFAULT_TARGET), help="retryd's gRPC target (default $RETRYD_TARGET or %(default)s)")
    p.add_argument(
        "--token-file",
        default=None,
        help="file holding retryd's bearer token (a worker token), re-read when it changes; "
        "default $RETRYD_TOKEN, else $RETRYD_TOKEN_FILE (no command-line token: ps shows it to everyone)",
    )
    p.add_argument("--max-in-flight", type=int, default=32, help="dispatched attempts held at once, queued or running (default %(default)s)")
    p.add_argument("--lease-duration", type=parse_duration, default=600.0, help="lease per attempt; must cover the RQ queue wait (default 10m)")
    p.add_argument("--worker-id", default=None, help="name shown in GetJob (default bridge@host:pid)")
    p.add_argument("--job-timeout", default=None, help="RQ job timeout (RQ's default when unset)")
    p.add_argument("--result-ttl", type=int, default=None, help="RQ result_ttl in seconds")
    p.add_argument("--failure-ttl", type=int, default=None, help="RQ failure_ttl in seconds")
    p.add_argument("--timeout", type=parse_duration, default=10.0, help="deadline of each retryd call (default 10s)")
    p.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    p.add_argument("--version", action="version", version=f"retryd {__version__}")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import socket

    from redis import Redis
    from rq import Queue

    connection = Redis.from_url(args.redis_url)
    queue = Queue(args.rq_queue or args.phase, connection=connection)
    enqueue_kwargs = {}
    if args.job_timeout is not None:
        enqueue_kwargs["timeout"] = args.job_timeout
    if args.result_ttl is not None:
        enqueue_kwargs["result_ttl"] = args.result_ttl
    if args.failure_ttl is not None:
        enqueue_kwargs["failure_ttl"] = args.failure_ttl
    client = RetryClient(args.target, timeout=args.timeout, token_file=args.token_file)
    bridge = RQBridge(
        client,
        phase=args.phase,
        queue=queue,
        task_path=args.task,
        worker_id=args.worker_id or f"bridge@{socket.gethostname()}:{os.getpid()}",
        max_in_flight=args.max_in_flight,
        lease_duration=args.lease_duration,
        enqueue_kwargs=enqueue_kwargs,
    )
    stop = lambda signum, frame: bridge.stop()  # noqa: E731
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        "bridging retryd %s phase %r into RQ queue %r as %s (max in flight %d, lease %.1fs)",
        args.target, args.phase, queue.name, args.task, args.max_in_flight, args.lease_duration,
    )
    try:
        bridge.run()
    except RPCError as err:
        # UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT: retrying
        # cannot help; say why and exit, so that the supervisor shows it.
        log.error("retryd refused the bridge's Dispatch stream: %s", err)
        return 1
    finally:
        client.close()
    log.info("bridge stopped: %d enqueued, %d re-leased, %d skipped", bridge.enqueued, bridge.relet, bridge.skipped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
