"""Files the policy denies inside the workspace are hidden from shell commands
under bubblewrap: first the pure parts (which paths, which mounts), then the
walk over real trees, then real commands that try every way of reaching a
canary secret (globs, recursion, archives, copies, links, scripts), which
must see nothing, change nothing, and leave git and allowed files working.

Tests needing bubblewrap skip without it, and FAIL when ORCH_REQUIRE_SERVICES=1."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.errors import PolicyDenied, ToolError
from orchestrator.guard.globs import glob_matcher
from orchestrator.guard.policy import DEFAULT_POLICY, Limits, parse_policy
from orchestrator.run.steps import ShellStep
from orchestrator.sandbox import masks
from orchestrator.sandbox import runtime as sandbox
from orchestrator.sandbox.runtime import Mask, Masker, describe, plan, workspace_masks
from orchestrator.tools.shell import CommandFailed, denied_reads, run_shell
from tests.security.test_sandbox import HOST, PY, ROOT_HOST, Box, _need_bwrap, box, request  # noqa: F401

BUILTIN = denied_reads(DEFAULT_POLICY)
EMPTY = "/run/empty-file"
WS = "/tmp/pytest-of-root/t0/ws"

# -- pure: the mounts ------------------------------------------------------------------


def test_masks_are_mounted_after_the_workspace_parents_first() -> None:
    masks = (
        Mask(f"{WS}/deploy/key.pem"),
        Mask(f"{WS}/.ssh", dir=True),
        Mask(f"{WS}/.ssh/id_rsa"),
        Mask(f"{WS}/.env"),
        Mask(f"{WS}/.env"),
    )
    argv = plan(request(masks=masks, empty_file=EMPTY), ROOT_HOST).argv
    start = argv.index("--bind") + 3
    assert argv[start : start + 12] == [
        "--ro-bind",
        EMPTY,
        f"{WS}/.env",
        "--perms",
        "0555",
        "--tmpfs",
        f"{WS}/.ssh",
        "--remount-ro",
        f"{WS}/.ssh",
        "--ro-bind",
        EMPTY,
        f"{WS}/deploy/key.pem",
    ]
    assert f"{WS}/.ssh/id_rsa" not in argv  # hidden with its folder already


def test_a_masked_repository_config_shows_its_format_copy() -> None:
    mask = Mask(f"{WS}/.git/config", source="/run/masks/gitconfig-1")
    argv = plan(request(masks=(mask,)), ROOT_HOST).argv  # no empty file needed
    assert argv[argv.index("--bind") + 3 :][:3] == [
        "--ro-bind",
        "/run/masks/gitconfig-1",
        f"{WS}/.git/config",
    ]


def test_the_config_copy_keeps_how_to_read_the_repository_and_nothing_else() -> None:
    listing = b"\0".join(
        [
            b"core.repositoryformatversion\n1",
            b"core.bare\nfalse",
            b"core.filemode",
            b"extensions.objectformat\nsha256",
            b"extensions.worktreeConfig\ntrue",
            b"remote.origin.url\nhttps://bot:TOKEN@example.com/r.git",
            b"credential.helper\nstore",
            b"include.path\n../../x",
            b"alias.st\n!sh -c id",
            b"filter.x.clean\nsh -c id",
            b"core.sshcommand\nsh -c id",
            b"core.pager\nsh",
            b"http.extraheader\nAuthorization: TOKEN",
            b'core.worktree\n../w "q"\\',
            b"",
        ]
    )
    assert sandbox.git_format_config(listing) == (
        '[core]\n\trepositoryformatversion = "1"\n\tbare = "false"\n\tfilemode = "true"\n'
        '\tworktree = "../w \\"q\\"\\\\"\n'
        '[extensions]\n\tobjectformat = "sha256"\n\tworktreeconfig = "true"\n'
    )
    assert sandbox.git_format_config(b"remote.origin.url\nx\0") == ""


def test_file_masks_need_the_empty_file() -> None:
    with pytest.raises(ValueError, match="empty file"):
        plan(request(masks=(Mask(f"{WS}/.env"),)), ROOT_HOST)
    plan(request(masks=(Mask(f"{WS}/.ssh", dir=True),)), ROOT_HOST)  # a tmpfs needs none


def test_the_fallback_cannot_mask_and_doctor_says_so() -> None:
    fallback = dataclasses.replace(ROOT_HOST, bwrap=None)
    p = plan(request(masks=(Mask(f"{WS}/.env"),), empty_file=EMPTY, home="/tmp/h"), fallback)
    assert f"{WS}/.env" not in p.argv
    gaps = " ".join(describe(fallback)["does_not_protect_against"])  # type: ignore[arg-type]
    assert "are NOT hidden" in gaps and ".env" in gaps
    shown = " ".join(describe(ROOT_HOST)["protects_against"])  # type: ignore[arg-type]
    assert "denies reading" in shown and "shown empty and read-only" in shown


def test_denied_reads_are_the_deny_rules_for_reading_only() -> None:
    pol = parse_policy(
        {
            "paths": [
                {
                    "id": "no-private",
                    "decision": "deny",
                    "access": "read",
                    "paths": ["data/private/**"],
                },
                {"id": "no-gen-writes", "decision": "deny", "access": "write", "paths": ["gen/**"]},
                {"id": "ok-docs", "decision": "allow", "paths": ["docs/**"]},
            ]
        }
    )
    rules = denied_reads(pol)
    assert rules[0] == BUILTIN[0] and ("data/private/**",) in rules
    assert all("gen/**" not in r and "docs/**" not in r for r in rules)
    assert ("**/.git/**",) not in rules and (".git", ".git/**", "**/.git/**") not in rules


# -- pure: which paths -----------------------------------------------------------------


def _masked(masker: Masker, rel: str) -> bool:
    """What the walk decides for file `rel`: below a whole masked folder, or itself."""
    parts = rel.split("/")
    return any(masker.whole_dir("/".join(parts[:i])) for i in range(1, len(parts))) or masker.file(
        rel
    )


def _denied(rules: sandbox.MaskRules, rel: str) -> bool:
    """What the policy denies: its deny rules match in any case (`PathRule`)."""
    return any(glob_matcher(r, fold_case=True)(rel) for r in rules)


def _any_case(word: str) -> st.SearchStrategy[str]:
    """`word` in every spelling a case-insensitive mount takes for it, and
    the non-ASCII letters re.IGNORECASE equates with ASCII ones."""
    twins = {"i": "\u0130\u0131", "s": "\u017f", "k": "\u212a"}
    return st.tuples(
        *(
            st.sampled_from(sorted({c, c.lower(), c.upper(), *twins.get(c.lower(), "")}))
            for c in word
        )
    ).map("".join)


COMPONENTS = [
    "a",
    "src",
    ".env",
    ".env.local",
    "env",
    "x.pem",
    "pem",
    "key.pem.txt",
    ".ssh",
    "id_rsa",
    "id_rsa.pub",
    ".git",
    "config",
    "secrets",
    ".aws",
    "credentials",
    "x.tfstate.1",
    "service-account-ci.json",
    ".kube",
    "b.c",
    "data",
    "private",
    "notes.md",
    "f.sqlite",
]
EXTRA_RULES: sandbox.MaskRules = (
    ("data/private/**", "!data/private/README"),  # exclusions: run whole
    ("*.{sqlite,db}", "[a-c].c", "src/*/config"),  # braces, classes, gated
    ("**/b.c/**", "a/**/notes.md", "**.pem"),  # ** inside a component
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from(COMPONENTS).flatmap(_any_case), min_size=1, max_size=5),
    st.sampled_from([BUILTIN, BUILTIN + EXTRA_RULES, EXTRA_RULES]),
)
def test_the_masker_hides_exactly_what_the_policy_denies(
    parts: list[str], rules: sandbox.MaskRules
) -> None:
    """In any case: `.ENV`, `.Env`, `.SSH/id_rsa`, `Deploy/KEY.PEM` are
    hidden as the policy denies them (a case-insensitive mount opens `.env`)."""
    rel = "/".join(parts)
    masker = sandbox.masker(rules)
    assert _masked(masker, rel) == _denied(rules, rel), rel
    if masker.file(rel):  # never a file the policy lets the command read
        assert _denied(rules, rel)
    if _denied(rules, rel.lower()):  # every spelling of a denied path is hidden
        assert _masked(masker, rel), rel


def test_whole_folders_are_only_those_everything_below_is_denied() -> None:
    m = sandbox.masker(BUILTIN + EXTRA_RULES)
    for rel in (".ssh", "a/.ssh", "secrets", "x/secrets", ".aws", ".config/gcloud", "b.c"):
        assert m.whole_dir(rel), rel
    for rel in ("a/.aws", ".git", "data/private", "src", "ssh", ".config"):
        assert not m.whole_dir(rel), rel


# -- the walk over real trees ----------------------------------------------------------


def _tree(ws: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = ws / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


OLD = int(time.time()) - 3600


def _age(ws: Path) -> None:
    """Folders last changed an hour ago: old enough for the walk to keep them."""
    for p in [ws, *ws.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            os.utime(p, (OLD, OLD))


def _rels(ws: Path, masks: tuple[Mask, ...]) -> list[str]:
    return [os.path.relpath(m.path, ws) + ("/" if m.dir else "") for m in masks]


def test_the_walk_finds_denied_files_folders_links_and_repository_config(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    _tree(
        ws,
        {
            "README": "ok",
            ".env": "S",
            "config/.env.production": "S",
            "deploy/key.pem": "S",
            ".ssh/id_rsa": "S",
            ".ssh/sub/x": "S",
            ".git/config": "S",
            ".git/HEAD": "ref",
            ".git/objects/ab/x.pem": "blob",
            "vendor/lib/.git/config": "S",
            "src/app.py": "ok",
            "envs/prod": "S",
            "keys/k": "S",
            "outside-link-ok": "ok",
        },
    )
    (ws / "hard-link").hardlink_to(ws / "deploy/key.pem")
    (ws / "alias").symlink_to("deploy/key.pem")  # allowed name -> secret
    (ws / "app.env").symlink_to(".env")
    (ws / "sub").mkdir()
    (ws / "sub/.env").symlink_to("../envs/prod")  # denied name -> elsewhere
    (ws / ".aws").symlink_to("keys")  # denied folder name
    (ws / "linked-dir").symlink_to("deploy")  # not walked twice
    (ws / "sub/.netrc").symlink_to("/etc/hostname")  # leads out: left alone
    masks = workspace_masks(ws.resolve(), BUILTIN)
    assert _rels(ws, masks) == [
        ".env",
        ".git/config",
        ".ssh/",
        "config/.env.production",
        "deploy/key.pem",
        "envs/prod",
        "hard-link",
        "keys/",
        "vendor/lib/.git/config",
    ]


def test_the_walk_hides_denied_paths_in_any_case(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    spelled = [".ENV", ".Env", "Config/.eNv.Production", "Deploy/KEY.PEM", ".Git/config"]
    _tree(ws, {**{rel: "S" for rel in spelled}, ".SSH/id_rsa": "S", "src/App.py": "ok"})
    (ws / ".Env.local").symlink_to("src/App.py")  # a denied name: where it leads is hidden
    masks = workspace_masks(ws.resolve(), BUILTIN)
    assert _rels(ws, masks) == sorted([*spelled, ".SSH/", "src/App.py"])


def test_policy_rules_of_its_own_are_walked_too(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    _tree(
        ws,
        {
            "data/private/a.csv": "S",
            "data/private/README": "ok",
            "data/public.csv": "ok",
            "db/app.sqlite": "S",
        },
    )
    pol = parse_policy(
        {
            "paths": [
                {
                    "id": "no-private",
                    "decision": "deny",
                    "access": "read",
                    "paths": ["data/private/**", "!data/private/README"],
                },
                {"id": "no-db", "decision": "deny", "access": "any", "paths": ["*.sqlite"]},
            ]
        }
    )
    assert _rels(ws, workspace_masks(ws.resolve(), denied_reads(pol))) == [
        "data/private/a.csv",
        "db/app.sqlite",
    ]


def test_a_kept_walk_sees_every_change_of_names(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    _tree(ws, {"a/b/c.txt": "ok", "deploy/key.pem": "S", "x/y/z.txt": "ok"})
    _age(ws)
    root = ws.resolve()
    first = workspace_masks(root, BUILTIN)
    kept = masks._mask_cache[(str(root), BUILTIN)]
    assert all(d.kept for d in kept.values())  # old folders are kept
    assert workspace_masks(root, BUILTIN) == first
    (ws / "a/b/new.pem").write_text("S")  # a new name, deep down
    (ws / "deploy").rename(ws / "moved")  # a folder renamed
    (ws / "x/y").rename(ws / "x/y2")
    (ws / "x/y2/.env").write_text("S")
    assert _rels(ws, workspace_masks(root, BUILTIN)) == [
        "a/b/new.pem",
        "moved/key.pem",
        "x/y2/.env",
    ]
    shutil.rmtree(ws / "moved")
    (ws / "moved").mkdir()  # same name, new folder
    (ws / "moved" / "id_rsa").write_text("S")
    old = time.time() - 3600
    os.utime(ws / "moved", (old, old))
    assert _rels(ws, workspace_masks(root, BUILTIN)) == ["a/b/new.pem", "moved/id_rsa", "x/y2/.env"]


def test_a_watched_walk_sees_a_change_whose_folder_mtime_was_set_back(tmp_path: Path) -> None:
    """A kept walk trusts the folders inotify did not report, without an
    lstat each (the per-call cost stays flat in the workspace's size): a
    secret made in a folder whose mtime is then set back (a restore, a
    checkout) is still masked on the next call, which mtimes alone miss."""
    ws = tmp_path / "ws"
    _tree(ws, {"a/b/c.txt": "ok", "x/y.txt": "ok"})
    _age(ws)
    root = ws.resolve()
    assert workspace_masks(root, BUILTIN) == ()
    watch = masks._watcher()
    key = (str(root), BUILTIN)
    assert watch.usable and all(watch.watching(key, rel) for rel in ("", "a", "a/b", "x"))
    st = os.stat(ws / "a/b")
    (ws / "a/b/.env").write_text("S")
    os.utime(ws / "a/b", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _rels(ws, workspace_masks(root, BUILTIN)) == ["a/b/.env"]
    assert watch.changed(key) == set()  # drained: the next call reads nothing again


def test_the_folder_watch_reports_names_changed_and_moves_as_everything(tmp_path: Path) -> None:
    from orchestrator.sandbox.watch import EVERYTHING, DirWatch

    (tmp_path / "a" / "b").mkdir(parents=True)
    watch = DirWatch()
    for rel in ("", "a", "a/b"):
        watch.add("k", rel, str(tmp_path / rel) if rel else str(tmp_path))
    assert watch.changed("k") == set()
    (tmp_path / "a" / "b" / "f").write_text("x")
    (tmp_path / "a" / "b" / "f").write_text("y")  # content: not a change of names
    assert watch.changed("k") == {"a/b"}
    os.remove(tmp_path / "a" / "b" / "f")
    assert watch.changed("k") == {"a/b"}
    (tmp_path / "a" / "b").rename(tmp_path / "a" / "c")
    assert watch.changed("k") is EVERYTHING
    watch.forget("k")
    assert watch.changed("k") is EVERYTHING and not watch.watching("k", "a")


def test_a_hard_link_made_later_in_another_folder_is_masked(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    _tree(ws, {"conf/.env": "S", "docs/readme.md": "ok"})
    _age(ws)
    root = ws.resolve()
    assert _rels(ws, workspace_masks(root, BUILTIN)) == ["conf/.env"]
    (ws / "docs/copy.txt").hardlink_to(ws / "conf/.env")  # conf/ itself is unchanged
    assert _rels(ws, workspace_masks(root, BUILTIN)) == ["conf/.env", "docs/copy.txt"]


def test_a_folder_changed_just_now_is_read_again_next_time(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    _tree(ws, {"a/x.txt": "ok"})
    root = ws.resolve()
    workspace_masks(root, BUILTIN)
    assert not masks._mask_cache[(str(root), BUILTIN)]["a"].kept  # within 2 s
    (ws / "a/y.pem").write_text("S")  # may keep the folder's mtime (same tick)
    assert _rels(ws, workspace_masks(root, BUILTIN)) == ["a/y.pem"]


def test_the_empty_file_is_remade_when_it_is_gone() -> None:
    first = sandbox.empty_file()
    st = os.lstat(first)
    assert st.st_size == 0 and st.st_mode & 0o777 == 0o444 and st.st_uid == os.geteuid()
    assert sandbox.empty_file() == first
    os.unlink(first)
    again = sandbox.empty_file()
    assert os.path.isfile(again) and os.path.getsize(again) == 0


# -- real commands under bubblewrap ----------------------------------------------------

CANARY = "CANARY-7f3a9c"
SECRETS = {
    ".env": f"SECRET={CANARY}\n",
    "deploy/key.pem": f"-----{CANARY}-----\n",
    ".ssh/id_rsa": f"{CANARY}\n",
    "config/.env.production": f"TOKEN={CANARY}\n",
    "data/private/dump.csv": f"{CANARY}\n",
    ".ENV": f"SECRET={CANARY}\n",  # spelled as a case-insensitive mount takes them
    "Deploy/KEY.PEM": f"{CANARY}\n",
    "Data/Private/dump.csv": f"{CANARY}\n",
}
POLICY = parse_policy(
    {
        "paths": [
            {
                "id": "no-private-data",
                "decision": "deny",
                "access": "read",
                "paths": ["data/private/**"],
            }
        ]
    }
)


def _secret_box(box: Box) -> dict[str, tuple[bytes, int]]:
    _tree(box.ws, {**SECRETS, "src/app.py": "print('allowed')\n"})
    (box.ws / "key-alias").symlink_to("deploy/key.pem")
    (box.ws / "env-hardlink").hardlink_to(box.ws / ".env")
    return _state(box)


def _state(box: Box) -> dict[str, tuple[bytes, int]]:
    return {rel: ((box.ws / rel).read_bytes(), (box.ws / rel).stat().st_mode) for rel in SECRETS}


def _output(result: Any) -> str:
    if isinstance(result, CommandFailed):
        return result.result.output
    assert not isinstance(result, ToolError), result
    return str(result.output)


def _run(box: Box, command: list[str] | str, **kw: Any) -> Any:
    step = ShellStep(command=command, timeout_s=20)
    try:
        return run_shell(
            box.ws, step, limits=Limits(), policy=POLICY, mode="bwrap", host=HOST, **kw
        )
    except ToolError as err:
        return err


READERS = {
    "cat *": ["bash", "-c", "cat * */* */*/* .env .ssh/* 2>&1; cat key-alias env-hardlink"],
    "cat .env": ["cat", ".env"],
    "grep -r": ["grep", "-r", "-a", "SECRET\\|CANARY\\|TOKEN", "."],
    "tar | strings": ["bash", "-c", "tar c . 2>/dev/null | strings"],
    "cp .env x": ["bash", "-c", "cp .env x && cp deploy/key.pem y && cat x y; ls -la"],
    "python walk": [
        PY,
        "-c",
        "import os\nfor d, _, fs in os.walk('.'):\n for f in fs:\n"
        "  p = os.path.join(d, f)\n  try: print(p, open(p).read())\n"
        "  except OSError as e: print(p, e)",
    ],
    "find -exec": ["find", ".", "-type", "f", "-exec", "cat", "{}", "+"],
}


@pytest.mark.parametrize("name", list(READERS))
def test_no_command_reads_a_denied_file(box: Box, name: str) -> None:
    _need_bwrap()
    before = _secret_box(box)
    out = _output(_run(box, READERS[name]))
    assert CANARY not in out, out
    if name in ("cat *", "python walk", "find -exec"):
        assert "allowed" in out  # an allowed file reads fine
    assert _state(box) == before
    for leftover in ("x", "y"):
        (box.ws / leftover).unlink(missing_ok=True)
    box.assert_contained()


def test_no_command_writes_moves_or_links_a_denied_file(box: Box) -> None:
    _need_bwrap()
    before = _secret_box(box)
    script = (
        "exec 2>/dev/null; "
        "for t in .env deploy/key.pem config/.env.production data/private/dump.csv; do "
        "  echo x > $t; echo x >> $t; rm -f $t; mv $t moved; ln $t hard; truncate -s0 $t; "
        "done; echo new > .ssh/new; chmod 666 .env; ls .ssh; echo done"
    )
    out = _output(_run(box, ["bash", "-c", script]))
    assert out.endswith("done\n") and "new" not in out.split("done")[0]
    assert _state(box) == before
    assert not (box.ws / "moved").exists() and not (box.ws / "hard").exists()
    assert sorted(p.name for p in (box.ws / ".ssh").iterdir()) == ["id_rsa"]
    box.assert_contained()


@pytest.mark.parametrize("forge", ["old mtime", "same mtime"])
def test_a_denied_folder_renamed_in_one_call_stays_hidden_in_the_next(box: Box, forge: str) -> None:
    """A command renaming folders that hold masked files and setting the
    folders' mtimes back to what the kept walk saw: its changeset writes
    denied paths, so none of it reaches the workspace, and the next call
    still hides them."""
    _need_bwrap()
    before = _secret_box(box)
    _age(box.ws)
    assert CANARY not in _output(_run(box, ["cat", "src/app.py"]))  # the walk is kept
    stamp = f"@{OLD}" if forge == "same mtime" else "2001-01-01"
    with pytest.raises(PolicyDenied, match="deny-secrets"):
        _run(
            box,
            [
                "bash",
                "-c",
                "mv deploy elsewhere && mv config cfg && mkdir config && "
                f"touch -d {stamp} . elsewhere cfg config",
            ],
        )
    assert _state(box) == before  # nothing of it reached the workspace
    out = _output(_run(box, ["bash", "-c", "cat deploy/* config/.env.production"]))
    assert CANARY not in out
    box.assert_contained()


def test_git_works_with_its_config_hidden(box: Box) -> None:
    _need_bwrap()
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    env = {"GIT_CONFIG_NOSYSTEM": "1", "HOME": str(box.tmp / "sibling"), "PATH": os.defpath}
    _secret_box(box)
    (box.ws / ".gitignore").write_text(".env\n")
    for args in (
        ["init", "-q", "-b", "main"],
        ["add", "README", "src", ".gitignore"],
        ["-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "first"],
        ["remote", "add", "origin", f"https://bot:{CANARY}@example.com/r.git"],
    ):
        subprocess.run([git, "-C", str(box.ws), *args], check=True, env=env)
    config = (box.ws / ".git/config").read_bytes()
    (box.ws / "README").write_text("inside\nchanged\n")
    ident = ["-c", "user.name=t", "-c", "user.email=t@example.com"]
    for command, expect in (
        ([git, "status", "--porcelain"], " M README"),
        ([git, "log", "--format=%s"], "first"),
        ([git, "diff"], "+changed"),
        ([git, "rev-parse", "--is-bare-repository"], "false"),
        ([git, *ident, "commit", "-qam", "second"], ""),
        ([git, "log", "--oneline"], "second"),
        ([git, "config", "--list", "--show-origin"], "repositoryformatversion=0"),
        ([git, "config", "--list", "--show-origin"], "core.hookspath"),
    ):
        out = _output(_run(box, command))
        assert expect in out and CANARY not in out, (command, out)
    assert (box.ws / ".git/config").read_bytes() == config
    log = subprocess.run(
        [git, "-C", str(box.ws), "log", "--format=%s"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    assert log.stdout == "second\nfirst\n"
    box.assert_contained()


def test_a_sha256_repository_with_a_hostile_config_works_and_stays_sound(box: Box) -> None:
    """Its config hidden, git must still know the object format (read with an
    empty config, a commit writes a sha1 index into it), and nothing of the
    config runs or shows: filter drivers, aliases, remotes with tokens."""
    _need_bwrap()
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    env = {"GIT_CONFIG_NOSYSTEM": "1", "HOME": str(box.tmp / "sibling"), "PATH": os.defpath}
    marker = box.tmp / "sibling" / "FILTER_RAN"

    def host_git(*args: str) -> str:
        return subprocess.run(
            [git, "-C", str(box.ws), *args], check=True, env=env, capture_output=True, text=True
        ).stdout

    host_git("init", "-q", "--object-format=sha256", "-b", "main")
    host_git(
        "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q", "--allow-empty", "-m", "first"
    )
    for key, value in (
        ("remote.origin.url", f"https://bot:{CANARY}@example.com/r.git"),
        ("filter.evil.clean", f"touch {marker}; cat"),
        ("alias.st", f"!echo {CANARY}"),
    ):
        host_git("config", key, value)
    (box.ws / ".gitattributes").write_text("* filter=evil\n")
    config = (box.ws / ".git/config").read_bytes()
    ident = ["-c", "user.name=t", "-c", "user.email=t@example.com"]
    for command in (
        ["bash", "-c", "cat .git/config; git status --short; git add -A"],
        [git, *ident, "commit", "-qm", "second"],
        [git, "log", "--format=%s"],
    ):
        out = _output(_run(box, command))
        assert CANARY not in out and "fatal" not in out and "error" not in out, (command, out)
    assert out == "second\nfirst\n"
    assert not marker.exists()
    assert (box.ws / ".git/config").read_bytes() == config
    subprocess.run(
        [git, "-C", str(box.ws), "fsck", "--strict"], check=True, env=env, capture_output=True
    )
    assert host_git("rev-parse", "--show-object-format") == "sha256\n"
    box.assert_contained()
