"""Zero-shot reconstruction with AudioLDM2: ``python scripts/evaluate.py --config configs/smoke.yaml``.

Wiring only: parse the config, run `gdr.evaluate.run`, report user errors in one line.
"""

import sys

from gdr.cli import main_guard


def main(argv=None) -> int:
    from gdr.config import parse
    from gdr.evaluate import run

    parser, cfg, objects = parse(argv)
    out = run(cfg, objects, parser)
    if out is not None:  # rank 0
        print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main_guard(main))
