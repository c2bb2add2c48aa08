"""``python -m sweeper storage-proxy``: one study DB served to any number of workers through
Optuna's gRPC storage proxy, over a small fixed pool of DB connections.

The server is the one ``optuna.storages.run_grpc_proxy_server`` builds (Optuna's servicer over
the cached RDB storage), with two additions on the same port: keepalive pings, so that a lost
worker machine ends its streams, and sweeper's service (proxy_client.py) for what Optuna's proxy
leaves out: heartbeats and the study lock.

DB connections: ``pool_size`` for every storage call and heartbeat, plus one per study lock held
at the moment (waiting workers wait inside the proxy, on no connection).
"""

from __future__ import annotations

import logging
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace

import grpc
import optuna
import sqlalchemy
from optuna.storages._grpc.auto_generated import api_pb2_grpc
from optuna.storages._grpc.servicer import OptunaStorageProxyService

from sweeper.errors import UserError
from sweeper.interrupts import signals_interrupt
from sweeper.proxy_client import SCHEME, SERVICE, decode, encode, is_proxy_url
from sweeper.redact import redact
from sweeper.storage import StudyLock, make_storage

log = logging.getLogger(__name__)

DEFAULT_POOL_SIZE = 4
# threads serve calls; a worker waiting for the study lock holds one, so there are many
THREADS = 512
KEEPALIVE = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.max_receive_message_length", -1),
]


class SweeperService:
    """Heartbeats into the DB and the study lock held for a worker while its stream is open."""

    def __init__(self, rdb: optuna.storages.RDBStorage) -> None:
        self._rdb = rdb
        # the lock's connection is its own, opened for the hold: a held lock never takes one
        # the storage calls of its holder are waiting for
        lock_engine = sqlalchemy.create_engine(rdb.engine.url, poolclass=sqlalchemy.pool.NullPool)
        self._lock_storage = SimpleNamespace(engine=lock_engine)
        self._local: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def hello(self, request: dict, context) -> dict:
        return {"sweeper": 1, "backend": self._rdb.engine.dialect.name}

    def beat(self, request: dict, context) -> dict:
        self._rdb.record_heartbeat(int(request["trial_id"]))
        return {}  # gRPC takes None for a failure

    def stale(self, request: dict, context) -> list[int]:
        # the worker's grace period, on the same engine (copy.copy would pickle the storage,
        # and unpickling opens a new engine: a new pool of connections per call)
        view = object.__new__(type(self._rdb))
        view.__dict__.update(vars(self._rdb))
        view.grace_period = view.heartbeat_interval = int(request["grace"])
        return view._get_stale_trial_ids(int(request["study_id"]))

    def hold(self, request: dict, context):
        """Answer "held" once the lock is taken (or "busy" when not waiting), then hold it until
        the worker ends the stream, or dies."""
        key = (str(request["study"]), str(request.get("scope", "study")))
        wait = bool(request.get("wait", True))
        with self._guard:
            local = self._local.setdefault(key, threading.Lock())
        if not _take(local, wait, context):
            if not wait:
                yield "busy"
            return
        try:
            lock = StudyLock(self._lock_storage, *key)
            if not lock.acquire(wait):  # a worker on the DB directly, or another proxy, has it
                yield "busy"
                return
            try:
                yield "held"
                ended = threading.Event()
                if context.add_callback(ended.set):
                    ended.wait()
            finally:
                lock.release()
        finally:
            local.release()

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(method):
            return grpc.unary_unary_rpc_method_handler(
                method, request_deserializer=decode, response_serializer=encode
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Hello": unary(self.hello),
                "Beat": unary(self.beat),
                "Stale": unary(self.stale),
                "Hold": grpc.unary_stream_rpc_method_handler(
                    self.hold, request_deserializer=decode, response_serializer=encode
                ),
            },
        )


def _take(local: threading.Lock, wait: bool, context) -> bool:
    if not wait:
        return local.acquire(blocking=False)
    while not local.acquire(timeout=1.0):
        if not context.is_active():  # the worker is gone
            return False
    return True


@dataclass(frozen=True)
class ProxyStopped:
    """The proxy's outcome: it served until a signal stopped it."""

    address: str

    def lines(self) -> list[str]:
        return [f"storage proxy at {self.address} stopped"]


def make_proxy_server(url: str, host: str, port: int, pool_size: int = DEFAULT_POOL_SIZE) -> grpc.Server:
    """The proxy's server, bound to ``host:port`` and not started; a bad URL or a port in use is
    one UserError."""
    if is_proxy_url(url):
        raise UserError(f"storage-proxy --storage {url!r} is itself a proxy; give it the database URL")
    if pool_size < 1:
        raise UserError(f"--pool-size is {pool_size}; give at least 1 connection")
    rdb = make_storage(url, pool_size=pool_size)
    server = grpc.server(ThreadPoolExecutor(max_workers=THREADS), options=KEEPALIVE)
    api_pb2_grpc.add_StorageServiceServicer_to_server(
        OptunaStorageProxyService(optuna.storages.get_storage(rdb)), server
    )
    server.add_generic_rpc_handlers((SweeperService(rdb).handler(),))
    try:
        server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:
        raise UserError(
            f"storage-proxy cannot listen on {host}:{port} ({exc}); is the port in use? Use --port"
        ) from None
    return server


def serve_proxy(url: str, host: str, port: int, pool_size: int, say) -> ProxyStopped:
    """Serve the study DB at ``url`` on ``host:port`` until SIGINT or SIGTERM."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        server = make_proxy_server(url, host, port, pool_size)
    address = f"{SCHEME}{host}:{port}"
    server.start()
    say(f"storage proxy for {redact(url)} at {address}, {pool_size} DB connections (+1 per study lock held)")
    say(f"workers join with: python -m sweeper worker --storage {address}")
    try:
        with signals_interrupt():
            server.wait_for_termination()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop(grace=2).wait()
    return ProxyStopped(address)
