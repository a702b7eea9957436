"""The embedded broker: kombu's SQLAlchemy transport, tuned and made crash-safe.

Stock kombu polls every second (1,009 ms p50 per round trip measured here) and
passes transport options straight to `create_engine`, so the interval cannot
be set by options. It also never deletes a delivered message and loses any
message whose worker died without a clean shutdown. This subclass:

- wakes on work instead of polling: each waiting consumer has its own FIFO in
  a folder beside the database (`broker.sqlite.wake.d/`), and every publish
  (from any process on the host) and every ack or reject (a pool process is
  free again) writes a byte to each of them. A consumer with nothing to take
  waits on its own FIFO, at most `WAKE_MAX_S` (messages whose visibility
  timeout expired are found then). One FIFO shared by all consumers lost
  wake-ups: a consumer that found its queue empty just before a publish, and
  had not yet started waiting, found the byte already read by another and
  slept the full quarter second (the dispatch bench's embedded peers, four
  workers on one broker: 253 ms p50 in one run, 15 ms in the next). Where
  there is no FIFO (not SQLite, not POSIX) it polls every
  `polling_interval` (5 ms by default);
- opens SQLite in WAL mode with a long busy timeout (several processes share it);
- deletes a message when it is acknowledged or rejected (on its own
  connection: Celery's prefork pool acks from its result thread, and the
  channel's ORM session belongs to the consuming thread);
- redelivers a taken-but-unacknowledged message after `visibility_timeout`
  seconds, like Redis does, so `kill -9` of a whole worker loses nothing;
- restores a message in place (instead of copying it) on requeue or shutdown.

Registered as `orchsqla`: broker URL `orchsqla+sqlite:///PATH`.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import errno
import os
import secrets
import select
import stat
import time
from typing import Any

import sqlalchemy as sa
from celery.worker import state as worker_state
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import sqlalchemy as kombu_sqla
from sqlalchemy import event as sa_event
from sqlalchemy.engine import make_url

_OWN_OPTIONS = ("polling_interval", "visibility_timeout")
RESTORE_CHECK_EVERY_S = 1.0
# The longest an idle consumer waits without a wake-up: the bound on how late
# it sees a message another consumer's wake-up woke first, or one redelivered.
WAKE_MAX_S = 0.25


def wake_path(url: str) -> str | None:
    """The folder of the consumers' FIFOs for the SQLite broker database at
    `url` (None: not SQLite, or no FIFOs on this platform)."""
    if not url.startswith("sqlite") or not hasattr(os, "mkfifo"):
        return None
    db = make_url(url).database
    return f"{db}.wake.d" if db and db != ":memory:" else None


_WAKE_OPEN = os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)


def wake(path: str | None) -> None:
    """Tell every consumer waiting in the folder `path` that there may be work
    (never blocks; nobody waiting, or a FIFO already full of wake-ups, is
    fine). A FIFO nobody holds open any more is a consumer that died without
    closing: it is removed."""
    if path is None:
        return
    try:
        entries = os.scandir(path)
    except OSError:  # no consumer has waited on this broker yet
        return
    with entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue  # a consumer's FIFO before it holds it open (`_Waker`)
            try:
                fd = os.open(entry.path, _WAKE_OPEN)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no reader: its consumer is gone
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
                continue  # ELOOP: a symlink, never followed
            try:
                if stat.S_ISFIFO(os.fstat(fd).st_mode):  # nothing else is written to
                    os.write(fd, b"\0")
            except OSError:  # EAGAIN: full, so that consumer wakes anyway
                pass
            finally:
                os.close(fd)


class _Waker:
    """A consumer's own FIFO in the wake folder: `wait(timeout)` returns on a
    wake-up (True) or when the timeout passes (False). A wake-up written
    while the consumer was busy waits in its FIFO for its next `wait`."""

    def __init__(self, folder: str) -> None:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        name = f"{os.getpid()}-{secrets.token_hex(6)}"
        hidden = os.path.join(folder, f".{name}")
        os.mkfifo(hidden, 0o600)
        try:
            # Read-write: the FIFO never reads as closed (EOF) when no writer
            # has it, and a producer's open finds a reader from now on.
            self.fd = os.open(hidden, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            if not stat.S_ISFIFO(os.fstat(self.fd).st_mode):
                raise OSError(f"{hidden} is not a FIFO")
            self.path = os.path.join(folder, name)
            os.rename(hidden, self.path)  # shown to producers once it has its reader
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(hidden)
            raise
        self._owner = os.getpid()
        # Celery's warm shutdown does not always close the broker connection.
        atexit.register(self.close)

    def wait(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self.fd, 4096):
                    pass
        return bool(ready)

    def close(self) -> None:
        """Remove the FIFO (only the process that made it: a forked child
        holds a copy of the descriptor, not the consumer)."""
        if os.getpid() != self._owner or self.fd < 0:
            return
        atexit.unregister(self.close)
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = -1


def _stopping() -> bool:
    """Whether the worker was told to stop (SIGTERM, SIGINT, a remote
    shutdown). Celery's loop checks that only between two `drain_events`,
    which it gives 2 s: waiting out the rest made a warm shutdown take 3 s
    more than it needed (`orchestrator run` stopping the worker it started)."""
    # By identity, as Celery does: a warm shutdown's flag is its exit code, 0.
    flags = (worker_state.should_stop, worker_state.should_terminate)
    return any(f is not None and f is not False for f in flags)


class Channel(kombu_sqla.Channel):
    def __init__(self, connection: Any, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        opts = connection.client.transport_options
        self.visibility_timeout = float(opts.get("visibility_timeout", 3600.0))
        self._taken: dict[str, int] = {}  # delivery tag -> message row id
        self._next_restore_check = 0.0
        self.wake_path = wake_path(connection.client.hostname or "")

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        super()._put(queue, payload, **kwargs)
        wake(self.wake_path)  # stored and committed: a waiting consumer takes it

    def _engine_from_config(self) -> sa.Engine:
        conninfo = self.connection.client
        options = {
            k: v
            for k, v in conninfo.transport_options.items()
            if k not in _OWN_OPTIONS
            and k
            not in (
                "queue_tablename",
                "message_tablename",
                "callback",
                "errback",
                "max_retries",
                "interval_start",
                "interval_step",
                "interval_max",
                "retry_errors",
            )
        }
        url = conninfo.hostname
        if url.startswith("sqlite"):
            options.setdefault("connect_args", {"timeout": 60, "check_same_thread": False})
        engine = sa.create_engine(url, **options)
        if url.startswith("sqlite"):

            @sa_event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA busy_timeout=60000")
                cur.close()

        return engine

    @property
    def _table(self) -> sa.Table:
        return self.message_cls.__table__  # type: ignore[no-any-return]

    def _restore_expired(self) -> None:
        now = time.monotonic()
        if now < self._next_restore_check:
            return
        self._next_restore_check = now + RESTORE_CHECK_EVERY_S
        # `timestamp` is bumped to now (naive local time) by kombu's model
        # whenever the row is updated, i.e. when it was taken.
        cutoff = datetime.datetime.now() - datetime.timedelta(seconds=self.visibility_timeout)
        t = self._table
        self.session.execute(
            sa.update(t)
            .where(t.c.visible == sa.false(), t.c.timestamp < cutoff)
            .values(visible=True)
        )
        self.session.commit()

    def _get(self, queue: str) -> Any:
        self._restore_expired()
        obj = self._get_or_create(queue)
        if self.session.bind.name == "sqlite":
            self.session.execute(sa.text("BEGIN IMMEDIATE TRANSACTION"))
        try:
            msg = (
                self.session.query(self.message_cls)
                .with_for_update()
                .filter(self.message_cls.queue_id == obj.id)
                .filter(self.message_cls.visible != False)  # noqa: E712
                .order_by(self.message_cls.sent_at)
                .order_by(self.message_cls.id)
                .limit(1)
                .first()
            )
            if msg is None:
                raise kombu_sqla.Empty()
            msg.visible = False
            payload = kombu_sqla.loads(kombu_sqla.bytes_to_str(msg.payload))
            tag = payload.get("properties", {}).get("delivery_tag")
            if tag is not None:
                self._taken[tag] = msg.id
            return payload
        finally:
            self.session.commit()

    def _on_row(self, statement: sa.Executable) -> None:
        engine = self._open()[0]
        with engine.begin() as conn:
            conn.execute(statement)

    def _forget(self, delivery_tag: str) -> None:
        row_id = self._taken.pop(delivery_tag, None)
        if row_id is not None:
            t = self._table
            self._on_row(sa.delete(t).where(t.c.id == row_id))

    def basic_ack(self, delivery_tag: str, multiple: bool = False) -> None:
        super().basic_ack(delivery_tag, multiple)
        self._forget(delivery_tag)
        wake(self.wake_path)  # a pool process is free: the consumer may take more

    def basic_reject(self, delivery_tag: str, requeue: bool = False) -> None:
        super().basic_reject(delivery_tag, requeue=requeue)
        if not requeue:
            self._forget(delivery_tag)
        wake(self.wake_path)

    def _restore(self, message: Any) -> None:
        row_id = self._taken.pop(message.delivery_tag, None)
        if row_id is None:
            super()._restore(message)
            return
        t = self._table
        self._on_row(sa.update(t).where(t.c.id == row_id).values(visible=True))


class Transport(kombu_sqla.Transport):
    Channel = Channel
    polling_interval = 0.005  # kombu's virtual transport reads the option too

    _waker: _Waker | None = None
    _polls = False  # no FIFO here: kombu's polling loop

    def _consumer_waker(self) -> _Waker | None:
        """This consumer's end of the FIFO, opened on its first wait (producers,
        which never wait, do not hold it)."""
        if self._waker is None and not self._polls:
            path = wake_path(self.client.hostname or "")
            try:
                self._waker = _Waker(path) if path is not None else None
            except OSError:
                self._waker = None
            self._polls = self._waker is None
        return self._waker

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        """kombu's loop, waiting for a wake-up where it would sleep a poll interval."""
        waker = self._consumer_waker()
        if waker is None:
            return super().drain_events(connection, timeout)  # type: ignore[no-any-return]
        started = time.monotonic()
        while True:
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                return
            except kombu_sqla.Empty:
                if _stopping():
                    raise TimeoutError() from None  # let the worker's loop see it
                left = WAKE_MAX_S
                if timeout is not None:
                    left = min(left, timeout - (time.monotonic() - started))
                    if left <= 0:
                        raise TimeoutError() from None
                waker.wait(left)

    def close_connection(self, connection: Any) -> None:
        if self._waker is not None:
            self._waker.close()
            self._waker = None
        super().close_connection(connection)


TRANSPORT_ALIASES["orchsqla"] = "tasks.broker:Transport"
