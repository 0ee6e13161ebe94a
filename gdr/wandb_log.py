"""Logging a finished run to Weights & Biases: the resolved config, the metrics table with each row's audio, and
the report's plots.

Offline unless ``WANDB_MODE`` says otherwise (``WANDB_MODE=online`` uploads), and silent: a run never needs an
account or a network. Called by `gdr.evaluate.run` beside the report (`gdr.report.build_report`), never from it.
"""

from __future__ import annotations

import io
import os

from gdr.audio import SAMPLE_RATE
from gdr.metric_names import SPEECH_METRICS
from gdr.metrics import PER_ITEM
from gdr.run_folder import RunFolder
from gdr.stats import metric_value


def log_run(folder: RunFolder, rows: list[dict], plots: dict[str, bytes], cfg_yaml: str, project: str) -> None:
    """Log `rows` (``metrics.csv``; each row's wav from `folder`), `plots` (``{file name: PNG}``, logged as
    ``plots/<name>``) and the config `cfg_yaml` to the wandb project `project`, in a run under `folder`."""
    import yaml

    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    mode = os.environ.get("WANDB_MODE", "offline")
    run = wandb.init(project=project, dir=str(folder.root), mode=mode, config=yaml.safe_load(cfg_yaml),
                     settings=wandb.Settings(silent=True, console="off"))
    # Columns in first-appearance order over all rows: speech metrics exist only in the rows of speech clips.
    columns = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "wav"] + ["audio"]
    table = wandb.Table(columns=columns)
    numeric = {*PER_ITEM, *SPEECH_METRICS}
    for r in rows:  # metrics as numbers; the rest (mixed "" / numbers) as text so column types stay fixed
        # A waveform metric of a phase-free output, or a metric that does not apply, is missing (None), never a number.
        values = [metric_value(r, k) if k in numeric else str(r.get(k, "")) for k in columns[:-1]]
        table.add_data(*values, wandb.Audio(str(folder.root / r["wav"]), sample_rate=SAMPLE_RATE))
    from PIL import Image

    images = {f"plots/{name}": wandb.Image(Image.open(io.BytesIO(png))) for name, png in plots.items()}
    run.log({"metrics": table, **images})
    run.finish()
