"""The peer: the script a user would write with Huawei's official SDK (``huaweicloudsdkcph``).

Batches of ``B`` phones are sent with ``UpdateCloudPhonePropertyRequest`` from a
``ThreadPoolExecutor(16)``; then every job is polled with ``ShowJob`` once a second until it ends. The
SDK retries nothing by default (``retry_times = 0``), so a throttled call (429) is retried after a plain
sleep, as a user would, and counted. Run as ``python -m orchestrator.benchmark.sdk_peer`` with ``HOME``
in a temporary directory (the SDK writes there on import); it prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["main"]

THREADS = 16
POLL_INTERVAL_S = 1.0
THROTTLED_SLEEP_S = 1.0
JOB_RUNNING = 1

T = TypeVar("T")


class _Counter:
    """A thread-safe tally of throttled answers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self) -> None:
        with self._lock:
            self.value += 1


class PeerScript:
    """The user's script: submit in batches on a pool, then poll each job every second."""

    def __init__(self, client: Any, cph: Any, throttled_error: type[Exception]) -> None:
        self._client = client
        self._cph = cph
        self._throttled_error = throttled_error
        self.throttled = _Counter()

    def _retrying(self, call: Callable[[], T]) -> T:
        while True:
            try:
                return call()
            except self._throttled_error as error:
                if getattr(error, "status_code", None) != 429:
                    raise
                self.throttled.add()
                time.sleep(THROTTLED_SLEEP_S)

    def submit(self, batch: Sequence[tuple[int, str]]) -> list[str]:
        """One UpdateCloudPhoneProperty request; the job IDs it created."""
        cph = self._cph
        phones = [
            cph.PropertyToUpdate(phone_id=phone_id, _property=json.dumps(_properties(index)))
            for index, phone_id in batch
        ]
        request = cph.UpdateCloudPhonePropertyRequest(
            body=cph.UpdateCloudPhonePropertyRequestBody(phones=phones)
        )
        answer = self._retrying(lambda: self._client.update_cloud_phone_property(request))
        return [job.job_id for job in answer.jobs if job.job_id]

    def wait_for(self, job_id: str) -> int:
        """Poll one job with ShowJob every second until it ends; its final status."""
        request = self._cph.ShowJobRequest(job_id=job_id)
        while True:
            job = self._retrying(lambda: self._client.show_job(request))
            if job.status != JOB_RUNNING:
                return int(job.status)
            time.sleep(POLL_INTERVAL_S)


def _properties(index: int) -> dict[str, str]:
    """The same properties the benchmark's plan writes."""
    return {"sys.prop.writewifissid": f"bench_{index:07d}", "persist.sys.locale": "en-US"}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--project-id", required=True)
    parser.add_argument("--ak", required=True)
    parser.add_argument("--sk", required=True)
    parser.add_argument("--phones-file", type=Path, required=True, help="One phone ID a line.")
    parser.add_argument("--batch", type=int, default=100)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the peer script and print its own account (wall time, jobs, throttled retries)."""
    args = _parse(argv)
    import huaweicloudsdkcph.v1 as cph
    from huaweicloudsdkcore.auth.credentials import BasicCredentials
    from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException

    credentials = BasicCredentials(args.ak, args.sk, args.project_id)
    client = (
        cph.CphClient.new_builder()
        .with_credentials(credentials)
        .with_endpoints([args.endpoint])
        .build()
    )
    phone_ids = args.phones_file.read_text(encoding="utf-8").split()
    indexed = list(enumerate(phone_ids))
    batches = [indexed[i : i + args.batch] for i in range(0, len(indexed), args.batch)]
    script = PeerScript(client, cph, ClientRequestException)
    started_s = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        job_ids = [job for jobs in pool.map(script.submit, batches) for job in jobs]
        statuses = list(pool.map(script.wait_for, job_ids))
    result = {
        "phones": len(phone_ids),
        "jobs": len(job_ids),
        "succeeded": statuses.count(2),
        "script_wall_s": time.monotonic() - started_s,
        "throttled_retries": script.throttled.value,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
