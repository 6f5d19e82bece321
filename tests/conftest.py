"""Shared fixtures. Hub look-ups are disabled so a stray download fails fast."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# training runs in tests skip the end-of-run HTML report (seconds of parser and matplotlib
# start-up each); tests/test_report_e2e.py turns it on
os.environ.setdefault("RSLAVIS_REPORT", "0")

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()


def load_bench(name):
    """The module ``bench/<name>.py`` loaded from its file (``bench/`` is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def shared_data():
    """Path of ../shared/data (real annotations); skips the test when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it is present in CI)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def root():
    return ROOT


@pytest.fixture
def fresh_registry():
    """A private registry with the built-in index, so tests can register freely."""
    from rslavis.common.registry import Registry

    return Registry()


def run_python(args, cwd=None, env=None, timeout=600):
    """Run ``python args...`` in a subprocess with the test environment; return CompletedProcess."""
    import subprocess

    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.update(env or {})
    return subprocess.run([sys.executable, *args], cwd=cwd or ROOT, env=e, capture_output=True, text=True, timeout=timeout)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test of a minute or more; part of the suite (deselect with -m 'not slow')")
