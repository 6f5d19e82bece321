"""bench/hallucination_profile.py: the phase table of the bench's own training loop, for the plan asked for,
and the torch-op table (``--ops``)."""

import re

from tests.conftest import ROOT, run_python


def test_profile_reports_phases_step_cost_and_ops_for_the_plan_asked(tmp_path):
    out = run_python([str(ROOT / "bench" / "hallucination_profile.py"), "--tiny", "--encoder", "random", "--work", str(tmp_path / "w"),
                      "--plan", "v6", "--arms", "none+rag", "--epochs", "1", "--ops", "5"], timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "TINY RUN" in text
    # the tiny sizes (40 training images, batch 32: one step) under v6's name: the plan given is the one profiled
    assert "plan v6, arm none+rag: 1 epochs of 1 steps (40 training images)" in text
    for phase in ("backward", "optimizer step", "validation generate", "validation CIDEr", "prompts (retrieved captions)"):
        assert phase in text, phase
    step = re.search(r"training step \(forward\+backward\+optimizer step\)\s+([0-9.]+) CPU s a step", text)
    assert step and float(step.group(1)) > 0
    # the op table: torch.profiler's header and the matrix products a decoder step cannot avoid
    assert "torch ops with the most self CPU time" in text and "Self CPU" in text
    assert re.search(r"aten::(mm|addmm|bmm|linear)", text)
