"""The worker's heartbeat and probes, and the masked argument summaries tasks carry.

Pure parts (summaries, the exec probe's verdict) without fixtures; the probe
endpoint and the heartbeat through a real worker process on the embedded
default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.cli.ops import probe_verdict
from orchestrator.config.settings import Settings
from orchestrator.ops import heartbeat
from tasks.summary import describe
from tasks.worker_probe import Probe, serve
from tests.cli_helpers import cli, shape_env
from tests.ops_helpers import free_port, get, start_worker, stop, wait_until

TICKET = {
    "job_id": "job-1",
    "session_id": "sess-1",
    "target": "repos/a",
    "policy": {"rules": [{"id": "no-curl"}]},
    "agent": {"turns": ["hello model"]},
}


# -- summaries (pure) ----------------------------------------------------------------


def test_a_step_task_shows_job_target_and_step_before_its_session_but_no_step_body() -> None:
    step = {
        "kind": "write",
        "name": "license",
        "path": "LICENSE",
        "content": "the whole file content",
    }
    argsrepr, kwargsrepr = describe("orchestrator.run_step", [TICKET, 1, step, True], {})
    assert (argsrepr, kwargsrepr) == (
        "job=job-1 target=repos/a step=2 write (license) session=sess-1",
        "{}",
    )


def test_a_chunk_names_its_first_sessions_and_how_many() -> None:
    tickets = [{**TICKET, "session_id": f"s{i}"} for i in range(5)]
    argsrepr, _ = describe("orchestrator.run_steps", [tickets, 0, {"kind": "replace"}, False], {})
    assert argsrepr == "job=job-1 step=1 replace sessions=5 [s0, s1, s2, …]"


def test_secrets_in_a_target_or_step_name_are_masked() -> None:
    ticket = {**TICKET, "target": "token=abcd1234efgh repo-hunter22"}
    step = {"kind": "shell", "name": "with sk-abcdefghijklmnopqrstuvwxyz0123", "command": ["curl"]}
    argsrepr, _ = describe(
        "orchestrator.run_step", [ticket, 0, step, True], {}, secrets=("hunter22",)
    )
    assert argsrepr == (
        "job=job-1 target=token=*** repo-*** step=1 shell (with ***) session=sess-1"
    )


def test_an_unknown_orchestrator_task_shows_only_how_many_arguments_it_got() -> None:
    assert describe("orchestrator.future_task", ["secret payload", 2], {"k": "v"}) == (
        "2 argument(s) not shown",
        "1 keyword argument(s) not shown",
    )


def test_agent_and_signing_tasks_have_their_own_summaries() -> None:
    assert describe("orchestrator.agent_advance", [TICKET], {})[0] == (
        "job=job-1 target=repos/a agent turn session=sess-1"
    )
    assert describe("orchestrator.audit.sign_heads", [["a", "b", "c"]], {})[0] == "streams=3"


def test_messages_sent_without_a_summary_get_one_from_the_app() -> None:
    from tasks.app import app

    message = app.amqp.create_task_message("id-1", "orchestrator.agent_advance", (TICKET,), {})
    assert message.headers["argsrepr"] == "job=job-1 target=repos/a agent turn session=sess-1"
    assert "hello model" not in json.dumps(message.headers)
    other = app.amqp.create_task_message("id-2", "celery.ping", (1,), {})
    assert other.headers["argsrepr"] == "(1,)"


# -- the exec probe's verdict (pure) -------------------------------------------------


def beat(host: str, at: float, store_ok: bool = True, detail: str = "") -> heartbeat.Beat:
    return heartbeat.Beat(hostname=host, pid=7, at=at, store_ok=store_ok, detail=detail)


def test_probe_verdict_needs_a_fresh_beat_that_reached_the_store() -> None:
    assert probe_verdict([beat("w@a", 95.0)], None, 100.0, 30.0)[0]
    stale = probe_verdict([beat("w@a", 10.0)], None, 100.0, 30.0)
    assert stale == (False, "the newest heartbeat is 90 s old (limit 30 s)")
    blind = probe_verdict([beat("w@a", 99.0, False, "connection refused")], None, 100.0, 30.0)
    assert blind == (False, "w@a: store unreachable: connection refused")
    assert probe_verdict([beat("w@a", 99.0)], "w@b", 100.0, 30.0)[0] is False
    assert probe_verdict([], None, 100.0, 30.0)[0] is False


# -- the probe endpoint, in this process --------------------------------------------


def test_probe_endpoint_answers_from_the_last_round(tmp_path: Path) -> None:
    s = Settings(state_dir=tmp_path, worker_heartbeat_interval_s=60)
    verdicts = {"store": (True, ""), "broker": (True, "")}
    probe = Probe(
        s,
        "w1@test",
        store_check=lambda _: verdicts["store"],
        broker_check=lambda _: verdicts["broker"],
    )
    port = free_port()
    server = serve(probe, "127.0.0.1", port)
    try:
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 503  # no thread yet
        probe.start()
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        assert get(f"http://127.0.0.1:{port}/readyz") == (
            200,
            {
                "ok": True,
                "worker": "w1@test",
                "failed": [],
                "checks": [
                    {"name": "store", "ok": True, "detail": ""},
                    {"name": "broker", "ok": True, "detail": ""},
                ],
            },
        )
        verdicts["broker"] = (False, "broker redis://x: no answer to PING")
        probe.round()
        status, body = get(f"http://127.0.0.1:{port}/readyz")
        assert (status, body["failed"]) == (503, ["broker"])
        assert body["checks"][1]["detail"] == "broker redis://x: no answer to PING"
        assert [b.hostname for b in heartbeat.read_all(s)] == ["w1@test"]
        status, text = get(f"http://127.0.0.1:{port}/metrics")
        assert status in (200, 501), text  # 501 only where orchestrator.ops.metrics is absent
        assert get(f"http://127.0.0.1:{port}/nope")[0] == 404
    finally:
        server.shutdown()
        server.server_close()
        probe.stop()
    assert heartbeat.read_all(s) == []  # withdrawn: readiness flips at once


def test_a_check_that_raises_makes_the_worker_not_ready(tmp_path: Path) -> None:
    def boom(_: Settings) -> tuple[bool, str]:
        raise RuntimeError("driver exploded")

    probe = Probe(
        Settings(state_dir=tmp_path), "w@t", store_check=boom, broker_check=lambda _: (True, "")
    )
    b = probe.round()
    assert (b.store_ok, b.detail) == (False, "RuntimeError: driver exploded")
    assert probe.readyz()[0] == 503


def test_a_task_publishes_the_in_flight_record_once_per_session_not_yet_in_it(
    tmp_path: Path,
) -> None:
    s = Settings(state_dir=tmp_path)
    now = [100.0]
    probe = Probe(
        s,
        "w@t",
        store_check=lambda _: (True, ""),
        broker_check=lambda _: (True, ""),
        clock=lambda: now[0],
        active=lambda: (),
    )
    probe.round()  # the beat before the first task
    beat_file = tmp_path / "heartbeats" / "w@t.json"
    record = tmp_path / "inflight" / "w@t.json"

    probe.nudge(("job-1/s-1",))  # a task of a session the record does not list
    assert probe._wake.is_set()
    probe._wake.clear()
    now[0] = 101.0
    assert probe.round(check=False).active == ("job-1/s-1",)
    assert json.loads(record.read_text())["active"] == ["job-1/s-1"]
    assert json.loads(beat_file.read_text())["at"] == 100.0  # a nudge is no beat

    probe.nudge(("job-1/s-1",))  # its next step: listed already
    assert not probe._wake.is_set()
    probe.nudge(("job-1/s-2",))
    assert probe._wake.is_set()
    now[0] = 110.0
    assert probe.round().active == ("job-1/s-1", "job-1/s-2")  # received since the last beat
    assert json.loads(beat_file.read_text())["at"] == 110.0
    probe._wake.clear()
    now[0] = 120.0
    assert probe.round().active == ()  # neither runs any more
    probe.nudge(("job-1/s-1",))
    assert probe._wake.is_set()


# -- a real worker on the embedded default ---------------------------------------------


@pytest.mark.slow
def test_a_real_worker_beats_serves_its_probes_and_withdraws_when_it_stops(tmp_path: Path):
    port = free_port()
    env = shape_env(
        tmp_path,
        ORCH_WORKER_PROBE_PORT=str(port),
        ORCH_WORKER_PROBE_ADDRESS="127.0.0.1",
        ORCH_WORKER_HEARTBEAT_INTERVAL_S="0.5",
    )
    proc = start_worker(env, tmp_path / "worker.log")
    try:
        wait_until(
            "the worker's /readyz",
            lambda: get(f"http://127.0.0.1:{port}/readyz")[0] == 200,
            timeout=60,
        )
        status, body = get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200 and body["heartbeat_thread"] is True
        probe = cli(env, "worker-probe", "--json", timeout=60)
        assert probe.returncode == 0, probe.stdout + probe.stderr
        assert json.loads(probe.stdout)["ok"] is True
        health = cli(env, "health", "--json", timeout=60)
        assert health.returncode == 0, health.stdout + health.stderr
        assert json.loads(health.stdout)["failed"] == []
    finally:
        stop(proc)
    assert list((tmp_path / "state" / "heartbeats").glob("*.json")) == []
    after = cli(env, "worker-probe", timeout=60)
    assert after.returncode == 1 and "no heartbeat file" in after.stderr
    health = cli(env, "health", "--json", timeout=60)
    assert health.returncode == 4 and json.loads(health.stdout)["failed"] == ["workers"]
