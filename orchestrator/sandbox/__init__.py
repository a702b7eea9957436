"""The sandbox every shell command runs in."""
