"""Audits over the store: signed digests of stream heads, and re-deciding recorded requests."""
