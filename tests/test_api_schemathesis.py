"""Generated requests against the published OpenAPI spec of a real uvicorn
server (embedded store and broker): whatever a client sends, the answer is
never a 5xx (schemathesis' not_a_server_error), with a token and without.

/readyz is left out: its 503 is the documented answer "not ready" (no worker
runs here), not a server error; test_api covers it."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.api_helpers import api_env, api_server, auth
from tests.cli_helpers import shape_env

EXAMPLES = 25  # per operation: the whole run stays well under a minute


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("schemathesis")
    (tmp / "ws" / "repo").mkdir(parents=True)
    (tmp / "ws" / "repo" / "a.py").write_text("x = 1\n")
    env = api_env(shape_env(tmp), tmp / "ws")
    with api_server(env, tmp / "api.log") as base:
        yield base


def _fuzz(base: str, headers: dict[str, str], examples: int) -> list[str]:
    """Each operation's generated cases (valid and invalid data: schemathesis
    generates both), sent to the server; the failures, described."""
    from hypothesis import given

    schema = schemathesis.openapi.from_url(f"{base}/openapi.json").exclude(path="/readyz")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case) -> None:  # type: ignore[no-untyped-def]
            case.call_and_validate(
                base_url=base, headers=headers, checks=[not_a_server_error], timeout=30
            )

        try:
            run()
        except Exception as exc:  # noqa: BLE001  (collect every operation's failure)
            failures.append(f"{operation.label}: {str(exc)[:2000]}")
    return failures


def test_no_generated_request_gets_a_server_error(served):
    assert _fuzz(served, auth("admin"), EXAMPLES) == []


def test_no_generated_request_without_a_token_gets_a_server_error(served):
    assert _fuzz(served, {}, 5) == []
