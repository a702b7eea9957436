"""Guardrails as pure decisions: the permission policy, shell command analysis, egress, masking."""
