"""One tool object per step kind, implementing `orchestrator.tools.interface.Tool`
on top of the tool modules; `orchestrator.tools.registry` lists them."""
