"""Benchmarks, run side by side with peers and reported as ratios (not tests).

`python -m bench [--quick] [--only append,replay,dispatch,batch] [--json FILE]`;
see bench/README.md.
"""
