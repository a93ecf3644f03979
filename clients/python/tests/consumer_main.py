"""A Consumer process for the SIGTERM test: each handler writes 'started
<job>' to stdout, sleeps HANDLER_MS, then returns."""

import logging
import os
import sys
import time

import retryd


def handler(task):
    print(f"started {task.job_id}", flush=True)
    time.sleep(int(os.environ.get("HANDLER_MS", "300")) / 1000)
    print(f"finished {task.job_id}", flush=True)
    return {"ok": True}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stdout)
    consumer = retryd.Consumer(sys.argv[1], handler, client=retryd.RetryClient(sys.argv[2]), max_in_flight=2, shutdown_timeout=10)
    consumer.run()
    print(f"stopped cleanly: {consumer.succeeded} succeeded", flush=True)
