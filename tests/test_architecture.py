"""The layer rules of ARCHITECTURE.md: every package imports only the layers below it.

Two checks: a static scan of every ``import`` in ``rslavis/`` (function-level imports
included, so a lazy import cannot hide an upward arrow), and, per layer, a fresh
interpreter that imports each of its modules and looks at what came with them.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "rslavis"

# rank of each top-level part of rslavis (a package, or a module like train.py): lower is more basic
LAYERS = {
    "common": 0,
    "text": 1,
    "processors": 1,
    "metrics": 2,
    "rewards": 2,
    "datasets": 3,
    "retrieval": 4,
    "models": 5,
    "tasks": 6,
    "report": 6,
    "runners": 7,
}
ENTRY_RANK = 8  # rslavis/__init__.py, train.py, evaluate.py, caption.py, curate.py, baselines.py, ...

# arrows forbidden even where the ranks would allow them
FORBIDDEN = {
    "models": {"datasets", "tasks", "runners", "report"},  # a model receives its data from the task
    "rewards": {"models"},
    "metrics": {"models"},
    "common": set(LAYERS) - {"common"},
}


def part_of(module):
    """Top-level part of ``rslavis.X...`` (``None`` for ``rslavis`` itself)."""
    bits = module.split(".")
    return bits[1] if len(bits) > 1 and bits[0] == "rslavis" else None


def rank(part):
    return LAYERS.get(part, ENTRY_RANK)


def file_part(path):
    rel = path.relative_to(PKG).parts
    return rel[0][:-3] if len(rel) == 1 else rel[0]


def imports_of(path):
    """``(line, module)`` of every absolute rslavis import in ``path``, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return [(line, m) for line, m in out if m == "rslavis" or m.startswith("rslavis.")]


def violations(src, dst):
    if dst is None or dst == src:
        return False
    return dst in FORBIDDEN.get(src, ()) or rank(dst) > rank(src)


def scan():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        src = file_part(path)
        for line, module in imports_of(path):
            if violations(src, part_of(module)):
                bad.append(f"{path.relative_to(ROOT)}:{line} ({src}) imports {module}")
    return bad


def test_no_import_points_upward():
    bad = scan()
    assert not bad, "imports against the layer order of ARCHITECTURE.md:\n" + "\n".join(bad)


def test_the_scan_sees_an_upward_import(tmp_path):
    # the checker itself: an upward arrow, even inside a function, is reported
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from rslavis.tasks.captioning import CaptionTask\n")
    assert imports_of(src) == [(2, "rslavis.tasks.captioning")]
    assert violations("models", "tasks") and violations("rewards", "models") and violations("common", "text")
    assert not violations("tasks", "models") and not violations("models", "retrieval")


PROBE = """
import importlib, json, pkgutil, sys
import rslavis
layer = sys.argv[1]
pkg = importlib.import_module("rslavis." + layer)
names = [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": names, "loaded": sorted(m for m in sys.modules if m.startswith("rslavis."))}))
"""


@pytest.mark.parametrize("layer", ["common", "text", "metrics", "rewards", "datasets", "retrieval", "models"])
def test_importing_a_layer_loads_nothing_above_it(layer):
    out = subprocess.run([sys.executable, "-c", PROBE, layer], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["modules"], f"no modules found under rslavis/{layer}"
    above = [m for m in report["loaded"] if violations(layer, part_of(m))]
    assert not above, f"importing rslavis.{layer} loads {above}"
