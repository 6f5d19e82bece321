"""Import cost of rslavis against transformers, each in fresh interpreters.

    python bench/import_time.py [--repeat 5]

Prints the median wall time of ``import rslavis; rslavis.registry.list_models()`` and
of ``import transformers`` (the yardstick) and their ratio. Goal: under one third.
"""

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(code, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    base = timed("pass", args.repeat)  # interpreter start-up, subtracted from both
    ours = timed("import rslavis; rslavis.registry.list_models()", args.repeat) - base
    theirs = timed("import transformers", args.repeat) - base
    print(f"interpreter start-up           {base * 1000:8.1f} ms (subtracted)")
    print(f"import rslavis + list_models() {ours * 1000:8.1f} ms")
    print(f"import transformers            {theirs * 1000:8.1f} ms")
    print(f"ratio rslavis / transformers   {ours / theirs:8.3f}  (goal < 0.333)")


if __name__ == "__main__":
    main()
