"""``python -m bench.faults``: the fault harness (``tests/faults/harness.py``) for longer.

    python -m bench.faults --seconds 300 --seed 7

Three real node processes A–B–C on loopback behind misbehaving proxies; members pay within
and across collectives while nodes are killed and lines partitioned; then every ledger is
read and checked. Prints the figures (payments attempted, acknowledged, refused,
unknown-then-resolved; kills; partitions; messages dropped; violations) and exits 1 if
there was any violation. Run it from the repository's root (it imports ``tests``). The
working directory is a fresh temporary one, kept with ``--keep`` (node logs and databases).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

from tests.faults.harness import RunConfig, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0,
                        help="how long members pay while faults happen (default 120)")
    parser.add_argument("--seed", type=int, default=1, help="seed of every random choice")
    parser.add_argument("--kills", type=int, default=None,
                        help="SIGKILLs over the run (default: one per 10 s, at least 3)")
    parser.add_argument("--partitions", type=int, default=None,
                        help="partitions of a line over the run (default: one per 15 s, "
                             "at least 2)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the working directory (node logs and databases)")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    kills = args.kills if args.kills is not None else max(3, int(args.seconds // 10))
    partitions = args.partitions if args.partitions is not None else \
        max(2, int(args.seconds // 15))
    cfg = RunConfig(seed=args.seed, seconds=args.seconds, kills=kills, partitions=partitions)
    work = Path(tempfile.mkdtemp(prefix="tally-faults-"))
    try:
        figures = asyncio.run(run(cfg, work, progress=lambda s: print(s, file=sys.stderr)))
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(figures.report())
    return 1 if figures.violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
