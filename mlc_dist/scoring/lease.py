"""One writer per scoring output: an exclusive, renewed lease in `<output>/_lease.json`.

Local disk: created with O_CREAT|O_EXCL. S3: a conditional PUT (`If-None-Match: *`, then renewal
and takeover with `If-Match: <ETag>`), through boto3 because pyarrow's S3 filesystem exposes no
conditional writes. A lease whose heartbeat is older than `score.lease_timeout_s` (or, on this
host, whose process is gone) is stale and may be taken over. Owns the lease only.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import threading
import time
import uuid

from mlc_dist import storage
from mlc_dist.config import JobConfigError

LEASE = "_lease.json"


class LeaseHeld(JobConfigError):
    """Another live run writes this output (exit 2)."""


class LeaseLost(JobConfigError):
    """This run's lease was taken over (its heartbeat stopped for longer than the timeout)."""


def _now() -> float:
    return time.time()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _LocalStore:
    def __init__(self, path: str):
        self.path = path

    def create(self, body: bytes) -> str | None:
        """The new lease's tag, or None when one exists."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        return json.loads(body)["token"]

    def read(self) -> tuple[dict, str] | None:
        try:
            with open(self.path, "rb") as f:
                value = json.loads(f.read() or b"{}")
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:  # a holder killed between create and write: treat as stale
            value = {"token": "", "heartbeat": 0}
        return value, value.get("token", "")

    def renew(self, body: bytes, tag: str) -> str | None:
        """Rewrite our own lease (atomic replace: readers never miss it)."""
        current = self.read()
        if current is None or current[1] != tag:
            return None
        tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(body)
        os.replace(tmp, self.path)
        return tag

    def take(self, body: bytes, tag: str) -> str | None:
        """Take over a stale lease that still has `tag`: renamed aside first, so only one of two
        racing processes gets it."""
        aside = f"{self.path}.{uuid.uuid4().hex}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return None
        with open(aside, "rb") as f:
            try:
                ours = json.loads(f.read() or b"{}").get("token", "") == tag
            except json.JSONDecodeError:
                ours = tag == ""
        if not ours:  # someone renewed or took it meanwhile: put theirs back, unless replaced
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            os.unlink(aside)
            return None
        os.unlink(aside)
        return self.create(body)

    def delete(self, tag: str) -> None:
        current = self.read()
        if current is not None and current[1] == tag:
            os.unlink(self.path)


class _S3Store:
    def __init__(self, uri: str):
        import boto3

        bucket_key = uri.split("://", 1)[1]
        self.bucket, self.key = bucket_key.split("/", 1)
        self.client = boto3.client("s3")

    def _put(self, body: bytes, **condition) -> str | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body,
                                          **condition)["ETag"]
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey") or \
                    status in (409, 412):
                return None
            raise

    def create(self, body: bytes) -> str | None:
        return self._put(body, IfNoneMatch="*")

    def read(self) -> tuple[dict, str] | None:
        from botocore.exceptions import ClientError

        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return json.loads(got["Body"].read()), got["ETag"]

    def renew(self, body: bytes, tag: str) -> str | None:
        return self._put(body, IfMatch=tag)

    take = renew

    def delete(self, tag: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=tag)
        except ClientError:
            pass  # not ours any more: leave it


def _store(output: str):
    if not storage.is_uri(output):
        return _LocalStore(os.path.join(os.path.abspath(output), LEASE))
    if output.startswith("s3://"):
        return _S3Store(f"{output.rstrip('/')}/{LEASE}")
    raise JobConfigError(f"score.output {output!r}: the single-writer lease needs conditional "
                         "writes, implemented for local paths and s3:// only")


class Lease:
    """The exclusive right to write one output; renewed by a background thread.

    `check()` before every step that changes the output: a run whose lease was taken over stops
    (LeaseLost) rather than interleave its writes with the new holder's.
    """

    def __init__(self, output: str, timeout_s: float):
        self.output, self.timeout_s = output, timeout_s
        self.store = _store(output)
        self.run_id = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        self.tag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None

    def _body(self) -> bytes:
        return json.dumps({"run_id": self.run_id, "token": self.run_id,
                           "host": socket.gethostname(), "pid": os.getpid(),
                           "heartbeat": _now(), "timeout_s": self.timeout_s}).encode()

    def _stale(self, held: dict) -> bool:
        if _now() - float(held.get("heartbeat", 0)) > float(held.get("timeout_s",
                                                                     self.timeout_s)):
            return True
        return held.get("host") == socket.gethostname() and "pid" in held and \
            not _pid_alive(int(held["pid"]))

    def acquire(self) -> "Lease":
        for _ in range(5):
            tag = self.store.create(self._body())
            if tag is not None:
                return self._started(tag)
            current = self.store.read()
            if current is None:
                continue  # released meanwhile
            held, held_tag = current
            if not self._stale(held):
                raise LeaseHeld(
                    f"{self.output}: another run is writing this output: run {held.get('run_id')}"
                    f" on {held.get('host')} (pid {held.get('pid')}), last heartbeat "
                    f"{_now() - float(held.get('heartbeat', 0)):.0f} s ago; its lease "
                    f"({LEASE}) goes stale after {held.get('timeout_s')} s without one")
            tag = self.store.take(self._body(), held_tag)
            if tag is not None:
                return self._started(tag)
        raise LeaseHeld(f"{self.output}: could not take the lease; another run competes for it")

    def _started(self, tag: str) -> "Lease":
        self.tag = tag
        self._thread = threading.Thread(target=self._renew_loop, daemon=True,
                                        name=f"lease-{self.run_id}")
        self._thread.start()
        return self

    def _renew_loop(self) -> None:
        while not self._stop.wait(max(self.timeout_s / 4, 0.05)):
            try:
                tag = self.store.renew(self._body(), self.tag)
            except Exception:  # noqa: BLE001 - a store hiccup: try again on the next beat
                continue
            if tag is None:
                self._lost = "taken over by another run"
                return
            self.tag = tag

    def check(self) -> None:
        current = self.store.read()
        if self._lost or current is None or current[0].get("token") != self.run_id:
            holder = current[0].get("run_id") if current else None
            raise LeaseLost(f"{self.output}: this run ({self.run_id}) lost its lease to "
                            f"{holder or 'nobody'}; it stopped before writing more")

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def release(self) -> None:
        self.stop_heartbeat()
        if self.tag is not None and not self._lost:
            self.store.delete(self.tag)
        self.tag = None
