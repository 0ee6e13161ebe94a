"""gdr.datamodule at dataset scale: epochs walk every file, ranks shard one global order, crops are read lazily and
equal the decoded file, the split keeps folders whole, file lists and fingerprints, evaluation on a list."""

import csv
import hashlib
import os
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from torch.utils.data import DataLoader

from gdr.datamodule import CropDataset, EpochSampler, RestorationDataModule
from gdr.errors import GdrError
from gdr.module import seed_for

CROP = 0.32  # seconds: 5120 samples, FFT bins of 3.125 Hz
IDENTITY = {"name": "identity"}


def _tone_folder(root, count, rate=16000, seconds=1.0, channels=1, layout=lambda j: f"f{j:02d}.wav"):
    """`count` files, file j a sine of `_freq(j)` Hz (so a crop tells which file it came from). Returns names."""
    names = []
    for j in range(count):
        path = root / layout(j)
        path.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(int(seconds * rate)) / rate
        x = 0.3 * np.sin(2 * np.pi * _freq(j) * t)
        sf.write(str(path), np.stack([x] * channels, axis=1) if channels > 1 else x, rate, subtype="FLOAT")
        names.append(path.relative_to(root).as_posix())
    return names


def _freq(j):
    return 250.0 + 125.0 * j


def _which_file(x):
    """The j whose tone dominates the crop `x` (independent of the data module: a numpy FFT)."""
    spectrum = np.abs(np.fft.rfft(np.asarray(x, dtype=np.float64) * np.hanning(len(x))))
    peak = np.argmax(spectrum) * 16000 / len(x)
    j = int(round((peak - 250.0) / 125.0))
    assert abs(peak - _freq(j)) < 10, peak
    return j


def _data(root, **kw):
    args = dict(root=str(root), degradation=IDENTITY, crop_seconds=CROP, batch_size=2, val_fraction=0.25, seed=3)
    return RestorationDataModule(**{**args, **kw})


def _epoch(loader, epoch):
    loader.sampler.set_epoch(epoch)
    return [batch for batch in loader]


def _files_of(batches):
    return [_which_file(x) for batch in batches for x in batch["x"]]


def test_an_epoch_is_every_training_file_once_in_a_new_order_each_epoch_and_a_rerun_repeats_it(tmp_path):
    names = _tone_folder(tmp_path, 10)
    data = _data(tmp_path)
    train = {names.index(n) for n in data.train_files.names}
    assert data.items_per_epoch == len(train) == 8  # null = one pass over the training files
    loader = data.train_dataloader()
    orders = [_files_of(_epoch(loader, e)) for e in range(3)]
    for order in orders:
        assert sorted(order) == sorted(train)  # every training file exactly once, no validation file
    assert orders[0] != orders[1] != orders[2]
    # A resumed run (a fresh data module, straight to epoch 2) sees the same batches bit for bit.
    again = _epoch(_data(tmp_path).train_dataloader(), 2)
    for a, b in zip(_epoch(loader, 2), again, strict=True):
        for key in ("x", "y", "support", "key"):
            assert torch.equal(a[key], b[key])


def test_short_epochs_draw_without_replacement_and_continue_where_the_last_stopped(tmp_path):
    _tone_folder(tmp_path, 8)
    data = _data(tmp_path, items_per_epoch=4)  # 6 training files, 4 items an epoch
    loader = data.train_dataloader()
    train = sorted(_files_of(_epoch(_data(tmp_path, items_per_epoch=6).train_dataloader(), 0)))
    draws = [f for e in range(6) for f in _files_of(_epoch(loader, e))]  # 24 draws = 4 passes of 6
    passes = [draws[i:i + 6] for i in range(0, 24, 6)]
    for p in passes:
        assert sorted(p) == train
    assert len({tuple(p) for p in passes}) == 4  # a new order each pass
    # Keys are the items' identities: (seed, epoch, position in the epoch's global order).
    batch = _epoch(loader, 5)
    keys = torch.cat([b["key"] for b in batch])
    assert keys.dtype == torch.int64 and keys.tolist() == [seed_for("item", 3, 5, p) for p in range(4)]


def test_two_ranks_at_step_k_see_exactly_what_one_process_with_twice_the_batch_sees(tmp_path):
    _tone_folder(tmp_path, 11)
    data = _data(tmp_path, items_per_epoch=8, degradation={"name": "noise", "snr_db": 10})
    dataset = data.train_dataloader().dataset

    def run(world, batch, epoch):
        """Per rank, the batches of `epoch` as Lightning's DDP sampler replacement yields them."""
        ranks = []
        for rank in range(world):
            sampler = EpochSampler(len(dataset))
            if world > 1:
                sampler = DistributedSamplerWrapper(sampler, num_replicas=world, rank=rank, shuffle=False)
            sampler.set_epoch(epoch)  # the wrapper forwards it to the EpochSampler
            ranks.append(list(DataLoader(dataset, batch_size=batch, sampler=sampler)))
        return ranks

    for epoch in (0, 1):
        (single,) = run(1, 4, epoch)
        rank0, rank1 = run(2, 2, epoch)
        assert len(single) == len(rank0) == len(rank1) == 2
        for k, whole in enumerate(single):
            by_key = {int(key): (x, y) for key, x, y in zip(whole["key"], whole["x"], whole["y"])}
            parts = [(int(key), x, y) for r in (rank0, rank1) for key, x, y in zip(r[k]["key"], r[k]["x"], r[k]["y"])]
            assert sorted(key for key, _, _ in parts) == sorted(by_key)
            for key, x, y in parts:  # same crop, same degradation noise
                assert torch.equal(x, by_key[key][0]) and torch.equal(y, by_key[key][1])
    # Each rank alone sees disjoint items; the two epochs differ.
    rank0, rank1 = run(2, 2, 0)
    keys = [int(k) for r in (rank0, rank1) for b in r for k in b["key"]]
    assert len(set(keys)) == 8


@pytest.mark.parametrize("rate, channels, mono", [(16000, 1, "first"), (44100, 2, "mean"), (22050, 2, "first"),
                                                  (48000, 1, "first")])
def test_lazy_crops_equal_the_slice_of_the_whole_decoded_resampled_file(tmp_path, monkeypatch, rate, channels, mono):
    rng = np.random.default_rng(rate)
    n = int(1.3 * rate)
    for j in range(3):
        audio = (0.2 * rng.standard_normal((n, channels))).astype(np.float32)
        sf.write(str(tmp_path / f"c{j}.flac"), audio, rate, subtype="PCM_24")
    reads = []
    real_read = sf.read
    monkeypatch.setattr(sf, "read", lambda *a, **kw: reads.append((kw.get("start"), kw.get("stop"))) or real_read(*a, **kw))
    data = _data(tmp_path, mono=mono)
    crop = data.crop
    for dataset, loader in ((data.val_files, data.val_dataloader()), (data.train_files, data.train_dataloader())):
        for batch in loader:
            for x in batch["x"]:
                x = x.numpy()
                # The reference: soundfile reads everything, torchaudio resamples the whole file, numpy normalises.
                best = None
                for name in dataset.names:
                    whole, sr = real_read(str(tmp_path / name), dtype="float32", always_2d=True)
                    whole = whole[:, 0] if mono == "first" else whole.mean(axis=1)
                    ref = torchaudio.functional.resample(torch.from_numpy(whole), sr, 16000).numpy() if sr != 16000 \
                        else whole
                    # Find the crop's start by correlation, then compare every sample.
                    start = int(np.argmax(np.correlate(ref, x - x.mean(), mode="valid")))
                    piece = ref[start:start + crop].astype(np.float64)
                    piece -= piece.mean()
                    piece *= 0.5 / np.abs(piece).max()
                    err = np.abs(piece - x).max()
                    best = err if best is None else min(best, err)
                assert best < (1e-6 if rate == 16000 else 1e-5), best
    crop_frames = crop * rate / 16000
    assert reads and all(b - a < crop_frames + 2048 for a, b in reads if a is not None), reads[:5]


def test_split_by_folder_keeps_every_folder_on_one_side(tmp_path):
    _tone_folder(tmp_path, 12, layout=lambda j: f"p{j % 4}/utt{j}.wav")
    for seed in range(4):
        data = _data(tmp_path, split_by="folder", seed=seed)
        train = {n.split("/")[0] for n in data.train_files.names}
        val = {n.split("/")[0] for n in data.val_files.names}
        assert train | val == {"p0", "p1", "p2", "p3"} and not train & val and len(val) == 1
        assert len(data.train_files) == 9 and len(data.val_files) == 3
    by_file = _data(tmp_path, split_by="file", seed=0)
    assert len(by_file.val_files) == 3 and len({n.split("/")[0] for n in by_file.val_files.names}) > 1
    with pytest.raises(GdrError, match="at least 2 folders"):
        _data(tmp_path / "p0", split_by="folder")


@pytest.mark.parametrize("make, needle", [
    (lambda p: p.write_bytes(b"RIFF not really a wav file" * 10), "not readable as audio"),
    (lambda p: sf.write(str(p), np.zeros(200, dtype=np.float32), 16000), "shorter than one frame"),
])
def test_an_unusable_file_stops_the_module_at_start_naming_it_in_one_line(tmp_path, capsys, make, needle):
    from gdr.cli import main_guard

    _tone_folder(tmp_path, 3)
    bad = tmp_path / "sub" / "bad.wav"
    bad.parent.mkdir()
    make(bad)
    assert main_guard(lambda: (_data(tmp_path), 0)[1]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and needle in err, err


def _one_file(root, name, train=True):
    """A CropDataset over the single file `name` under `root` (crop 0.32 s, identity task, seed 0)."""
    from gdr.datamodule import AudioFiles, read_headers

    names, infos, _ = read_headers(root, [root / name])
    data = _data(root)  # only for its crop length and degradation
    return CropDataset(AudioFiles(root, names, infos, "first"), data.crop, data.degradation, 0, 1, train)


def test_silent_crops_are_redrawn_and_a_silent_or_broken_file_is_named_when_read(tmp_path):
    _tone_folder(tmp_path, 2)
    t = np.arange(16000) / 16000
    half = np.where(t < 0.7, 0.0, 0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)  # 0.7 s digital silence
    sf.write(str(tmp_path / "half.wav"), half, 16000, subtype="FLOAT")
    train, val = _one_file(tmp_path, "half.wav"), _one_file(tmp_path, "half.wav", train=False)
    items = [train[i] for i in range(12)] + [val[0]]  # the centre crop (0.34 s .. 0.66 s) is all silence
    assert all(np.abs(item["x"].numpy()).max() > 0.49 for item in items)  # no silent crop, each normalised
    assert torch.equal(val[0]["x"], _one_file(tmp_path, "half.wav", train=False)[0]["x"])  # the re-draw is seeded
    for name, samples, needle in (("zeros.wav", np.zeros(16000, np.float32), "silent"),
                                  ("nan.wav", np.full(16000, np.nan, np.float32), "NaN or Inf")):
        sf.write(str(tmp_path / name), samples, 16000, subtype="FLOAT")
        with pytest.raises(GdrError, match=needle) as info:
            _one_file(tmp_path, name)[0]
        assert name in str(info.value) and "\n" not in str(info.value)


def test_file_lists_hold_the_split_relative_to_root_and_the_fingerprint_follows_the_training_list(tmp_path):
    from gdr.file_lists import read_file_list

    root = tmp_path / "data"
    names = _tone_folder(root, 6, layout=lambda j: f"spk{j % 2}/{j}.wav")
    data = _data(root)
    written = data.write_file_lists(tmp_path / "run")
    train = (tmp_path / "run" / "train.txt").read_text().splitlines()
    val = (tmp_path / "run" / "val.txt").read_text().splitlines()
    assert sorted(train + val) == sorted(names) and not set(train) & set(val) and len(val) >= 1
    assert written["train"] == str(tmp_path / "run" / "train.txt") and written["root"] == str(root)
    assert written["fingerprint"] == data.fingerprint and written["train_files"] == len(train)
    assert [p.relative_to(root).as_posix() for p in read_file_list(tmp_path / "run" / "val.txt", root)] == val
    # Independent reference: sha256 of the sorted "path<TAB>size" lines, 16 hex digits.
    lines = "".join(f"{n}\t{os.path.getsize(root / n)}\n" for n in sorted(train))
    assert data.fingerprint == hashlib.sha256(lines.encode()).hexdigest()[:16]
    # The same files elsewhere: same fingerprint. A training file changed, or one more file: another one.
    moved = tmp_path / "moved"
    _tone_folder(moved, 6, layout=lambda j: f"spk{j % 2}/{j}.wav")
    assert _data(moved).fingerprint == data.fingerprint
    _tone_folder(moved, 7, layout=lambda j: f"spk{j % 2}/{j}.wav")
    assert _data(moved).fingerprint != data.fingerprint
    sf.write(str(root / train[0]), 0.1 * np.sin(np.arange(20000)), 16000)  # same name, other size
    assert _data(root).train_files.names == data.train_files.names and _data(root).fingerprint != data.fingerprint


def test_evaluate_runs_on_exactly_the_held_out_list(tmp_path, capsys, tiny_dir):
    from test_evaluate_script import run_in_process

    root = tmp_path / "data"
    _tone_folder(root, 4, seconds=1.0, layout=lambda j: f"spk{j}/{j}.wav")
    data = _data(root)
    data.write_file_lists(tmp_path / "run")
    val = (tmp_path / "run" / "val.txt").read_text().splitlines()
    out = tmp_path / "out"
    proc = run_in_process(["--config", "configs/smoke.yaml", "--progress", "false", "--data.root", str(root),
                           "--data.files", str(tmp_path / "run" / "val.txt"), "--output_dir", str(out),
                           "--chunk.seconds", "0.64", "--chunk.overlap_seconds", "0.16", "--sampler.steps", "2",
                           "--logger", "false"], capsys)
    assert proc.returncode == 0, proc.stderr
    clips = Counter(row["clip"] for row in csv.DictReader((out / "metrics.csv").open()))
    assert sorted(clips) == sorted(name.removesuffix(".wav").replace("/", "__") for name in val)
    missing = tmp_path / "missing.txt"
    missing.write_text("spk0/0.wav\nspk9/nothing.wav\n")
    proc = run_in_process(["--config", "configs/smoke.yaml", "--data.root", str(root), "--data.files", str(missing),
                           "--output_dir", str(tmp_path / "out2")], capsys)
    assert proc.returncode == 1 and "missing.txt, line 2" in proc.stderr and proc.stderr.count("\n") == 1


def test_several_processes_without_lightnings_sharding_fail_in_one_line(tmp_path):
    """The sampler yields the whole epoch; without use_distributed_sampler every rank would train on all of it."""
    from types import SimpleNamespace

    _tone_folder(tmp_path, 4)
    data = _data(tmp_path)
    for world, shard, fails in ((2, False, True), (2, True, False), (1, False, False)):
        data.trainer = SimpleNamespace(world_size=world,
                                       _accelerator_connector=SimpleNamespace(use_distributed_sampler=shard))
        if fails:
            with pytest.raises(GdrError, match="use_distributed_sampler must be true"):
                data.train_dataloader()
        else:
            assert isinstance(data.train_dataloader().sampler, EpochSampler)
