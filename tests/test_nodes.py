"""A sweep sharded over nodes: ``torchrun`` with 2 nodes x 1 process on localhost (gloo), as README's multi-node
command runs it on two machines, writes the metrics.csv of the one-process run."""

import socket
import subprocess
import sys

import pytest
from conftest import ROOT
from test_sweep import _finish, _rows, _start, _without_timing, _write_config, assert_rows_close


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_with_torchrun_write_the_metrics_of_one_process(tmp_path, tiny_dir):
    config = _write_config(tmp_path)
    single, nodes = tmp_path / "single", tmp_path / "nodes"
    assert _finish(_start(config, single)) == 0
    port = _free_port()
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
              "--master-addr", "127.0.0.1", "--master-port", str(port)]
    args = [str(ROOT / "scripts" / "evaluate.py"), "--config", str(config), "--output_dir", str(nodes),
            "--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.accelerator", "cpu",
            "--trainer.strategy", "ddp"]
    procs = [subprocess.Popen([*launch, "--node-rank", str(rank), *args], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    results = [proc.communicate(timeout=1200) for proc in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err[-3000:]
    assert f"results written to {nodes}" in results[0][0]  # node 0's rank 0 writes the tables and the report
    assert "results written" not in results[1][0]
    a, b = _without_timing(_rows(single / "metrics.csv")), _without_timing(_rows(nodes / "metrics.csv"))
    assert len(a) == len(b) > 0
    # Each rank ran whole packs cut from the same list as the single process: the same batches, the same numbers.
    assert_rows_close(a, b)
    assert (nodes / "report.md").exists() and not list(nodes.rglob("*.tmp"))
