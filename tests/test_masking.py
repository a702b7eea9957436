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
