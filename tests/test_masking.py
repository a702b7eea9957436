"""The one masker (pure): known values in every encoding, chunked streams,
split stdout/stderr, and the short values it must leave alone. No mocks."""

from __future__ import annotations

import base64
import json
import re
from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.guard.masking import (
    MASK,
    MIN_SECRET_LEN,
    StreamMasker,
    holds_known,
    mask,
    mask_streams,
    maskable,
    variants,
)

SECRET = "s3cr3t/Value+with=odd&chars"
secrets_st = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=MIN_SECRET_LEN, max_size=40
).filter(maskable)
ascii_secrets = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_/+=",
    min_size=MIN_SECRET_LEN,
    max_size=40,
).filter(maskable)
filler = st.text("abc XYZ\n:=", max_size=30)


def test_plain_value_and_existing_callers_signature() -> None:
    assert mask(f"key is {SECRET}.", [SECRET]) == f"key is {MASK}."
    assert mask("nothing here") == "nothing here"


def test_every_encoding_is_masked() -> None:
    raw = SECRET.encode()
    forms = [
        json.dumps(SECRET)[1:-1],
        quote(SECRET, safe=""),
        re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(), quote(SECRET, safe="")),
        raw.hex(),
        raw.hex().upper(),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
    ]
    for form in forms:
        out = mask(f"<{form}>", [SECRET], patterns=False)
        assert out == f"<{MASK}>", (form, out)


def test_json_escaping_of_quotes_backslashes_and_unicode() -> None:
    secret = 'pa"ss\\wörd-42'
    doc = json.dumps({"v": secret})
    assert secret not in mask(doc, [secret]) and "pa" not in mask(doc, [secret])
    assert mask(json.dumps({"v": secret}, ensure_ascii=False), [secret]) == '{"v": "***"}'


@settings(max_examples=200, deadline=None)
@given(
    secret=secrets_st,
    before=st.binary(max_size=12),
    after=st.binary(max_size=12),
    urlsafe=st.booleans(),
)
def test_base64_at_every_alignment_leaves_no_secret_bits_but_the_edges(
    secret: str, before: bytes, after: bytes, urlsafe: bool
) -> None:
    enc = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    blob = enc(before + secret.encode() + after).decode()
    out = mask(blob, [secret], patterns=False)
    start = (8 * len(before) + 5) // 6
    end = (8 * (len(before) + len(secret.encode()))) // 6
    inner = blob[start:end]
    assert inner not in out or len(inner) < MIN_SECRET_LEN
    assert MASK in out or len(inner) < MIN_SECRET_LEN


@settings(max_examples=200, deadline=None)
@given(secret=secrets_st, before=filler, after=filler)
def test_random_secrets_never_survive_in_any_form(secret: str, before: str, after: str) -> None:
    for form in variants(secret):
        out = mask(before + form + after, [secret], patterns=False)
        assert form not in out


@settings(max_examples=150, deadline=None)
@given(secrets=st.lists(ascii_secrets, min_size=1, max_size=3), text=filler, data=st.data())
def test_streaming_equals_whole_text_for_any_chunking(
    secrets: list[str], text: str, data: st.DataObject
) -> None:
    whole = text + secrets[0] + text + "".join(secrets) + text
    cuts = sorted(data.draw(st.lists(st.integers(0, len(whole)), max_size=6)))
    pieces = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)])]
    m = StreamMasker(secrets, patterns=False)
    out = "".join(m.feed(p) for p in pieces) + m.flush()
    assert out == mask(whole, secrets, patterns=False)


def test_a_secret_cut_at_every_offset_is_masked_and_holdback_is_bounded() -> None:
    text = f"before {SECRET} after"
    for cut in range(len(text) + 1):
        m = StreamMasker([SECRET])
        first = m.feed(text[:cut])
        assert len(text[:cut]) - len(first.replace(MASK, "")) <= m.hold or MASK in first
        out = first + m.feed(text[cut:]) + m.flush()
        assert out == f"before {MASK} after", cut
    m = StreamMasker([SECRET])
    assert m.hold == max(len(v) for v in variants(SECRET)) - 1
    # byte by byte, including a base64 form
    blob = "x" + base64.b64encode(b"zz" + SECRET.encode()).decode()
    m = StreamMasker([SECRET])
    out = "".join(m.feed(c) for c in blob) + m.flush()
    assert out == mask(blob, [SECRET])


def test_streaming_never_leaks_a_prefix_before_the_rest_arrives() -> None:
    m = StreamMasker([SECRET])
    shown = m.feed("log: " + SECRET[:-1])
    assert SECRET[:4] not in shown
    assert shown + m.feed(SECRET[-1] + " end") + m.flush() == f"log: {MASK} end"


def test_a_secret_split_between_stdout_and_stderr_is_masked_in_both_orders() -> None:
    for i in range(1, len(SECRET)):
        out, err = mask_streams("out " + SECRET[:i], SECRET[i:] + " err", [SECRET])
        assert SECRET[:i] not in out or i < 2
        assert out.startswith("out ") and err.endswith(" err")
        assert MASK in out and MASK in err, i
        err2, out2 = mask_streams(SECRET[i:] + " tail", "head " + SECRET[:i], [SECRET])
        assert MASK in err2 and MASK in out2
    assert mask_streams("a fine line", "another", [SECRET]) == ("a fine line", "another")


def test_empty_one_char_and_short_secrets_never_crash_or_over_mask() -> None:
    text = "a b c 12345 ------ ======"
    assert mask(text, ["", "a", "1", "12345"]) == text
    assert mask(text, ["------", "="]) == text  # one repeated character
    assert StreamMasker(["", "x"]).feed(text) == text
    s = StreamMasker([])
    assert s.hold == 0 and s.feed("abc") == "abc" and s.flush() == ""
    assert mask_streams("x", "y", ["", "x"]) == ("x", "y")
    assert variants("") == frozenset() and variants("abcde") == frozenset()
    assert "123456" in variants("123456")


def test_credential_patterns_still_apply() -> None:
    assert mask("token=abcd1234 and sk-" + "a" * 24) == f"token={MASK} and {MASK}"


def test_overlapping_secrets_become_one_mask() -> None:
    assert mask("xx abcdefghij yy", ["abcdefgh", "defghij"]) == f"xx {MASK} yy"


# --- issue 15: every encoding, credential shapes, events, policy, files ------------

KEY = "Zq9-known-Secret-4471xYw"


def _wrapped(text: str, width: int) -> str:
    return "\n".join(text[i : i + width] for i in range(0, len(text), width))


def test_known_value_in_every_encoding_including_wrapped_and_split() -> None:
    raw = KEY.encode()
    forms = {
        "utf-16 json": "".join(f"\\u{ord(c):04x}" for c in KEY),
        "utf-16 json upper": "".join(f"\\u{ord(c):04X}" for c in KEY),
        "\\x escapes": "".join(f"\\x{b:02x}" for b in raw),
        "python bytes repr": repr(raw),
        "spaced hex (od -An -tx1)": raw.hex(" "),
        "od wrapped at 16 bytes": " " + raw[:16].hex(" ") + "\n " + raw[16:].hex(" "),
        "xxd -p wrapped": _wrapped(raw.hex(), 30),
        "base32": base64.b32encode(b"abc" + raw).decode(),
        "split across lines": KEY[:9] + "\n" + KEY[9:],
        "url, / kept": quote("http://x/" + KEY),
    }
    for pad in (b"", b"x", b"xy"):
        blob = base64.b64encode(pad + raw).decode()
        forms[f"base64 -w3 at offset {len(pad)}"] = _wrapped(blob, 3)
        forms[f"base64 -w76 at offset {len(pad)}"] = _wrapped(blob, 76)
    for name, form in forms.items():
        out = mask(f"start\n{form}\nend", [KEY], patterns=False)
        assert out.startswith("start\n") and out.endswith("\nend"), (name, out)
        assert MASK in out, (name, out)
        stripped = re.sub(r"\s", "", out)
        for v in variants(KEY):
            assert re.sub(r"\s", "", v) not in stripped, (name, v)


def test_credential_shapes_from_the_pattern_set() -> None:
    cases = {
        "DB_PASSWORD=Hunter2-db-Pass": "DB_PASSWORD=***",
        "export GITHUB_TOKEN=abcd1234efgh": "export GITHUB_TOKEN=***",
        "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYzz1234abcd": "AWS_SECRET_ACCESS_KEY=***",
        "MY_APP_SECRET_KEY: s3cr3tvalue": "MY_APP_SECRET_KEY: ***",
        '{"api_key": "abcd1234"}': '{"api_key": "***"}',
        "key AKIAQWERTYUIOPASDFGH here": "key *** here",
        "t ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8 x": "t *** x",
        "postgresql://app:urlPass-9931@db/app": "postgresql://app:***@db/app",
        "Authorization: Bearer abc.def.ghi-123": "Authorization: Bearer ***",
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl": "jwt ***",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n-----END OPENSSH PRIVATE KEY-----\nx": "***\nx",
        "xoxb-1234567890-abcdefghij": "***",
        "sk_live_" + "a" * 24: "***",
    }
    for text, want in cases.items():
        assert mask(text) == want, (text, mask(text))


def test_ordinary_code_is_left_alone() -> None:
    code = (
        "def password_hash(password: str) -> str:\n"
        "    token_count = len(tokens)\n"
        "    password = get_password()\n"
        "    auth = self.auth_backend\n"
        "    secret_name = os.environ['NAME']\n"
        "    pwd = None\n"
        "    key = '${API_KEY}'\n"
        "    return hashlib.sha256(password.encode()).hexdigest()\n"
    )
    assert mask(code) == code


code_text = st.text(
    st.sampled_from(list("abcdefghijklmnopqrstuvwxyz _.,;()[]{}\n\t#'\"")), max_size=300
)


@settings(max_examples=300, deadline=None)
@given(text=code_text, secret=ascii_secrets)
def test_masking_never_changes_text_that_holds_no_secret(text: str, secret: str) -> None:
    flat = re.sub(r"\s", "", text)
    if any(v in text or re.sub(r"\s", "", v) in flat for v in variants(secret)):
        return  # (rare) the text happens to hold the secret
    assert mask(text, [secret]) == text


def test_holds_known_sees_every_form() -> None:
    assert holds_known("https://x/?k=" + quote(KEY), [KEY])
    assert holds_known(base64.b64encode(b"z" + KEY.encode()).decode(), [KEY])
    assert not holds_known("https://x/?k=other", [KEY])
    assert not holds_known("anything", [])


def test_mask_event_masks_every_string_and_secret_named_env() -> None:
    from events.envelope import NewEvent
    from events.payloads import JobSubmitted, SessionRef, ToolCallCompleted
    from orchestrator.guard.event_masking import mask_event

    f = mask_event(lambda: [KEY])
    spec = {
        "steps": [{"kind": "shell", "env": {"DB_PASSWORD": "plain", "PWD": "/work"}}],
        "note": f"uses {KEY}",
        "n": 3,
    }
    e = NewEvent.create(
        JobSubmitted(name="j", spec=spec, sessions=(SessionRef(session_id="s", target="t"),)),
        actor="a",
        correlation_id="c",
    )
    out = f("job-1", e)
    assert out.event_id == e.event_id
    dumped = out.payload.model_dump(mode="json")
    assert dumped["spec"]["note"] == f"uses {MASK}"
    assert dumped["spec"]["steps"][0]["env"] == {"DB_PASSWORD": MASK, "PWD": "/work"}
    assert dumped["spec"]["n"] == 3
    clean = NewEvent.create(
        ToolCallCompleted(call_id="s/1", tool="read", output="fine"),
        actor="a",
        correlation_id="c",
    )
    assert f("s", clean) is clean  # nothing to mask: the same event


def test_a_string_the_filter_found_clean_is_masked_once_its_secret_is_known() -> None:
    from events.envelope import NewEvent
    from events.payloads import ToolCallCompleted
    from orchestrator.guard.event_masking import mask_event

    known: list[str] = []
    f = mask_event(lambda: known)

    def completed(output: str) -> NewEvent:
        payload = ToolCallCompleted(call_id="s/1", tool="read", output=output)
        return NewEvent.create(payload, actor="a", correlation_id="c")

    e = completed(f"token {KEY} here")
    for _ in range(2):  # the second time from the filter's memory of clean strings
        assert f("s", e) is e
    known.append(KEY)  # a secret read later in the process
    assert f("s", e).payload.output == f"token {MASK} here"
    assert f("s", completed(f"token {KEY} here")).payload.output == f"token {MASK} here"
    known.clear()
    assert f("s", e) is e


def test_policy_denies_a_request_whose_arguments_hold_a_known_secret() -> None:
    from orchestrator.guard.decision import decide

    url = "https://example.com/cb?token=" + quote(KEY)
    v = decide("web_fetch", {"url": url}, secrets=[KEY])
    assert (v.decision, v.rule_id) == ("deny", "secret-in-arguments")
    assert KEY not in v.reason and "url" in v.reason
    v = decide("shell", {"command": "echo hi", "env": {"X": KEY}}, tier="exec", secrets=[KEY])
    assert (v.decision, v.rule_id) == ("deny", "secret-in-arguments") and "env.X" in v.reason
    v = decide("read", {"path": f"notes/{KEY}.txt"}, secrets=[KEY])
    assert v.rule_id == "secret-in-arguments"
    assert decide("web_fetch", {"url": "https://example.com/"}, secrets=[KEY]).rule_id != (
        "secret-in-arguments"
    )


def test_files_keep_their_secrets_when_the_model_writes_back_what_it_saw(tmp_path) -> None:
    import pytest

    from orchestrator.run.steps import PatchStep, ReplaceStep, WriteStep
    from orchestrator.tools.files import plan_patch, plan_write
    from orchestrator.tools.replace import plan_replace
    from orchestrator.tools.secret_edits import SecretOverwrite, masked_view

    before = f"host: db\napi_key: {KEY}\nurl: postgresql://app:urlPass-9931@db/app\nport: 1\n"
    (tmp_path / "c.yml").write_text(before)
    seen = masked_view(before, [KEY])
    assert seen == "host: db\napi_key: ***\nurl: postgresql://app:***@db/app\nport: 1\n"
    # written back as seen, with changes around the masks: the real values stay
    new = seen.replace("port: 1", "port: 2").replace("@db/", "@db2/")
    (edit,) = plan_write(tmp_path, WriteStep(path="c.yml", content=new), [KEY])
    assert edit.after == before.replace("port: 1", "port: 2").replace("@db/", "@db2/").encode()
    # a patch whose context was copied from the masked view applies, secrets kept
    diff = "--- a/c.yml\n+++ b/c.yml\n@@ -1,3 +1,3 @@\n-host: db\n+host: db3\n api_key: ***\n url: postgresql://app:***@db/app\n"
    (edit,) = plan_patch(tmp_path, PatchStep(diff=diff), [KEY])
    assert edit.after == before.replace("host: db\n", "host: db3\n").encode()
    # replacing a secret by the placeholder is refused, with the rule of it
    with pytest.raises(SecretOverwrite, match="line 2 would put the mask placeholder"):
        plan_write(
            tmp_path,
            WriteStep(path="c.yml", content=seen.replace("api_key: ***", "api_key: *** ***")),
            [KEY],
        )
    # replacing the secret by the placeholder keeps the original value
    edits, _ = plan_replace(
        tmp_path, ReplaceStep(pattern=KEY, replacement=MASK, literal=True), secrets=[KEY]
    )
    assert edits == []
    # a `***` where the file had no secret is ordinary text
    (tmp_path / "n.md").write_text("a\n")
    (edit,) = plan_write(tmp_path, WriteStep(path="n.md", content="a\n***\n"), [KEY])
    assert edit.after == b"a\n***\n"
