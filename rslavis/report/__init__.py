"""Evaluation report of a run: one self-contained HTML page, and two runs side by side.

    python -m rslavis.report RUN_DIR [--out report.html]
    python -m rslavis.report RUN_A RUN_B [--out compare.html]

The page holds the run's key config and environment, a metrics table per split
(pycocoevalcap metrics, SDE, oversight and hallucination rates, count errors; VQA
accuracy by question type), training curves (matplotlib, Agg) and a gallery of test
images with the generated caption, the references and the objects marked matched,
missed or hallucinated. References and images come from rebuilding the run's datasets
from its ``config.yaml``; without them the page has no gallery (one warning).
Everything is embedded (``data:`` images, inline style and script): the page makes no
request and can be mailed or moved as one file. The runner writes ``report.html`` into
the run folder at the end of training or evaluation (``RSLAVIS_REPORT=0`` turns it off).
matplotlib, the parser and the datasets load only when a report is written.
"""

from pathlib import Path

DEFAULT_MAX_IMAGES = 48


def write_report(run_dir, out=None, datasets=None, parser=None, max_images=DEFAULT_MAX_IMAGES, device=None):
    """Write the report of ``run_dir`` to ``out`` (default ``run_dir/report.html``); return its path.

    ``datasets``: the run's ``{dataset_name: {split: Dataset}}`` when already built (the
    runner passes its own), else rebuilt from ``config.yaml``. ``parser``: caption parser
    name or mapping for the object analysis (default: the default parser).
    """
    from rslavis.common.checkpoint import atomic_write_text
    from rslavis.report.page import render
    from rslavis.report.run import RunData

    run = RunData(run_dir)
    out = Path(out) if out is not None else run.run_dir / "report.html"
    text = render(run, datasets=datasets, parser=parser, max_images=max_images, device=device)
    return _write(text, out, atomic_write_text)


def write_comparison(run_a, run_b, out=None, parser=None, max_images=DEFAULT_MAX_IMAGES):
    """Write the comparison page of two runs (default ``run_a/compare_<name of b>.html``); return its path."""
    from rslavis.common.checkpoint import atomic_write_text
    from rslavis.report.compare import render
    from rslavis.report.run import RunData

    a, b = RunData(run_a), RunData(run_b)
    out = Path(out) if out is not None else a.run_dir / f"compare_{b.name}.html"
    text = render(a, b, parser=parser, max_images=max_images)
    return _write(text, out, atomic_write_text)


def _write(text, out, atomic_write_text):
    import os

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(text, out)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out, 0o666 & ~umask)  # the temporary file behind the atomic write is private; a page is for sharing
    return out


__all__ = ["write_report", "write_comparison"]
