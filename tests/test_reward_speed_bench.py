"""bench/reward_speed.py: the printed columns are medians over ``--repeat`` processes, every run's
rate and machine speed (``ref ms``) are listed, and a small run on real RSICD captions prints both
object rewards with their spread."""

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, load_bench


@pytest.fixture
def bench():
    return load_bench("reward_speed")


def test_median_run_takes_each_column_median_and_the_median_runs_note(bench):
    runs = [{"name": "count", "warm_cpu": w, "cold": c, "ref_ms": m, "note": f"run {i}"}
            for i, (w, c, m) in enumerate([(300.0, 1.0, 20.0), (100.0, 5.0, 30.0), (200.0, 3.0, 10.0)])]
    out = bench.median_run(runs)
    assert (out["warm_cpu"], out["cold"], out["ref_ms"]) == (200.0, 3.0, 20.0)
    assert out["note"] == "run 2" and out["name"] == "count"  # the note of the run whose warm rate is the median


def test_machine_ms_times_the_reference_loop(bench, monkeypatch):
    calls = {}

    def fake_repeat(stmt, number, repeat):
        calls.update(stmt=stmt, number=number, repeat=repeat)
        return [0.03, 0.02, 0.025]

    monkeypatch.setattr(bench.timeit, "repeat", fake_repeat)
    assert bench.machine_ms() == pytest.approx(20.0)  # the best of the repeats, in ms
    assert calls == {"stmt": "sum(range(10**6))", "number": 1, "repeat": 5}


def test_small_run_prints_medians_and_every_run(shared_data):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "reward_speed.py"), "--n", "60", "--repeat", "2",
                          "--parser", "rules", "--only", "count", "length", "--data", str(shared_data)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "medians of 2 runs" in out.stdout
    row = next(line for line in out.stdout.splitlines() if line.startswith("count "))
    every = next(line for line in out.stdout.splitlines() if "every run, warm CPU:" in line)
    warm = [float(x) for x in re.findall(r"(\d+) at \d+ ms", every)]
    seen = [float(x) for x in every.split("refs seen CPU:")[1].split(",")]
    assert len(warm) == 2 and len(seen) == 2
    cols = row.split("(")[0].split()
    # count, cold, warm, cold cpu, warm cpu, refs cpu, ref ms: the warm CPU column is the median of the two runs
    assert float(cols[4]) == pytest.approx(sum(warm) / 2, abs=1.0)
    assert float(cols[5]) == pytest.approx(sum(seen) / 2, abs=1.0)
    assert re.search(r"^length\s+\d+", out.stdout, re.M)


def test_repeat_below_one_is_refused():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "reward_speed.py"), "--repeat", "0"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--repeat must be at least 1, got 0" in out.stderr
