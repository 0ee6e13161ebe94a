"""Shared entry-point behaviour: user errors become one ``error: ...`` line on stderr and exit status 1."""

from __future__ import annotations

import os
import sys
from typing import Callable

from gdr.errors import GdrError, GdrWarning


def quiet_lightning() -> None:
    """Keep Lightning's tips and known-harmless warnings out of the user's terminal."""
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    for message in (".*predict returned None.*", ".*treespec.*", ".*does not have many workers.*",
                    ".*module\\(s\\) in eval mode.*", ".*Checkpoint directory .* exists and is not empty.*"):
        warnings.filterwarnings("ignore", message=message)


def _one_line_warnings() -> None:
    """`GdrWarning`s print as one ``warning: ...`` line; other warnings keep Python's format."""
    import warnings

    default = warnings.formatwarning

    def format_warning(message, category, filename, lineno, line=None):
        if issubclass(category, GdrWarning):
            return f"warning: {' '.join(str(message).split())}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = format_warning


def main_guard(main: Callable[[], int]) -> int:
    """Run `main`; a `GdrError` prints one line and returns 1; a run stopped by a signal (`gdr.interrupt`)
    prints one line and returns 128 + the signal (143 for SIGTERM, 130 for Ctrl-C). Bugs still raise."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_lightning()
    _one_line_warnings()
    from gdr.interrupt import Interrupted

    try:
        return main()
    except Interrupted as exc:  # a signal asked the run to stop; what is finished stays
        print(f"interrupted: {' '.join(str(exc).split())}", file=sys.stderr)
        return exc.exit_code
    except GdrError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
