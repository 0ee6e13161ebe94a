"""Zero-shot reconstruction with AudioLDM2: ``python scripts/evaluate.py --config configs/smoke.yaml``.

Wiring only: parse the config, run `gdr.evaluate.run`, report user errors in one line.
"""

import sys

from gdr.cli import main_guard


def main(argv=None) -> int:
    from gdr.config import parse

    parser, cfg, objects = parse(argv)  # bad options and a missing data folder stop here, before Lightning loads
    from gdr.evaluate import run

    out = run(cfg, objects, parser)
    if out is not None:  # rank 0
        print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main_guard(main))
