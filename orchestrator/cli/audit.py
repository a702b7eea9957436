"""The audit log and its store: `audit replay|verify|keygen|sign|export|forget|rewrap`,
`db upgrade|status`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import orjson
import typer

from orchestrator import lazy
from orchestrator.cli.common import JSON_OPT, emit_json, fail, out
from orchestrator.cli.root import current

if TYPE_CHECKING:
    from events.store import EventStore

# Heavy parts (SQLAlchemy, Alembic, the runner, the payload models) load in
# the commands that use them, not for `--help` (bench/cli_startup.py).
migrate = lazy.module("events.migrate")
verify_mod = lazy.module("events.verify")
_db = lazy.module("events.db")
_errors = lazy.module("events.errors")
_history = lazy.module("events.history")
_audit = lazy.module("events.audit")
_store = lazy.module("events.store")
render = lazy.module("orchestrator.cli.render")
_digests = lazy.module("events.digests")
_recheck_mod = lazy.module("orchestrator.audit.recheck")
_forget = lazy.module("orchestrator.audit.forget")
_kek = lazy.module("orchestrator.audit.kek")
_keyring = lazy.module("events.keyring")
audit = lazy.module("orchestrator.audit.digests")
policy_mod = lazy.module("orchestrator.guard.policy")


# -- audit ---------------------------------------------------------------------


audit_app = typer.Typer(
    rich_markup_mode="markdown",
    help="Replay, verify and export the audit log.",
    no_args_is_help=True,
)
db_app = typer.Typer(rich_markup_mode="markdown", help="Event store schema.", no_args_is_help=True)


@audit_app.command("replay")
def audit_replay(
    session_id: str,
    json: bool = JSON_OPT,
    no_snapshot: bool = typer.Option(
        False, help="Kept for scripts: the replay always folds every event from seq 1"
    ),
) -> None:
    """Rebuild a session from its events alone: state, quota usage, permissions."""
    st = current().store()
    # The whole history, from seq 1 either way: snapshots hold the live part
    # only (events.projections.window), so --no-snapshot changes nothing.
    state = _history.history(st, session_id)
    if state.last_seq == 0:
        fail(
            f"no events for session {session_id}; list sessions with `orchestrator status JOB_ID`",
            2,
        )
    if json:
        emit_json(_history.replay_json(state))
    else:
        render.replay(out, state)


@audit_app.command("verify")
def audit_verify(
    session_id: Optional[str] = typer.Argument(None, help="Only this stream"),
    input: Optional[Path] = typer.Option(
        None, "--input", "-i", exists=True, help="Verify an export (JSONL) instead"
    ),
    public_key: list[Path] = typer.Option(
        [],
        "--public-key",
        exists=True,
        dir_okay=False,
        help="Trust digests signed by this key (repeatable; rotation keeps old "
        "ones); ORCH_AUDIT_PUBLIC_KEYS and the signing key are trusted too",
    ),
    digests_file: Optional[Path] = typer.Option(
        None,
        "--digests",
        exists=True,
        dir_okay=False,
        help="Digests kept outside the database (an export or `audit sign -o`)",
    ),
    require_proof: bool = typer.Option(
        False, help="Fail (exit 1) when a stream's last events are not covered by a signed digest"
    ),
    recheck_policy: Optional[str] = typer.Option(
        None,
        "--recheck-policy",
        metavar="POLICY_FILE|default",
        help="Re-decide every recorded request under this policy file (or "
        "`default`, today's built-in policy) and list each decision that would "
        "change",
    ),
    json: bool = JSON_OPT,
) -> None:
    """Check every hash chain, sequence and stream boundary, and the signed
    digests of stream heads (which catch recomputed chains and truncation);
    list each problem and every stream no digest proves."""
    trusted = audit.trusted_keys(current().settings, public_key)
    extra = audit.read_digest_file(digests_file) if digests_file is not None else []
    if input is not None:
        with open(input, "rb") as fh:
            report = verify_mod.verify_jsonl(fh)
        proof = audit.prove_export(input, trusted, extra)
    else:
        st = current().store()
        report = _audit.verify_store(st, session_id)
        proof = audit.prove_store(st, trusted, extra, session_id)
    rechecked = None
    if recheck_policy is not None:
        if input is not None:
            fail("--recheck-policy reads the store; drop --input (or import the export first)", 2)
        rechecked = _recheck(current().store(), recheck_policy, session_id)
    if json:
        data = {**report.to_json(), "proof": proof.to_json()}
        if rechecked is not None:
            data["recheck"] = {
                "policy": rechecked[0],
                "decisions": rechecked[1],
                "changed": [c.to_json() for c in rechecked[2]],
            }
        emit_json(data)
    else:
        render.verify(out, report, proof)
        if rechecked is not None:
            render.recheck(out, *rechecked)
    ok = report.ok and proof.ok and not (require_proof and proof.unproven)
    raise typer.Exit(0 if ok else 1)


def _recheck(st: EventStore, source: str, session_id: str | None) -> tuple[str, int, list]:
    chosen = (
        policy_mod.DEFAULT_POLICY if source == "default" else policy_mod.load_policy(Path(source))
    )
    streams = (
        [session_id] if session_id else [s for s in st.stream_ids() if s != _digests.DIGEST_STREAM]
    )
    ledgers = []
    for sid in streams:
        state = _history.history(st, sid, _history.LEDGER_TYPES)
        if state.session.session_id:  # job streams have no ledger
            ledgers.append((sid, state.ledger))
    total, changes = _recheck_mod.recheck_all(ledgers, chosen)
    return f"{chosen.name} ({chosen.hash[:12]})", total, changes


@audit_app.command("keygen")
def audit_keygen(
    out_dir: Path = typer.Option(Path("."), "--out", help="Where to write the key pair"),
) -> None:
    """Make an Ed25519 key pair for signing digests of stream heads.

    Keep the private key (audit-signing.pem) where the database cannot reach
    it and point ORCH_AUDIT_KEY_FILE at it on the machines that sign; give the
    public key (audit-signing.pub) to auditors for `audit verify --public-key`."""
    private, public, kid = audit.keygen(out_dir)
    out.print(
        f"key {kid}\n  private: {private} (mode 600; set ORCH_AUDIT_KEY_FILE={private})"
        f"\n  public:  {public} (for `orchestrator audit verify --public-key {public}`)",
        highlight=False,
    )


@audit_app.command("sign")
def audit_sign(
    stream: Optional[str] = typer.Option(None, "--stream", help="Only this stream's head"),
    output: Optional[Path] = typer.Option(
        None,
        "--output",
        "-o",
        help="Also append the digest (JSONL) to this file, to keep a copy outside the database",
    ),
    json: bool = JSON_OPT,
) -> None:
    """Sign a digest of the current stream heads with ORCH_AUDIT_KEY_FILE and
    append it to the audit-digests stream (run it periodically, e.g. hourly)."""
    key = audit.signing_key(current().settings)
    if key is None:
        fail(
            "no signing key: set ORCH_AUDIT_KEY_FILE (make one with `orchestrator audit keygen`)", 2
        )
    event = audit.sign(current().store(for_writing=True), key, current().settings.submitter, stream)
    if output is not None:
        with open(output, "ab") as fh:
            fh.write(orjson.dumps(event.to_record(), option=orjson.OPT_SORT_KEYS) + b"\n")
    digest = event.payload
    if json:
        emit_json(
            {
                "position": event.position,
                "seq": event.seq,
                "key_id": digest.key_id,
                "streams": len(digest.heads),
                "covers_position": digest.position,
            }
        )
    else:
        out.print(
            f"signed {len(digest.heads)} stream head(s) up to position "
            f"{digest.position} with key {digest.key_id} (audit-digests seq {event.seq})"
        )


@audit_app.command("export")
def audit_export(
    output: Path = typer.Option(
        Path("-"), "--output", "-o", help="File to write (default: stdout)"
    ),
    stream: Optional[str] = typer.Option(None, "--stream", help="Only this session or job stream"),
    decrypt: bool = typer.Option(
        False,
        "--decrypt",
        help="Show sealed fields as plain text where their keys still exist (needs "
        "ORCH_DATA_KEK_FILE; for reading: only the sealed export verifies)",
    ),
) -> None:
    """Write events as JSONL (plus a closing manifest line) that `verify --input`
    checks: exactly the stored bodies, sealed fields included."""
    st = current().store()
    if decrypt and _forget.sealer_of(st) is None:
        fail(
            "--decrypt needs the key-encryption key: set ORCH_DATA_KEK_FILE "
            "(and seal_payloads) to the file that wrapped this store's data keys",
            2,
        )
    rows = st.raw_stream_rows(stream) if stream else st.raw_all()
    fh = sys.stdout.buffer if str(output) == "-" else open(output, "wb")
    try:
        lines = (
            verify_mod.export_lines(rows, st.loads) if decrypt else verify_mod.export_lines(rows)
        )
        for line in lines:
            fh.write(line)
    finally:
        if fh is not sys.stdout.buffer:
            fh.close()


@audit_app.command("forget")
def audit_forget(
    stream_id: str = typer.Argument(..., metavar="SESSION_ID|JOB_ID"),
    reason: str = typer.Option(..., "--reason", help="Why (recorded, shown wherever the data was)"),
    json: bool = JSON_OPT,
) -> None:
    """Erase a session's sealed payloads (file contents and diffs, tool output,
    prompts, model replies, step env values) by destroying its data key; a job
    id erases the job's spec values and every session of it. Recorded as
    PayloadsForgotten with who and why; hashes, digests and metadata stay."""
    root = current()
    st = root.store(for_writing=True)
    sealer = _forget.sealer_of(st)
    if sealer is None:
        fail(
            "this store seals no payloads (no key-encryption key: set "
            "ORCH_DATA_KEK_FILE, and seal_payloads on), so there is no key to destroy",
            2,
        )
    done = _forget.forget(st, sealer, stream_id, root.settings.submitter, reason)
    key = audit.signing_key(root.settings)
    if key is not None and any(f.key_ids for f in done):  # the new records, proven at once
        audit.sign(st, key, root.settings.submitter, None)
    if json:
        emit_json(
            [
                {"stream": f.stream_id, "keys_destroyed": list(f.key_ids), "already": f.already}
                for f in done
            ]
        )
        return
    for f in done:
        if f.key_ids:
            out.print(f"{f.stream_id}: destroyed {len(f.key_ids)} data key(s)", highlight=False)
        else:
            out.print(f"{f.stream_id}: {f.already or 'nothing sealed'}", highlight=False)


@audit_app.command("rewrap")
def audit_rewrap(
    old_kek_file: Path = typer.Option(
        ..., "--old-kek-file", exists=True, dir_okay=False, help="The key-encryption key retired"
    ),
) -> None:
    """Key rotation: wrap every live data key of the old key-encryption key with
    the one ORCH_DATA_KEK_FILE names now (sealed events are not touched)."""
    st = current().store(for_writing=True)
    sealer = _forget.sealer_of(st)
    if sealer is None or not isinstance(sealer.keys, _keyring.SqlKeyRing):
        fail("set ORCH_DATA_KEK_FILE to the new key-encryption key first", 2)
    old = _kek.load(old_kek_file, "--old-kek-file=" + str(old_kek_file))
    moved = sealer.keys.rewrap(old)
    out.print(f"{moved} data key(s) moved from {old.id} to {sealer.keys.kek.id}", highlight=False)


# -- db ------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the event store schema (Alembic migrations)."""
    st = _store.SqlEventStore(current().settings.effective_store_url, check_schema=False)
    before, after = migrate.upgrade(st.engine)
    out.print(f"{_db.display_url(st.url)}: schema {before or 'empty'} -> {after}")


@db_app.command("status")
def db_status() -> None:
    """Show the store's schema revision and the newest this release knows.
    Exits 0 only at the newest: 1 when `db upgrade` is due, 2 when the
    revision is unknown here (a newer release migrated it)."""
    st = _store.SqlEventStore(current().settings.effective_store_url, check_schema=False)
    found, head = migrate.current_revision(st.engine), migrate.head_revision()
    out.print(f"{_db.display_url(st.url)}: at {found or 'empty'}, head {head}")
    if found == head:
        return
    if found is not None and found not in migrate.known_revisions():
        raise _errors.UnknownSchemaRevision(_db.display_url(st.url), found, head)
    out.print("the schema is behind this release: run `orchestrator db upgrade`")
    raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this group's commands to the main app."""
    app.add_typer(audit_app, name="audit")
    app.add_typer(db_app, name="db")
