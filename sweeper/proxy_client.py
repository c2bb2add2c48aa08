"""A worker's side of the storage proxy: the study DB at ``grpc://host:port``, served by
``python -m sweeper storage-proxy`` (proxy.py).

Optuna's ``GrpcStorageProxy`` carries the storage calls. What Optuna 5 leaves out, sweeper's own
service on the same port carries (JSON over gRPC, no generated code):

- heartbeats: ``ProxyStorage`` is a ``BaseHeartbeat``, so Optuna's own machinery runs unchanged
  in the worker (a heartbeat thread per trial, ``fail_stale_trials`` with sweeper's stale-trial
  callback); the proxy records each beat in the DB (the DB's clock, as on PostgreSQL directly)
  and answers which running trials went silent longer than the worker's grace period;
- the study lock: ``ProxyLock`` holds a stream open on the proxy, which holds the real lock of the
  DB (the same one that direct workers take) while the stream is open. A worker that dies
  closes its stream and the proxy releases the lock at once.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
import warnings
from collections.abc import Callable
from typing import Any

import grpc
import optuna
from optuna.storages import GrpcStorageProxy
from optuna.storages._heartbeat import BaseHeartbeat

from sweeper.errors import UserError

log = logging.getLogger(__name__)

SCHEME = "grpc://"
SERVICE = "sweeper.StorageProxy"
CONNECT_TIMEOUT_S = 5.0
DEFAULT_PORT = 13000


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def decode(data: bytes) -> Any:
    return json.loads(data)


def is_proxy_url(url: str) -> bool:
    return url.startswith(SCHEME)


def parse_proxy_url(url: str) -> tuple[str, int]:
    """``grpc://host:port`` → (host, port); anything else after ``grpc://`` is refused."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        port = None
    if not parts.hostname or port is None or parts.path not in ("", "/") or parts.query or parts.username:
        raise UserError(
            f"storage URL {url!r} is not a storage proxy address; use grpc://HOST:PORT, the "
            "address `python -m sweeper storage-proxy` listens on"
        )
    return parts.hostname, port


class ProxyLost(RuntimeError):
    """The storage proxy stopped answering while the worker ran (exit 1, no traceback)."""


def proxy_lost(exc: BaseException, url: str) -> ProxyLost | None:
    """The error to show when ``exc`` (or what caused it) is the proxy no longer answering."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, grpc.RpcError) and seen.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        ):
            return ProxyLost(
                f"the storage proxy {url} stopped answering ({seen.code().name}), so this worker "
                "stopped. Start the proxy again, then the workers: the trial this worker was running "
                "is failed and run again by the next worker, after the heartbeat grace period"
            )
        seen = seen.__cause__ or seen.__context__
    return None


class ProxyLock:
    """The study lock taken through the proxy: held while a stream to it stays open."""

    def __init__(self, channel: grpc.Channel, study_name: str, scope: str) -> None:
        self._hold = channel.unary_stream(
            f"/{SERVICE}/Hold", request_serializer=encode, response_deserializer=decode
        )
        self._request = {"study": study_name, "scope": scope}
        self._call: Any = None

    def acquire(self, wait: bool = True) -> bool:
        call = self._hold({**self._request, "wait": wait})
        try:
            answer = next(call)
        except grpc.RpcError as exc:
            raise RuntimeError(
                f"the storage proxy could not take the study lock: {exc.code().name}"
            ) from None
        except BaseException:
            call.cancel()
            raise
        if answer == "held":
            self._call = call
            return True
        call.cancel()
        return False

    def release(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            call.cancel()  # the proxy sees the stream end and releases the DB's lock


class ProxyStorage(GrpcStorageProxy, BaseHeartbeat):
    """Optuna's gRPC storage client, with heartbeats and the study lock through sweeper's proxy."""

    def __init__(
        self,
        host: str,
        port: int,
        heartbeat_interval: int,
        grace: int,
        on_stale: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    ) -> None:
        self.heartbeat_interval, self.grace, self.on_stale = heartbeat_interval, grace, on_stale
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(host=host, port=port)

    def _setup(self) -> None:
        super()._setup()

        def call(name: str):
            return self._channel.unary_unary(
                f"/{SERVICE}/{name}", request_serializer=encode, response_deserializer=decode
            )

        self._hello, self._beat, self._stale = call("Hello"), call("Beat"), call("Stale")

    @property
    def address(self) -> str:
        return f"{SCHEME}{self._host}:{self._port}"

    def hello(self, timeout: float = CONNECT_TIMEOUT_S) -> dict:
        """The proxy's answer to a first call, waiting up to ``timeout`` for it to be up."""
        return self._hello({}, timeout=timeout, wait_for_ready=True)

    def lock(self, study_name: str, scope: str) -> ProxyLock:
        return ProxyLock(self._channel, study_name, scope)

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self._beat({"trial_id": trial_id}, timeout=max(self.heartbeat_interval, 5))
        except grpc.RpcError as exc:  # the next beat may get through before the grace period ends
            log.warning(
                "heartbeat of trial %d not recorded: the storage proxy answered %s", trial_id, exc.code().name
            )

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self._stale({"study_id": study_id, "grace": self.grace})

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self):
        return self.on_stale


def check_proxy(url: str) -> None:
    """Refuse (UserError) a storage proxy that does not answer, before anything else is done."""
    connect_proxy(url, heartbeat_interval=1, grace=2).close()


def connect_proxy(
    url: str, heartbeat_interval: int, grace: int, on_stale=None, timeout: float = CONNECT_TIMEOUT_S
) -> ProxyStorage:
    """The storage behind the proxy at ``url``; one that does not answer within ``timeout``
    seconds, or is no sweeper proxy, is one UserError."""
    host, port = parse_proxy_url(url)
    storage = ProxyStorage(host, port, heartbeat_interval, grace, on_stale)
    try:
        storage.hello(timeout)
    except grpc.RpcError as exc:
        storage.close()
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            raise UserError(
                f"{url} answers, but is no sweeper storage proxy (a plain Optuna proxy has no study "
                "lock and no heartbeats); start it with `python -m sweeper storage-proxy --storage DB_URL`"
            ) from None
        raise UserError(
            f"storage proxy {url} is not reachable ({exc.code().name} after {timeout:g}s); start it "
            f"with `python -m sweeper storage-proxy --storage DB_URL --host HOST --port {port}`, or "
            "give --storage the database URL"
        ) from None
    return storage
