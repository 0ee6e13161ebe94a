"""Write a published AudioLDM2 layout with random weights: ``python scripts/build_random_model.py OUT``.

``--checkpoint audioldm2|audioldm2-large|audioldm2-music``, ``--size tiny|full`` (full: ~4.5 GB for base).
The folder loads like the real download (``--model.pretrained OUT``); its numbers say nothing about methods.
"""

import argparse
import sys

from gdr.cli import main_guard


def main(argv=None) -> int:
    from gdr.builders import CHECKPOINTS, save_published_layout

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to write (replaced if it exists)")
    parser.add_argument("--checkpoint", default="audioldm2", choices=CHECKPOINTS)
    parser.add_argument("--size", default="tiny", choices=["tiny", "full"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    folder = save_published_layout(args.out, args.checkpoint, args.size, args.seed, progress=True)
    print(f"random-weight {args.checkpoint} ({args.size}) written to {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main_guard(main))
