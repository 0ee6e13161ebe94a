"""Help that helps: every option of evaluate.py and train.py says what it is, its default, in plain text."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def option_help(text: str) -> dict[str, str]:
    """``{--option: its help text}`` from an argparse help page (text on the option's line or the lines below)."""
    out, current = {}, None
    for line in text.splitlines():
        match = re.match(r"^  (--[\w.\-]+)(?: [^ ].*?)?(?:  +(.*))?$", line)
        if match:
            current = match.group(1)
            out[current] = match.group(2) or ""
        elif current and re.match(r"^ {20,}\S", line):
            out[current] += " " + line.strip()
        else:
            current = None
    return {k: " ".join(v.split()) for k, v in out.items()}


def description(help_text: str) -> str:
    """The help text without jsonargparse's ``(type: ..., default: ...)`` suffix."""
    return re.sub(r"\(type: .*?default: .*?\)\s*$", "", help_text).strip()


def test_option_parser_reads_descriptions():
    page = ("options:\n  --a.b B               What b is. (type: int, default: 1)\n"
            "  --a.long_option LONG_OPTION\n                        Long text\n                        here.\n"
            "  --a.c C               (type: int, default: 0)\n")
    found = option_help(page)
    assert description(found["--a.b"]) == "What b is." and description(found["--a.long_option"]) == "Long text here."
    assert description(found["--a.c"]) == ""  # what the test below refuses


def test_every_evaluate_option_has_a_description_and_a_default():
    from gdr.config import build_parser

    page = build_parser().format_help()
    options = option_help(page)
    assert len(options) > 50
    missing = [k for k, v in options.items() if not description(v)]
    assert missing == []
    # Value options show their default (the group's "--model CONFIG" file options and the built-ins do not).
    values = [k for k in options if "." in k]
    assert [k for k in values if "default:" not in options[k]] == []
    assert "`" not in page  # no reST markup in the help
    for title in re.findall(r"^(\S.*):$", page, flags=re.M):  # group titles are whole sentences
        assert not title.endswith((",", "(", "and", "or")), title
    for method in ("seed", "psld", "resample", "daps", "decoder_inversion"):
        assert re.search(rf"^  {method} ", page, flags=re.M), method


def _train_help(*args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_train_help_names_the_learners_and_configs_and_describes_gdrs_options():
    page = _train_help("fit", "--help")
    for needle in ("ScheduleLearner", "LoraAdapterLearner", "configs/train/schedule_smoke.yaml", "--ckpt_path last"):
        assert needle in " ".join(page.split()), needle
    ours = {k: v for k, v in option_help(page).items() if k.startswith("--data.")}
    assert len(ours) == 11 and [k for k, v in ours.items() if not description(v) or "`" in v] == []  # with split_by
    learner = option_help(_train_help("fit", "--model.help", "ScheduleLearner"))
    ours = {k: v for k, v in learner.items() if k.startswith("--model.")}
    assert len(ours) >= 12 and [k for k, v in ours.items() if not description(v) or "`" in v] == []
