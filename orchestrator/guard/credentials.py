"""Credential shapes: the regular expressions that find secrets nobody declared.

The pattern set is Yelp's detect-secrets (Apache-2.0), used as a library: the
`denylist` of each of its regex plugins named in `DETECTORS`, and its keyword
plugin's list of secret-naming words (`DENYLIST`) for `NAME=value` and
`"name": "value"`. A new detect-secrets release brings its new and corrected
patterns with it; nothing here copies them.

Left out on purpose: `IPPublicDetector` (a public address is not a secret),
the high-entropy detectors (they flag hashes, ids and base64 test data: the
masker would eat ordinary output) and the keyword plugin's per-file-type
regexes (we mask free text, not a parsed file).

Added here, where detect-secrets stops short of what a log needs:
  - a whole private key block (detect-secrets finds its header line only),
    or the header and the key lines after it when the END line is cut off;
  - a whole JWT (its pattern ends lazily after the second part);
  - newer token forms (`sk-proj-`, `sk-ant-`, `github_pat_`, Slack `xox?-`
    without digits);
  - the keyword words `token`, `auth`, `credential`, `access_key`,
    `client_secret`, matched after `_` or `.` too (`DB_PASSWORD=`,
    `GITHUB_TOKEN=`, `AWS_SECRET_ACCESS_KEY=`: `\\b` fails after `_`);
  - `Authorization: Bearer|Basic|Token ...` and `bearer <token>`.

To extend: add a detector class name to `DETECTORS` (one that detect-secrets
ships), or a compiled pattern to `EXTRA` (group 1, if any, is what is masked;
else the whole match). Everything compiles once, on first use, so importing
the masker stays cheap (the CLI's start-up).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from orchestrator import lazy

__all__ = [
    "Shape",
    "DETECTORS",
    "EXTRA",
    "shapes",
    "split_shapes",
    "keywords",
    "secret_name",
    "TRIGGERS_LOWER",
    "TRIGGERS_CASED",
]


def _plugin(module: str) -> Any:
    """A detect-secrets plugin module, imported on first use."""
    return lazy.module(f"detect_secrets.plugins.{module}")


# (module under detect_secrets.plugins, class): the regex plugins we take.
DETECTORS: tuple[tuple[str, str], ...] = (
    ("artifactory", "ArtifactoryDetector"),
    ("aws", "AWSKeyDetector"),
    ("azure_storage_key", "AzureStorageKeyDetector"),
    ("basic_auth", "BasicAuthDetector"),
    ("cloudant", "CloudantDetector"),
    ("discord", "DiscordBotTokenDetector"),
    ("github_token", "GitHubTokenDetector"),
    ("gitlab_token", "GitLabTokenDetector"),
    ("ibm_cloud_iam", "IbmCloudIamDetector"),
    ("ibm_cos_hmac", "IbmCosHmacDetector"),
    ("jwt", "JwtTokenDetector"),
    ("mailchimp", "MailchimpDetector"),
    ("npm", "NpmDetector"),
    ("openai", "OpenAIDetector"),
    ("pypi_token", "PypiTokenDetector"),
    ("sendgrid", "SendGridDetector"),
    ("slack", "SlackDetector"),
    ("softlayer", "SoftlayerDetector"),
    ("square_oauth", "SquareOAuthDetector"),
    ("stripe", "StripeDetector"),
    ("telegram_token", "TelegramBotTokenDetector"),
    ("twilio", "TwilioKeyDetector"),
)

# Words detect-secrets' keyword plugin lacks that name a secret in env files.
KEYWORDS_ADDED = (
    "token",
    "auth(?![a-z])",  # not `author`, `AuthType`
    "credentials?",
    "access_?key",
    "client_?secret",
    "secret_?key",
)

EXTRA: tuple[re.Pattern[str], ...] = (
    # A whole key block; without its END line (a diff's context, a cut
    # output), the header and every key-like line after it.
    re.compile(
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----(?:.*?-----END [A-Z0-9 ]*PRIVATE KEY"
        r"(?: BLOCK)?-----|(?:\r?\n[ +-]?[A-Za-z0-9+/=:, -]+)*)",
        re.S,
    ),
    re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"),
    re.compile(r"(?<![A-Za-z0-9])sk-(?:proj-|ant-)?[A-Za-z0-9_\-]{20,}"),
    re.compile(r"(?<![A-Za-z0-9])gh[pousr]_[A-Za-z0-9]{30,}"),
    re.compile(r"(?<![A-Za-z0-9])github_pat_[A-Za-z0-9_]{30,}"),
    re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"),
    re.compile(r"(?<![A-Za-z0-9])xox[abprs]-[A-Za-z0-9-]{10,}"),
    re.compile(r"(?i)\bauthorization:\s*(?:bearer|basic|token)\s+([^\s\"']+)"),
    re.compile(r"(?i)\bbearer\s+([A-Za-z0-9._~+/=-]{12,})"),
)


# Every shape but those in WHOLE_TEXT needs one of these literals on its line
# (in the lower-cased text, or as written): the masker runs those shapes only
# on lines holding one. A new shape whose match needs none of them goes in
# WHOLE_TEXT.
TRIGGERS_LOWER = (
    "key", "pw", "pass", "token", "secret", "auth", "cred", "contras", "aws", "://",
    "bearer", "sk-", "k_live_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_",
    "glpat-", "gldt-", "glft-", "glsoat-", "glrt-", "glcbt-", "glimt-", "glptt-",
    "glagent-", "gloas-", "gr1348941", "xox", "eyj", "sq0csp", "pypi-", "sg.", "-us",
    "akc", "a3t", "abia", "acca", "akia", "asia", "accountkey",
)  # fmt: skip
TRIGGERS_CASED = ("AP", "AC", "SK")
# (source, pattern text prefix): shapes run over the whole text (multi-line,
# or needing no literal).
WHOLE_TEXT = ("DiscordBotTokenDetector", "TelegramBotTokenDetector", "-----BEGIN")


@dataclass(frozen=True)
class Shape:
    """One credential pattern; `group` is the part masked (0: the whole match)."""

    source: str  # the detector's name, or "extra" / "keyword"
    rx: re.Pattern[str]
    group: int


def _keyword_rx(words: tuple[str, ...]) -> re.Pattern[str]:
    """`NAME=value`, `NAME: value`, `"name": "value"` where NAME holds a
    secret-naming word anywhere (`DB_PASSWORD`, `x.api_key`): the value (up
    to a quote, space, comma or semicolon, at least 4 characters) is group 1.
    A value that is itself a reference (`$VAR`, `${VAR}`, `%(name)s`,
    `<placeholder>`, `***`), code (a call, `self.attr`, `os.environ[...]`, a
    type name, `None`) is not a secret."""
    names = "|".join(words)
    return re.compile(
        r"(?i)(?:" + names + r")[\w.-]*[\"']?[ \t]*[:=][ \t]*[\"']?"
        r"(?!(?:bearer|basic|token)\s)(?![$%<*{])(?![\w.\[\]]*\()"
        r"(?!(?:None|True|False|null|true|false|undefined|str|bytes|int|bool|Optional|Any"
        r"|string|number|SecretStr)\b)"
        r"(?![a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+(?:[\[(\s]|$))([^\s\"',;`]{4,})"
    )


@lru_cache(maxsize=1)
def shapes() -> tuple[Shape, ...]:
    """Every credential shape, compiled once."""
    out: list[Shape] = []
    for module, cls in DETECTORS:
        detector = getattr(_plugin(module), cls)
        for rx in detector.denylist:
            # Group 1 is the secret when the pattern names one (a password in a
            # URL, a key after its name); a short group 1 is a token prefix
            # (`ghp`, `glpat`) and the whole match is the secret.
            out.append(Shape(cls, rx, 1 if rx.groups and cls in _SECRET_IN_GROUP else 0))
    out += [Shape("extra", rx, 1 if rx.groups else 0) for rx in EXTRA]
    out.append(Shape("keyword", _keyword_rx(keywords()), 1))
    return tuple(out)


@lru_cache(maxsize=1)
def split_shapes() -> tuple[tuple[Shape, ...], tuple[Shape, ...]]:
    """(shapes run over the whole text, shapes run on trigger lines)."""
    whole = tuple(
        s for s in shapes() if s.source in WHOLE_TEXT or s.rx.pattern.startswith(WHOLE_TEXT)
    )
    return whole, tuple(s for s in shapes() if s not in whole)


# Detectors whose group 1 is the secret itself (the rest: the whole match).
_SECRET_IN_GROUP = frozenset(
    {
        "AWSKeyDetector",
        "BasicAuthDetector",
        "CloudantDetector",
        "IbmCloudIamDetector",
        "IbmCosHmacDetector",
        "NpmDetector",
        "SoftlayerDetector",
    }
)


def keywords() -> tuple[str, ...]:
    """The secret-naming words (detect-secrets' and ours), as regex fragments."""
    return tuple(_plugin("keyword").DENYLIST) + KEYWORDS_ADDED


@lru_cache(maxsize=1)
def secret_name() -> re.Pattern[str]:
    """Whether a name (an env variable, a JSON key) says its value is a secret."""
    return re.compile(r"(?i)(?:" + "|".join(keywords()) + ")")
