"""What the CUDA path needs, shown on a CPU with torch.cuda's functions replaced by fakes: every forward ends
with a device sync before any clock is read (stopped forwards too), the GPU a rank picks is made current, and
ranks that share one GPU are named at start-up and in the summary table (their si and dsi are a functional
check only)."""

import json

import pytest
import torch
from helpers import zero_latency_emulation

from dsi_mpi.backends.base import ModelRunner
from dsi_mpi.backends.emulated import EmulatedAcceptanceRunner
from dsi_mpi.backends.loading import gpu_identity, pick_device
from dsi_mpi.reporting.metrics import rank_table, shared_gpus
from dsi_mpi.reporting.report import summary_table


class Stop(Exception):
    pass


class QueuedRunner(ModelRunner):
    """A runner whose forwards, like CUDA calls, return before the device is done: `log` shows the order."""

    n_layers = 2

    def __init__(self, log: list):
        super().__init__()
        self.log = log
        self.device = torch.device("cuda", 1)

    def _forward(self, tokens, n_out):
        for _ in range(self.n_layers):
            if self._layer_callback is not None:
                self._layer_callback()
            self.log.append("layer queued")
        return n_out

    def _crop(self, length):
        self.log.append("crop")


@pytest.fixture
def fake_sync(monkeypatch):
    log = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append(f"sync {device}"))
    return log


def test_every_forward_ends_with_a_sync_of_its_device(fake_sync):
    runner = QueuedRunner(fake_sync)
    runner.forward([1, 2], 1)
    assert fake_sync == ["layer queued", "layer queued", "sync cuda:1"]
    fake_sync.clear()

    def stop_at_second_layer():
        if fake_sync.count("layer queued") == 1:
            raise Stop

    runner.set_layer_callback(stop_at_second_layer)
    with pytest.raises(Stop):  # a verifier stamps ABORTED's end only after this returns
        runner.forward([3], 1)
    assert fake_sync == ["layer queued", "crop", "sync cuda:1"]


def test_emulated_acceptance_syncs_the_real_forward(fake_sync):
    runner = EmulatedAcceptanceRunner("target", zero_latency_emulation(), 0, QueuedRunner(fake_sync))
    runner.greedy([1, 2, 3], 2)
    assert fake_sync[:3] == ["layer queued", "layer queued", "sync cuda:1"]  # before the emulated tokens exist


def test_no_sync_off_cuda(fake_sync):
    runner = QueuedRunner(fake_sync)
    runner.device = torch.device("cpu")
    runner.forward([1], 1)
    del runner.device  # LATENCY EMULATION runners have none
    runner.forward([2], 1)
    assert "sync" not in " ".join(fake_sync)


def test_pick_device_makes_the_gpu_current(monkeypatch):
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: current.append(str(device)))
    assert [str(pick_device("cuda", r)) for r in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    assert current == ["cuda:0", "cuda:1", "cuda:0"]
    assert str(pick_device("cpu", 5)) == "cpu" and len(current) == 3
    assert gpu_identity(torch.device("cpu")) == "" and gpu_identity(None) == ""


def test_ranks_sharing_a_gpu_are_found_by_the_physical_gpu():
    ranks = [
        {"rank": 0, "host": "a", "gpu": "H100 GPU-1"},
        {"rank": 1, "host": "a", "gpu": "H100 GPU-2"},  # its own GPU, also called cuda:0 under CUDA_VISIBLE_DEVICES
        {"rank": 2, "host": "a", "gpu": "H100 GPU-1"},
        {"rank": 3, "host": "b", "gpu": "H100 GPU-1"},  # another node
        {"rank": 4, "host": "b"},  # no GPU
    ]
    assert shared_gpus(ranks) == [{"host": "a", "gpu": "H100 GPU-1", "ranks": [0, 2]}]
    assert shared_gpus(ranks[:2]) == [] and rank_table({}) == [] and rank_table({"ranks": "not json"}) == []


def test_the_summary_table_says_what_its_figures_stand_on():
    """Shared GPU: si and dsi marked as a functional check; a compiled backend that fell back: named, with why."""
    from dsi_mpi.io.records import RunRecord

    times = {"tokens": [1, 2, 3], "commit_times": [0.1, 0.2, 0.3], "wall_s": 0.3, "ttft_s": 0.1}
    records = [RunRecord(a, 0, "p", **times).as_dict() for a in ("nonsi", "si", "dsi")]
    ranks = [{"rank": r, "host": "h", "gpu": "NVIDIA H200 GPU-9"} for r in range(3)]
    backends = [{"rank": 0, "role": "drafter+coordinator", "backend": "compiled"}]
    backends += [{"rank": 1, "role": "target verifier", "backend": "eager", "fallback": "RuntimeError: no graph"}]
    meta = {"ranks": json.dumps(ranks), "backends": json.dumps(backends)}
    lines = summary_table(records, meta).splitlines()
    names = [line.split()[0] for line in lines[2:5]]
    assert names == ["nonsi", "si*", "dsi*"]
    assert any("rank 1 (target verifier) ran EAGER" in line and "RuntimeError: no graph" in line for line in lines)
    assert any(line.startswith("* FUNCTIONAL CHECK") and "ranks 0, 1, 2" in line for line in lines)
    plain = summary_table(records, {"ranks": json.dumps([{"rank": r, "host": "h"} for r in range(3)])})
    assert "*" not in plain and "EAGER" not in plain


def test_the_hbm_floor_knows_the_sxm_h100_by_its_name(monkeypatch):
    """nvidia-smi calls the SXM H100 "NVIDIA H100 80GB HBM3": 3.35 TB/s, not the PCIe part's 2.0 (a floor 1.7x
    too slow); an H100 the table does not know gets no floor rather than a wrong one."""
    from analysis.gpu_check import bandwidth

    assert bandwidth("NVIDIA H100 80GB HBM3") == 3.35e12
    assert bandwidth("NVIDIA H100 PCIe") == 2.0e12 and bandwidth("NVIDIA H100 NVL") == 3.9e12
    assert bandwidth("NVIDIA H200") == 4.8e12 and bandwidth("NVIDIA A100-SXM4-80GB") == 2.0e12
    assert bandwidth("NVIDIA H100 94GB HBM2e") is None and bandwidth("") is None
