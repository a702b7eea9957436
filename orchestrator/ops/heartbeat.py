"""Worker heartbeats: how readiness knows a worker is alive and can reach its store.

Each worker publishes a `Beat` every `worker_heartbeat_interval_s`:

- always as a file, `state_dir/heartbeats/<hostname>.json`, so a Kubernetes
  exec probe or systemd watchdog on the worker's own machine can read it;
- on a Redis broker, also as a Redis key `orchestrator:heartbeat:<hostname>`
  that expires after `worker_heartbeat_max_age_s`, so the API on another
  machine sees every worker.

Celery's own worker heartbeats need an event receiver running for a while
before they say anything; a file and a key with a TTL answer at once.
`fresh` is pure; `publish`, `read_all` and `withdraw` are the thin I/O.

A beat also lists the sessions the worker is running (`active`). That list
is kept apart as the worker's in-flight record (`state_dir/inflight/` and,
on Redis, `orchestrator:inflight:<hostname>`, kept a day): when a worker
dies without stopping (kill -9, a lost machine) its record stops being
renewed, and once it is older than `worker_heartbeat_max_age_s` another
worker `claim_stale`s it (one claim wins: the file's unlink, the key's DEL)
and re-enqueues those sessions (tasks.reaper) instead of waiting for the
broker's visibility timeout.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from orchestrator.config.settings import Settings

__all__ = [
    "Beat",
    "publish",
    "withdraw",
    "read_all",
    "read_files",
    "fresh",
    "folder",
    "REDIS_PREFIX",
    "claim_stale",
    "stale",
]

REDIS_PREFIX = "orchestrator:heartbeat:"
INFLIGHT_PREFIX = "orchestrator:inflight:"
INFLIGHT_KEEP_S = 24 * 3600


@dataclass(frozen=True)
class Beat:
    hostname: str  # the Celery worker's node name (worker@host)
    pid: int
    at: float  # unix time of the check this beat reports
    store_ok: bool  # the worker reached its event store at `at`
    detail: str = ""  # why not, when store_ok or broker_ok is False
    queues: tuple[str, ...] = ()
    broker_ok: bool = True  # the worker reached its broker at `at`
    active: tuple[str, ...] = ()  # "JOB_ID/SESSION_ID" of each session it runs now

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["queues"] = list(self.queues)
        data["active"] = list(self.active)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Beat:
        return cls(
            hostname=str(data["hostname"]),
            pid=int(data["pid"]),
            at=float(data["at"]),
            store_ok=bool(data["store_ok"]),
            detail=str(data.get("detail", "")),
            queues=tuple(data.get("queues", ())),
            broker_ok=bool(data.get("broker_ok", True)),
            active=tuple(data.get("active", ())),
        )


def fresh(beats: Iterable[Beat], now: float, max_age_s: float) -> list[Beat]:
    """The beats no older than `max_age_s` at `now` (pure)."""
    return [b for b in beats if now - b.at <= max_age_s]


def stale(beats: Iterable[Beat], now: float, max_age_s: float, me: str) -> list[Beat]:
    """Other workers' in-flight records that stopped being renewed, with
    sessions in them (pure)."""
    return [b for b in beats if b.hostname != me and b.active and now - b.at > max_age_s]


def folder(settings: Settings) -> Path:
    return settings.state / "heartbeats"


def _file(settings: Settings, hostname: str, kind: str = "heartbeats") -> Path:
    safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in hostname)
    return settings.state / kind / f"{safe}.json"


def _write(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(body)
    os.replace(tmp, path)


def _redis_url(settings: Settings) -> str | None:
    for url in (settings.broker_url, settings.result_backend):
        if url and url.startswith(("redis://", "rediss://")):
            return url
    return None


def _redis(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)


def publish(settings: Settings, beat: Beat, *, inflight_only: bool = False) -> None:
    """Write the beat's file (atomically) and, on Redis, its expiring key, and
    the in-flight record beside them; `inflight_only`: the record alone (a
    task arrived between beats: readiness needs no new beat for that).
    A Redis that is down is not an error here: readiness reports the broker."""
    body = json.dumps(beat.to_json())
    if not inflight_only:
        _write(_file(settings, beat.hostname), body)
    _write(_file(settings, beat.hostname, "inflight"), body)
    url = _redis_url(settings)
    if url is not None:
        import redis

        try:
            pipe = _publisher(url).pipeline(transaction=False)
            if not inflight_only:
                pipe.set(
                    REDIS_PREFIX + beat.hostname,
                    body,
                    px=int(settings.worker_heartbeat_max_age_s * 1000),
                )
            pipe.set(INFLIGHT_PREFIX + beat.hostname, body, ex=INFLIGHT_KEEP_S)
            pipe.execute()
        except redis.RedisError:
            pass


_publishers: dict[str, tuple[int, Any]] = {}


def _publisher(url: str) -> Any:
    """This process's client for its beats, kept open: a worker publishes its
    in-flight record as each task arrives, and a new client per beat costs a
    connection and its handshake every time (bench/README.md, dispatch). It
    reconnects by itself after an error; a forked child makes its own."""
    held = _publishers.get(url)
    if held is None or held[0] != os.getpid():
        held = _publishers[url] = (os.getpid(), _redis(url))
    return held[1]


def withdraw(settings: Settings, hostname: str) -> None:
    """A stopping worker removes its beat, so readiness flips at once."""
    _file(settings, hostname).unlink(missing_ok=True)
    _file(settings, hostname, "inflight").unlink(missing_ok=True)
    url = _redis_url(settings)
    if url is not None:
        import redis

        try:
            client = _redis(url)
            client.delete(REDIS_PREFIX + hostname, INFLIGHT_PREFIX + hostname)
            client.close()
        except redis.RedisError:
            pass


def read_all(settings: Settings) -> list[Beat]:
    """Every published beat: the Redis keys on a Redis broker (all machines),
    else the files in this machine's state folder. Raises redis.RedisError
    when Redis cannot be read (the caller reports it)."""
    url = _redis_url(settings)
    if url is not None:
        client = _redis(url)
        try:
            keys = list(client.scan_iter(match=REDIS_PREFIX + "*", count=500))
            bodies = client.mget(keys) if keys else []
        finally:
            client.close()
        return [Beat.from_json(json.loads(b)) for b in bodies if b]
    return read_files(settings)


def read_files(settings: Settings) -> list[Beat]:
    """The beats in this machine's state folder only (an exec probe asks about
    its own pod or host, without the broker)."""
    beats = []
    for path in sorted(folder(settings).glob("*.json")):
        try:
            beats.append(Beat.from_json(json.loads(path.read_text())))
        except (OSError, ValueError, KeyError):
            continue  # a half-written or foreign file is not a heartbeat
    return beats


def claim_stale(settings: Settings, now: float, me: str) -> list[Beat]:
    """Take the in-flight records of workers that died (see the module doc):
    each is returned to exactly one claimant and removed."""
    max_age = settings.worker_heartbeat_max_age_s
    url = _redis_url(settings)
    claimed = []
    if url is not None:
        client = _redis(url)
        try:
            keys = list(client.scan_iter(match=INFLIGHT_PREFIX + "*", count=500))
            bodies = client.mget(keys) if keys else []
            records = [Beat.from_json(json.loads(b)) for b in bodies if b]
            for beat in stale(records, now, max_age, me):
                if client.delete(INFLIGHT_PREFIX + beat.hostname) == 1:
                    claimed.append(beat)
        finally:
            client.close()
        return claimed
    records = []
    for path in sorted((settings.state / "inflight").glob("*.json")):
        try:
            records.append(Beat.from_json(json.loads(path.read_text())))
        except (OSError, ValueError, KeyError):
            continue
    for beat in stale(records, now, max_age, me):
        try:
            _file(settings, beat.hostname, "inflight").unlink()
        except FileNotFoundError:
            continue  # another worker claimed it first
        claimed.append(beat)
    return claimed
