"""Small but real Python repositories for the example jobs to refactor.

Each repository is a package whose modules call `fetch_user` (a different
number of times in each), unittest tests written with the deprecated
`assertEquals`, and a `pyproject.toml` whose lines the `add-license` example
patches. The tests pass before and after every example in
`orchestrator/examples/`: the rename rewrites the tests' imports too, and the
license test only asks that metadata and file agree.

With `git` on PATH each repository gets an initial commit by a fixed author at
a fixed date (the same commit ids every time, no git configuration needed), so
`git diff` shows what a job changed. Without git the files are just written.

    python -m orchestrator.run.sample_repos demo/sample-repos --count 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

from orchestrator.errors import OrchestratorError, UserError

__all__ = ["create_sample_repos", "MARKER"]

# A repository carrying this file was written here, and may be replaced.
MARKER = ".orchestrator-sample"

_GIT_ENV = {
    "GIT_AUTHOR_NAME": "Sample Repos",
    "GIT_AUTHOR_EMAIL": "sample-repos@example.com",
    "GIT_COMMITTER_NAME": "Sample Repos",
    "GIT_COMMITTER_EMAIL": "sample-repos@example.com",
    "GIT_AUTHOR_DATE": "2025-01-01T12:00:00+00:00",
    "GIT_COMMITTER_DATE": "2025-01-01T12:00:00+00:00",
    # Neither the machine's nor the user's git configuration applies.
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
    "LC_ALL": "C",
    "PATH": os.defpath,
}


def create_sample_repos(dest: Path, count: int = 3) -> list[Path]:
    """Create `count` sample repositories under `dest` and return their paths.

    Idempotent: repositories this function made before (they carry `MARKER`)
    are removed and written afresh, including ones beyond `count`, so `dest`
    then holds exactly these. Anything else in `dest` is left alone, and a
    folder in the way that this function did not make is refused (UserError)
    before anything is changed."""
    if count < 1:
        raise UserError(f"count must be at least 1, not {count}")
    dest = Path(os.path.abspath(dest))
    names = [_repo_name(i) for i in range(count)]
    for name in names:
        path = dest / name
        if path.is_symlink() or (path.exists() and not (path / MARKER).is_file()):
            raise UserError(
                f"refusing to replace {path}: it was not created by "
                f"create_sample_repos (no {MARKER} file in it). Move it away or "
                "choose another destination."
            )
    dest.mkdir(parents=True, exist_ok=True)
    for child in sorted(dest.iterdir()):
        if child.is_dir() and not child.is_symlink() and (child / MARKER).is_file():
            shutil.rmtree(child)
    git = shutil.which("git")
    repos = []
    for i, name in enumerate(names):
        repo = dest / name
        for rel, content in _files(name, i).items():
            path = repo / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8", newline="\n")
        if git is not None:
            _commit(git, repo)
        repos.append(repo)
    return repos


def _repo_name(i: int) -> str:
    template = _TEMPLATES[i % len(_TEMPLATES)][0]
    return template if i < len(_TEMPLATES) else f"{template}-{i // len(_TEMPLATES) + 1}"


def _files(name: str, i: int) -> dict[str, str]:
    _, description, own = _TEMPLATES[i % len(_TEMPLATES)]
    pkg = name.replace("-", "_")
    files = {**_COMMON, **own}
    return {
        rel.replace("{pkg}", pkg): text.replace("{pkg}", pkg)
        .replace("{repo}", name)
        .replace("{description}", description)
        for rel, text in files.items()
    }


def _commit(git: str, repo: Path) -> None:
    env = {**_GIT_ENV, "HOME": str(repo)}
    for args in (
        ["-c", "init.defaultBranch=main", "init", "-q"],
        ["add", "-A"],
        ["-c", "commit.gpgsign=false", "commit", "-q", "-m", "Initial commit"],
    ):
        # `-C repo` after `init` finds repo/.git first, never an enclosing repository.
        proc = subprocess.run(
            [git, "-C", str(repo), *args],
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            raise OrchestratorError(
                f"`git {' '.join(args)}` failed in {repo} (exit {proc.returncode}): "
                f"{proc.stderr.strip()}. The files are written; remove PATH's git or fix it "
                "to get the initial commit."
            )


# --- the repositories ----------------------------------------------------------------

_COMMON = {
    MARKER: (
        "Created by orchestrator.run.sample_repos for the example jobs. "
        "create_sample_repos replaces folders that carry this file.\n"
    ),
    ".gitignore": "__pycache__/\n*.pyc\n",
    "README.md": """\
# {repo}

{description}. A sample repository for the example jobs in
`orchestrator/examples/`.

Run the tests with `python3 -m unittest discover -q`.
""",
    # The add-license example patches lines 4 to 6, the same in every repository.
    "pyproject.toml": """\
[project]
name = "{repo}"
description = "{description}"
version = "0.1.0"
requires-python = ">=3.9"
dependencies = []

[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"
""",
    "{pkg}/__init__.py": '''\
"""{description}."""

__version__ = "0.1.0"
''',
    "{pkg}/users.py": '''\
"""User records, looked up by id."""

from __future__ import annotations

_USERS = {
    1: {"id": 1, "name": "Ada Lovelace", "email": "ada@example.com", "active": True},
    2: {"id": 2, "name": "Grace Hopper", "email": "grace@example.com", "active": True},
    3: {"id": 3, "name": "Alan Turing", "email": "alan@example.com", "active": False},
}


class UnknownUser(LookupError):
    """No user has this id."""


def fetch_user(user_id: int) -> dict:
    """A copy of the user's record; UnknownUser if there is none."""
    try:
        return dict(_USERS[user_id])
    except KeyError:
        raise UnknownUser(user_id) from None
''',
    "tests/__init__.py": """\
import unittest

# assertEquals and assertNotEquals were deprecated aliases, removed in Python
# 3.12. Until every test is migrated (the fix-deprecations example job does
# it), keep them working on every version.
for _old, _new in (("assertEquals", "assertEqual"), ("assertNotEquals", "assertNotEqual")):
    if not hasattr(unittest.TestCase, _old):
        setattr(unittest.TestCase, _old, getattr(unittest.TestCase, _new))
""",
    "tests/test_packaging.py": '''\
"""The license file and the package metadata must agree."""

import pathlib
import re
import unittest

ROOT = pathlib.Path(__file__).resolve().parent.parent


class PackagingTest(unittest.TestCase):
    def test_license_is_declared_exactly_when_the_file_exists(self):
        pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
        declared = re.search(r'(?m)^license = \\{ *file = "LICENSE" *\\}$', pyproject) is not None
        shipped = (ROOT / "LICENSE").is_file()
        self.assertEqual(declared, shipped,
                         "pyproject.toml must declare LICENSE exactly when the file exists")
''',
}

_BILLING = {
    "{pkg}/invoices.py": '''\
"""Invoices for users."""

from __future__ import annotations

from .users import fetch_user

VAT_RATE = 0.2


def invoice_header(user_id: int) -> str:
    user = fetch_user(user_id)
    return f"Invoice for {user['name']} <{user['email']}>"


def invoice_total(user_id: int, amounts: list[float]) -> float:
    """The total with VAT; inactive users are not billed."""
    if not fetch_user(user_id)["active"]:
        return 0.0
    return round(sum(amounts) * (1 + VAT_RATE), 2)
''',
    "tests/test_invoices.py": """\
import unittest

from {pkg}.invoices import invoice_header, invoice_total
from {pkg}.users import UnknownUser, fetch_user


class InvoiceTest(unittest.TestCase):
    def test_the_header_names_the_user(self):
        self.assertEquals(invoice_header(1), "Invoice for Ada Lovelace <ada@example.com>")

    def test_the_total_adds_vat(self):
        self.assertEquals(invoice_total(2, [10.0, 5.0]), 18.0)

    def test_inactive_users_are_not_billed(self):
        self.assertEquals(invoice_total(3, [10.0]), 0.0)

    def test_an_unknown_user_is_an_error(self):
        with self.assertRaises(UnknownUser):
            fetch_user(99)
""",
}

_ACCOUNTS = {
    "{pkg}/profiles.py": '''\
"""Public profiles."""

from __future__ import annotations

from .users import fetch_user


def display_name(user_id: int) -> str:
    user = fetch_user(user_id)
    first, _, last = user["name"].partition(" ")
    return f"{first} {last[:1]}." if last else first


def profile(user_id: int) -> dict:
    user = fetch_user(user_id)
    return {"id": user["id"], "display_name": display_name(user_id), "active": user["active"]}
''',
    "{pkg}/permissions.py": '''\
"""Who may do what."""

from __future__ import annotations

from .users import fetch_user

ADMINS = frozenset({1})


def can_log_in(user_id: int) -> bool:
    return fetch_user(user_id)["active"]


def is_admin(user_id: int) -> bool:
    user = fetch_user(user_id)
    return user["active"] and user["id"] in ADMINS
''',
    "tests/test_accounts.py": """\
import unittest

from {pkg}.permissions import can_log_in, is_admin
from {pkg}.profiles import display_name, profile
from {pkg}.users import fetch_user


class ProfileTest(unittest.TestCase):
    def test_the_display_name_abbreviates_the_last_name(self):
        self.assertEquals(display_name(2), "Grace H.")

    def test_a_profile_shows_the_display_name(self):
        self.assertEquals(profile(1), {"id": 1, "display_name": "Ada L.", "active": True})

    def test_records_are_copies(self):
        fetch_user(1)["name"] = "changed"
        self.assertNotEquals(fetch_user(1)["name"], "changed")


class PermissionTest(unittest.TestCase):
    def test_inactive_users_cannot_log_in(self):
        self.assertFalse(can_log_in(3))

    def test_only_listed_users_are_admins(self):
        self.assertTrue(is_admin(1))
        self.assertFalse(is_admin(2))
""",
}

_NOTIFICATIONS = {
    "{pkg}/email.py": '''\
"""Email notifications."""

from __future__ import annotations

from .users import fetch_user


def recipient(user_id: int) -> str | None:
    """The address to write to; None for inactive users."""
    user = fetch_user(user_id)
    return user["email"] if user["active"] else None


def welcome_email(user_id: int) -> dict:
    user = fetch_user(user_id)
    return {"to": recipient(user_id), "subject": f"Welcome, {user['name']}!"}
''',
    "{pkg}/digest.py": '''\
"""The weekly digest."""

from __future__ import annotations

from . import email
from .users import fetch_user


def digest_recipients(user_ids: list[int]) -> list[str]:
    return [r for r in map(email.recipient, user_ids) if r is not None]


def digest_greeting(user_id: int) -> str:
    first_name = fetch_user(user_id)["name"].split()[0]
    return f"Hello {first_name}, here is your week."


def digest_subject(user_id: int) -> str:
    return f"Your week, {fetch_user(user_id)['name']}"
''',
    "{pkg}/sms.py": '''\
"""Text messages, for users who gave a phone number."""

from __future__ import annotations

from .users import fetch_user

PHONES = {1: "+44 20 7946 0000"}


def sms_target(user_id: int) -> str | None:
    user = fetch_user(user_id)
    return PHONES.get(user["id"]) if user["active"] else None
''',
    "tests/test_notifications.py": """\
import unittest

from {pkg}.digest import digest_greeting, digest_recipients, digest_subject
from {pkg}.email import recipient, welcome_email
from {pkg}.sms import sms_target
from {pkg}.users import fetch_user


class EmailTest(unittest.TestCase):
    def test_inactive_users_get_no_email(self):
        self.assertEquals(recipient(3), None)

    def test_the_welcome_email_greets_by_name(self):
        self.assertEquals(welcome_email(2)["subject"], "Welcome, Grace Hopper!")


class DigestTest(unittest.TestCase):
    def test_the_digest_skips_inactive_users(self):
        self.assertEquals(digest_recipients([1, 2, 3]), ["ada@example.com", "grace@example.com"])

    def test_the_greeting_uses_the_first_name(self):
        self.assertEquals(digest_greeting(1), "Hello Ada, here is your week.")
        self.assertEqual(digest_subject(2), "Your week, Grace Hopper")


class SmsTest(unittest.TestCase):
    def test_only_users_with_a_phone_get_texts(self):
        self.assertEqual(sms_target(1), "+44 20 7946 0000")
        self.assertIsNone(sms_target(2))
        self.assertTrue(fetch_user(2)["active"])
""",
}

# (repository name, description, its own files); the rest is _COMMON.
_TEMPLATES: list[tuple[str, str, dict[str, str]]] = [
    ("billing", "Invoices for the example users", _BILLING),
    ("accounts", "Profiles and permissions of the example users", _ACCOUNTS),
    ("notifications", "Email, text and digest notifications", _NOTIFICATIONS),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.run.sample_repos",
        description="Create the sample repositories the example "
        "jobs in orchestrator/examples/ refactor.",
    )
    parser.add_argument(
        "dest",
        nargs="?",
        default="sample-repos",
        type=Path,
        help="folder to create them in (default: ./sample-repos)",
    )
    parser.add_argument("--count", type=int, default=3, help="how many (default: 3)")
    args = parser.parse_args(argv)
    for repo in create_sample_repos(args.dest, args.count):
        print(repo)


if __name__ == "__main__":
    main()
