"""The audit log and its store: `audit replay|verify|keygen|sign|export`, `db upgrade|status`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import orjson
import typer

from orchestrator import lazy
from orchestrator.cli.common import emit_json, err, fail, out
from orchestrator.cli.root import current

if TYPE_CHECKING:
    from events.store import EventStore

# Heavy parts (SQLAlchemy, Alembic, the runner, the payload models) load in
# the commands that use them, not for `--help` (bench/cli_startup.py).
migrate = lazy.module("events.migrate")
verify_mod = lazy.module("events.verify")
_db = lazy.module("events.db")
_errors = lazy.module("events.errors")
_replay = lazy.module("events.replay")
_store = lazy.module("events.store")
render = lazy.module("orchestrator.cli.render")
_digests = lazy.module("events.digests")
_masking = lazy.module("orchestrator.guard.masking")
_recheck_mod = lazy.module("orchestrator.audit.recheck")
_secrets = lazy.module("orchestrator.config.secrets")
audit = lazy.module("orchestrator.audit.digests")
policy_mod = lazy.module("orchestrator.guard.policy")


# -- audit ---------------------------------------------------------------------


audit_app = typer.Typer(help="Replay, verify and export the audit log.", no_args_is_help=True)
db_app = typer.Typer(help="Event store schema.", no_args_is_help=True)


@audit_app.command("replay")
def audit_replay(
    session_id: str,
    json: bool = typer.Option(False, "--json"),
    no_snapshot: bool = typer.Option(False, help="Fold every event from seq 1"),
) -> None:
    """Rebuild a session from its events alone: state, quota usage, permissions."""
    st = current().store()
    state = _replay.replay(st, session_id, use_snapshot=not no_snapshot)
    if state.last_seq == 0:
        fail(
            f"no events for session {session_id}; list sessions with `orchestrator status JOB_ID`",
            2,
        )
    if json:
        data = state.model_dump(mode="json")
        # A frozenset dumps in hash order, which differs from process to
        # process: sorted, the same store replays to the same bytes.
        data["session"]["changed_paths"].sort()
        emit_json(data)
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
    json: bool = typer.Option(False, "--json"),
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
        report = verify_mod.verify_rows(st.rows(session_id))
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
        state = _replay.replay(st, sid)
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
    json: bool = typer.Option(False, "--json"),
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
) -> None:
    """Write events as JSONL (plus a closing manifest line) that `verify --input` checks."""
    st = current().store()
    rows = st.raw_stream_rows(stream) if stream else st.raw_all()
    known = _secrets.known_values()
    leaked = 0
    fh = sys.stdout.buffer if str(output) == "-" else open(output, "wb")
    try:
        for line in verify_mod.export_lines(rows):
            if known:  # events are masked when built; this catches what slipped past
                text = line.decode()
                safe = _masking.mask(text, known, patterns=False)
                if safe != text:
                    leaked += 1
                    line = safe.encode()
            fh.write(line)
    finally:
        if fh is not sys.stdout.buffer:
            fh.close()
    if leaked:
        err.print(
            f"[bold yellow]warning:[/] {leaked} event(s) held a known secret value; it "
            "is masked in this export, so their hashes no longer verify. The store "
            "still holds it: rotate the secret.",
            highlight=False,
        )


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
