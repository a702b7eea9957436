"""Test modules that run Celery workers or flush a Redis db keep to a db of
their own: two modules on one db, run side by side under xdist, take each
other's tasks (a worker of one store answering the other's job) or flush each
other's queues. Each names its db as `REDIS_DB`; this keeps them apart."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from tests.conftest import REDIS_URL

TESTS = Path(__file__).parent
DECLARED = re.compile(r"^REDIS_DB = (\d+)$", re.M)


def declared() -> dict[int, list[str]]:
    dbs: dict[int, list[str]] = defaultdict(list)
    for path in sorted(TESTS.rglob("*.py")):
        for m in DECLARED.finditer(path.read_text()):
            dbs[int(m.group(1))].append(str(path.relative_to(TESTS)))
    return dbs


def test_no_two_test_modules_share_a_redis_db() -> None:
    shared = {db: names for db, names in declared().items() if len(names) > 1}
    assert shared == {}, f"give each module its own REDIS_DB (0-15): {shared}"


def test_no_module_uses_the_shared_default_db() -> None:
    default = int(REDIS_URL.rsplit("/", 1)[1])
    assert default not in declared(), f"db {default} is conftest's shared default"


def test_no_module_picks_a_db_by_hand() -> None:
    """Built from the test server's URL, not spliced by hand (the idiom each
    module used to repeat, which let two of them pick the same number)."""
    idiom = 'rsplit("/", 1)[0] +'
    spliced = [
        p.name for p in TESTS.rglob("test_*.py") if p != Path(__file__) and idiom in p.read_text()
    ]
    assert spliced == [], f"use redis_db_url(REDIS_DB) in {spliced}"
