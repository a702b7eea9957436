"""Toolchains named in the operator's policy: a job's toolchain outside the
listed folders is refused at submission, by rule `toolchains-allowed`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from orchestrator.errors import PolicyDenied
from orchestrator.guard.policy import (
    DEFAULT_POLICY,
    TOOLCHAIN_RULE,
    PolicyDoc,
    combine,
    parse_policy,
    toolchain_refusal,
)
from orchestrator.run import jobs
from orchestrator.run.jobspec import parse_spec


def test_a_toolchain_must_be_a_listed_folder_or_inside_one() -> None:
    allowed = ("/opt/pyenv/versions", ".venv")
    assert toolchain_refusal(None, ["/anything"], "/w/t") is None  # no list: any folder
    assert toolchain_refusal(allowed, ["/opt/pyenv/versions/3.11.7"], "/w/t") is None
    assert toolchain_refusal(allowed, ["/w/t/.venv"], "/w/t") is None  # relative: in the target
    why = toolchain_refusal(allowed, ["/opt/pyenv/versions-old/3.9"], "/w/t")
    assert why is not None and "/opt/pyenv/versions-old/3.9" in why and ".venv" in why
    assert toolchain_refusal(allowed, ["/w/other/.venv"], "/w/t") is not None
    assert toolchain_refusal((), ["/opt/pyenv/versions/3.11.7"], "/w/t") is not None  # none


def test_combined_policies_allow_only_what_every_list_allows() -> None:
    a = PolicyDoc(name="a", toolchains=("/opt",))
    b = PolicyDoc(name="b", toolchains=("/opt/py", "/usr/local"))
    assert combine(a, b).toolchains == ("/opt/py",)
    assert combine(a, PolicyDoc(name="c")).toolchains == ("/opt",)  # an unset list narrows nothing
    assert combine(PolicyDoc(name="c"), PolicyDoc(name="d")).toolchains is None


def test_the_hash_changes_only_for_a_policy_that_lists_toolchains() -> None:
    assert parse_policy({"name": "default"}).hash == DEFAULT_POLICY.hash
    listed = parse_policy({"name": "default", "toolchains": ["/opt/py"]})
    assert listed.hash != DEFAULT_POLICY.hash and "toolchains" in listed.document


def _spec(toolchains: str) -> str:
    return (
        f"name: tc\ntargets: [repo]\ntoolchains: [{toolchains}]\n"
        "steps: [{kind: shell, command: [python, -V]}]\n"
    )


def test_submission_refuses_a_toolchain_the_operator_did_not_list(tmp_path: Path) -> None:
    (tmp_path / "repo" / ".venv").mkdir(parents=True)
    here = str(Path(sys.prefix).resolve())
    operator = PolicyDoc(name="operator", toolchains=(str(Path(here).parent), ".venv"))
    _, tickets = jobs.prepare(parse_spec(_spec(here)), tmp_path, policy_files=[operator])
    assert tickets[0].toolchains == (here,)
    _, tickets = jobs.prepare(parse_spec(_spec(".venv")), tmp_path, policy_files=[operator])
    assert tickets[0].toolchains == (str((tmp_path / "repo" / ".venv").resolve()),)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(PolicyDenied) as refused:
        jobs.prepare(parse_spec(_spec(str(elsewhere))), tmp_path, policy_files=[operator])
    assert refused.value.rule_id == TOOLCHAIN_RULE and str(elsewhere) in str(refused.value)
    # the job's own policy cannot widen the operator's list
    widened = _spec(str(elsewhere)) + f"policy: {{toolchains: [{elsewhere}]}}\n"
    with pytest.raises(PolicyDenied):
        jobs.prepare(parse_spec(widened), tmp_path, policy_files=[operator])
