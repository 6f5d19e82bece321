"""bench/gpu_smoke.py: on a machine without CUDA it measures nothing and says so in one line; an explicit
``--device cuda`` there is refused in one line; ``--tiny --device cpu`` runs every timed path (CE, SCST, beam)."""

import pytest
import torch

from tests.conftest import load_bench


@pytest.fixture
def bench():
    return load_bench("gpu_smoke")


@pytest.fixture
def no_cuda(monkeypatch, bench):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    real = bench.build

    def build(tiny, device):
        assert tiny, "the full-size model must not be built without a GPU (16 GB of float32 on the CPU)"
        return real(tiny, device)

    monkeypatch.setattr(bench, "build", build)


def test_without_cuda_it_says_so_in_one_line_and_measures_nothing(bench, no_cuda, capsys):
    assert bench.main([]) == 0
    out = capsys.readouterr()
    assert out.out.strip().count("\n") == 0 and "no CUDA device" in out.out and "nothing measured" in out.out


def test_device_cuda_without_cuda_is_refused_in_one_line(bench, no_cuda, capsys):
    assert bench.main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no CUDA device" in err


def test_tiny_cpu_runs_every_timed_path(bench, no_cuda, capsys):
    assert bench.main(["--tiny", "--device", "cpu", "--batch-sizes", "2", "--steps", "1", "--warmup", "0", "--max-len", "4"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 2 |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    for rate in (cells[1], cells[3], cells[5]):  # CE steps/s, SCST steps/s, beam-5 images/s
        assert float(rate) > 0
