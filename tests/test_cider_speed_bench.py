"""bench/cider_speed.py: each timed call starts from a collected heap (a full collection another side made
due does not land in it) and the full collections inside a timed call are counted; a small run on real
RSICD captions prints both sides and equal scores."""

import gc
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, load_bench

DATA = ROOT / ".." / "shared" / "data"


@pytest.fixture
def bench():
    pytest.importorskip("pycocoevalcap")
    return load_bench("cider_speed")


def test_timed_call_starts_from_a_collected_heap(bench):
    for _ in range(3):  # make the older generations due: each young collection counts in the next one
        gc.collect(0)
        gc.collect(1)
    assert gc.get_count()[1] + gc.get_count()[2] > 0
    _, counts = bench.timed(gc.get_count)
    # after gc.collect() every generation's count is zero; only the timer's few allocations are young
    assert counts[1] == 0 and counts[2] == 0 and counts[0] < 50, counts


def test_timed_counts_the_full_collections_inside_the_call(bench):
    gc.callbacks.append(bench._count_full)
    try:
        bench.timed(lambda: None)
        assert bench.timed.full_gc == 0
        bench.timed(lambda: (gc.collect(), gc.collect()))
        assert bench.timed.full_gc == 2
        bench.timed(lambda: gc.collect(1))  # a young collection is not a full one
        assert bench.timed.full_gc == 0
    finally:
        gc.callbacks.remove(bench._count_full)


@pytest.mark.skipif(not (DATA / "rsicd" / "DERIVED_dataset_rsicd_karpathy.json").exists(),
                    reason="RSICD annotations not in ../shared/data")
def test_small_run_prints_both_sides_and_equal_scores(bench):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "cider_speed.py"), "--n", "200", "--repeats", "1"],
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    assert re.search(r"full garbage collections inside the timed calls \(3 calls a side.*\): pycocoevalcap \d+, "
                     r"raw text \d+, same PTB tokens \d+", out.stdout), out.stdout
    assert "pycocoevalcap compute_score: first" in out.stdout
    diffs = [float(x) for x in re.findall(r"largest \|difference\| ([0-9.e+-]+) over 3 calls", out.stdout)]
    assert len(diffs) == 2 and max(diffs) < 1e-9, out.stdout
