"""``python -m bench.faults <probe> [--quick] [--minutes M] [--rate R]``: run one fault probe
(or ``all``) against the real daemon process, print its figures as a table and exit 1 when
a promise failed (2 when the probe cannot run here)."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.faults.outage import Unavailable  # noqa: E402
from bench.faults.probes import PROBES, run_probe  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    parser.add_argument("probe", choices=[*PROBES, "all"])
    parser.add_argument("--quick", action="store_true",
                        help="the CI form: seconds, small counts")
    parser.add_argument("--minutes", type=float, default=None,
                        help="soak: how long (default 10, quick 0.33)")
    parser.add_argument("--rate", type=float, default=None,
                        help="soak: calls a second (default 100, quick 20)")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: every daemon, fake and mount is cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    names = list(PROBES) if args.probe == "all" else [args.probe]
    failed = False
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"faults-{name}-") as tmp:
            try:
                results = run_probe(name, args.quick, Path(tmp), minutes=args.minutes,
                                    rate=args.rate)
            except Unavailable as error:
                print(f"### {name}: cannot run here: {error}\n", flush=True)
                return 2
        for result in results:
            print(result.table() + "\n", flush=True)
            failed |= not result.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
