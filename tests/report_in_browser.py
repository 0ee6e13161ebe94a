"""Open a report in headless Chromium and check what a person would see (not collected by pytest; CI runs it after
installing chromium: ``apt-get install -y chromium``).

    python tests/report_in_browser.py                 # builds a small report (no model, ~10 s), then checks it
    python tests/report_in_browser.py OUT/report.html # checks an existing report
    python tests/report_in_browser.py --keep DIR      # also leaves the report and the screenshot in DIR

Checks: Chromium renders the page (exit 0, a screenshot); in the rendered DOM the primary metric's forest plot comes
before the verdicts and the listening grid after them, every grid cell has one audio player and one spectrogram
image, and every image decoded (non-zero natural width); the top of the screenshot (the forest plot) is not blank.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
# Runs in the page once it has loaded; its verdict is written into the DOM that --dump-dom prints.
PROBE = """<script>window.addEventListener('load', () => {
  const cells = [...document.querySelectorAll('table.listen td[data-clip]')];
  const ok = cells.every(td => td.querySelectorAll('audio').length === 1 && td.querySelectorAll('img').length === 1);
  const images = [...document.images].every(im => im.complete && im.naturalWidth > 0);
  const order = [...document.querySelectorAll('#primary-forest, h2')].map(e => e.id || e.textContent);
  const p = document.createElement('pre'); p.id = 'probe';
  p.textContent = JSON.stringify({cells: cells.length, cellsOk: ok, imagesOk: images, images: document.images.length,
                                  order: order});
  document.body.appendChild(p);
});</script>"""


def build_demo_report(out: Path) -> Path:
    """A report from synthetic rows and wavs (espeak speech + a tone, three outputs each), through `build_report`."""
    import soundfile as sf

    from gdr.audio import write_wav
    from gdr.config import ReportConfig
    from gdr.report import build_report
    from gdr.run_folder import RunFolder

    rng = np.random.default_rng(0)
    speech, _ = sf.read(str(ROOT / "tests" / "data" / "speech_espeak_16k.wav"), dtype="float32")
    t = np.arange(len(speech)) / 16000
    clips = {"speech__harvard": speech, "music__tone": (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)}
    task, rows = "noise(snr_db=10)", []
    methods = ("degraded", "vae_roundtrip", "dps s=1 50st")
    folder = RunFolder(out, clips, [task], methods)
    for clip, x in clips.items():
        write_wav(folder.input_wav(clip), x)
        for k, method in enumerate(methods):
            y = x + (0.05 / (k + 1)) * rng.standard_normal(len(x)).astype(np.float32)
            wav = folder.output_wav(clip, task, method)
            write_wav(wav, y)
            rows.append({"clip": clip, "clip_kind": clip.split("__")[0], "task": task, "method": method,
                         "kind": "method" if k == 2 else "baseline", "seed": 0 if k == 2 else "", "scale": "",
                         "phase_coherent": k == 0, "lsd": 1.0 - 0.2 * k + 0.01 * rng.normal(),
                         "logmel_l1": 0.5 - 0.1 * k, "lsd_high": 1.0, "mrstft": 1.0, "si_sdr": "", "snr": "",
                         "wall_s": 0.1, "peak_mem_mb": 100.0, "wav": folder.relative(wav)})
    plan = SimpleNamespace(clips=clips, recipes=[{"degradation": {"name": "noise", "params": {"snr_db": 10}}}],
                           skipped=[], random_weights=True)
    objects = SimpleNamespace(report=ReportConfig(bootstrap=200, fad=False), model=SimpleNamespace(pretrained="demo"),
                              logger=False)
    build_report(folder, rows, plan, objects, cfg_yaml="demo: true\n", wall_s=0.0)
    return folder.report_html


def chromium(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        sys.exit("report_in_browser: no chromium on PATH (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=120, check=False)


def check(report: Path, workdir: Path) -> list[str]:
    """Problems found (empty: the report looks right)."""
    import json

    from PIL import Image

    probed = workdir / "probed.html"
    probed.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    shot = workdir / "report.png"
    run = chromium(f"--screenshot={shot}", "--window-size=1400,2000", probed.as_uri())
    problems = [] if run.returncode == 0 and shot.exists() else [f"no screenshot (exit {run.returncode})"]
    dom = chromium("--dump-dom", "--virtual-time-budget=10000", probed.as_uri())
    start = dom.stdout.find('<pre id="probe">')
    if start < 0:
        return [*problems, "the probe did not run (page did not load)"]
    probe = json.loads(dom.stdout[start + len('<pre id="probe">'):dom.stdout.index("</pre>", start)]
                       .replace("&quot;", '"').replace("&amp;", "&"))
    order = probe["order"]
    if order[:3] != ["Primary metric per task", "primary-forest", "Verdicts"] or "Listen" not in order:
        problems.append(f"sections in the wrong order: {order}")
    if probe["cells"] == 0 or not probe["cellsOk"]:
        problems.append(f"listening grid: {probe['cells']} cells, each with one player and one spectrogram: "
                        f"{probe['cellsOk']}")
    if not probe["imagesOk"]:
        problems.append("an image did not decode")
    if shot.exists():
        top = np.asarray(Image.open(shot).convert("L"))[:700]
        if (top < 128).mean() < 0.005:
            problems.append("the top of the page (forest plot) is blank")
    print(f"report_in_browser: {probe['cells']} grid cells, {probe['images']} images, sections {order}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", nargs="?", type=Path, help="report.html to check (default: build a demo one)")
    parser.add_argument("--keep", type=Path, help="folder to keep the report and the screenshot in")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="gdr-browser-")) if args.keep is None else args.keep
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        report = args.report or build_demo_report(workdir / "demo")
        problems = check(report, workdir)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    for problem in problems:
        print(f"report_in_browser: FAIL: {problem}", file=sys.stderr)
    print("report_in_browser: OK" if not problems else f"report_in_browser: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
