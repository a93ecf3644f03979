"""Run an RQ worker for the tests: python3 rq_worker_main.py URL QUEUE simple|fork."""

import logging
import sys

from redis import Redis
from rq import Queue, SimpleWorker, Worker


def main() -> None:
    url, queue_name, kind = sys.argv[1:4]
    conn = Redis.from_url(url)
    cls = SimpleWorker if kind == "simple" else Worker
    worker = cls([Queue(queue_name, connection=conn)], connection=conn)
    logging.basicConfig(level=logging.INFO)
    worker.work(logging_level="INFO", with_scheduler=False)


if __name__ == "__main__":
    main()
