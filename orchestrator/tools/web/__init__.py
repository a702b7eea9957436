"""Network tools: the egress policy every request goes through (`egress`),
`web_fetch` (`fetch`), `web_search` (`search`), per-host circuit breakers
(`breaker`) and the retry loop they share. docs/network.md describes the
rules; the browser tool (`orchestrator.tools.web.browser`) uses `egress` too.
"""
