"""Configuration: the one Settings model, where each value came from, and named secrets."""
