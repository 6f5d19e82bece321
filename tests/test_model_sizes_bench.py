"""bench/model_sizes.py runs (it broke silently once: no test ran it). Its cheapest row, SmallCap-causal on
GPT-2 base built on the meta device, goes through the same config, meta build and memory plan as every row."""

import re

from tests.conftest import load_bench


def _bench():
    return load_bench("model_sizes")


def _size(text):
    num, unit = re.fullmatch(r"([\d.]+) (B|kB|KB|MB|GB)", text).groups()
    return float(num) * {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9}[unit]


def test_model_sizes_bench_runs_its_cheapest_row(capsys):
    assert _bench().main(["--only", "smallcap"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| SmallCap")]
    assert len(rows) == 1, rows
    name, params, trained, mem, best, latest, full = [c.strip() for c in rows[0].strip("|").split("|")]
    assert params.endswith("B") and float(params[:-1]) >= 0.124  # GPT-2 base alone has 124.4M parameters
    assert trained.endswith("M") and 0 < float(trained[:-1]) * 1e6 < float(params[:-1]) * 1e9
    # only the trained tensors are kept by default; latest adds their AdamW state (2 float32 moments)
    assert _size(best) < _size(latest) < _size(full) < _size(mem)


def test_model_sizes_bench_refuses_an_unknown_row(capsys):
    assert _bench().main(["--only", "no such model"]) == 2
    assert "matches no row" in capsys.readouterr().err
