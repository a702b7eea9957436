"""`python -m bench [--quick] [--only append,replay,dispatch,batch] [--json FILE]`."""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import signal
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

import orjson

from bench.common import CACHE, Options, banner, idle_setup, show

BENCHES = (
    "append",
    "replay",
    "dispatch",
    "batch",
    "policy",
    "sandbox",
    "agent",
    "browser",
    "fetch",
    "api",
    "cli_startup",
    "growth",
    "masking",
    "memory",
    "spill",
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument(
        "--quick", action="store_true", help="smaller sizes (about a quarter of the time)"
    )
    ap.add_argument(
        "--only", default=",".join(BENCHES), help=f"comma-separated subset of {','.join(BENCHES)}"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write all figures here")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = [b for b in chosen if b not in BENCHES]
    if unknown:
        ap.error(f"unknown bench {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    # A bench stopped by SIGTERM (`kill`, a timeout) unwinds as on Ctrl-C, so
    # the Celery workers and servers it started are stopped by their `finally`:
    # left running, a worker on the bench's Redis db takes the next run's tasks.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # Importing tasks.app reads settings: keep any embedded state out of the cwd.
    os.environ.setdefault("ORCH_STATE_DIR", str(CACHE / "state"))
    opts = Options(quick=args.quick, verbose=args.verbose)
    started = datetime.now(UTC)
    print(
        f"bench {'--quick ' if args.quick else ''}{','.join(chosen)} on "
        f"{platform.node()} ({os.cpu_count()} cores, Python {platform.python_version()}), "
        f"{started:%Y-%m-%d %H:%M} UTC",
        flush=True,
    )
    idle = idle_setup()
    if idle:
        print("idle vCPUs: " + ", ".join(f"{k} {v}" for k, v in idle.items()), flush=True)
    results = {}
    for name in chosen:
        banner(f"bench: {name}")
        t = time.perf_counter()
        try:
            mod = importlib.import_module(f"bench.{name}")
            res = mod.run(opts)
            results[name] = res
        except Exception:
            traceback.print_exc()
            print(f"bench {name} failed; the others go on", file=sys.stderr)
        print(f"\n({name}: {time.perf_counter() - t:,.1f} s)", flush=True)
    rows = [
        (f"{n}: {t.name}", t.wanted, t.measured, t.verdict)
        for n, r in results.items()
        for t in r.targets
    ]
    if rows:
        banner("all targets")
        show("", ("target", "wanted", "measured", "verdict"), rows)
    if args.json is not None:
        data = {
            "started": started.isoformat(),
            "quick": args.quick,
            "machine": {
                "node": platform.node(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "idle": idle,
            },
            "benches": {n: r.to_json() for n, r in results.items()},
        }
        args.json.write_bytes(
            orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
        )
        print(f"\nwrote {args.json}")
    return 0 if len(results) == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
