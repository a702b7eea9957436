"""`make fuzz-shell`: a longer differential run. Prints each escape and a
summary; exits 1 when there is any.

    python -m tests.security.differential [--seed N] [--lines N]
"""

from __future__ import annotations

import argparse
import shutil
import sys

from tests.security.differential import check, grammar
from tests.security.differential.sandbox import available, make_box


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.security.differential")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--lines", type=int, default=30_000)
    args = ap.parse_args(argv)
    why = available()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    box, root = make_box()
    try:
        rep = check.run(box, grammar.lines(args.seed, args.lines, check.corpus()))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for e in rep.escapes:
        print(
            f"ESCAPE ({e.decision}) {e.line!r}: bash started {list(e.missed)}, "
            f"the analysis reported {list(e.reported)}"
        )
    print(f"seed {args.seed}: {rep.summary()}")
    return 1 if rep.escapes else 0


if __name__ == "__main__":
    sys.exit(main())
