"""Guardrails as pure decisions.

- the policy: `policy` (the document: load, check, combine), `rules` (what a
  rule is and when it matches), `builtin_rules` (data), `decision` (a
  request's verdict, strictest wins), `sed_awk` (scripts that run or write),
  `globs` (the glob language of path rules);
- shell command analysis: `commands`, on `shell_words`;
- egress: `egress` (URL, host and address checks), `egress_connect` (the
  checked httpx transport);
- masking: `masking`.
"""
