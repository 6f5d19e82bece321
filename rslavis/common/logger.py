"""Console logging and the per-run ``log.jsonl`` / TensorBoard writer."""

import json
import logging
import os
import sys
from pathlib import Path


def setup_logging(rank=0, level=logging.INFO):
    """Log to stderr; only rank 0 logs below WARNING, so N processes do not print N copies."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level if rank == 0 else logging.WARNING)
    for noisy in ("httpx", "urllib3", "filelock", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class RunLogger:
    """Appends one JSON object per log step to ``log.jsonl`` and mirrors scalars to TensorBoard."""

    def __init__(self, output_dir, enabled=True):
        self.enabled = enabled
        self.path = Path(output_dir) / "log.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))
            except ImportError:
                logging.getLogger(__name__).warning("tensorboard is not installed: no event files are written.")

    def log(self, record, step=None, prefix="train"):
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None and step is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch", "step"):
                    self.tb.add_scalar(f"{prefix}/{k}", v, step)
            self.tb.flush()

    def offset(self):
        """Bytes of ``log.jsonl`` written so far (stored in checkpoints: a resume cuts the log back to it)."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def truncate(self, offset=0):
        """Cut ``log.jsonl`` to its first ``offset`` bytes: the records after a resumed checkpoint, or of an
        earlier attempt, must not be counted (or plotted) twice."""
        if not self.enabled or not self.path.exists():
            return
        if self.path.stat().st_size > offset:
            os.truncate(self.path, offset)

    def truncate_to_step(self, step, epoch):
        """Keep only the records up to ``step`` of epochs <= ``epoch`` (checkpoints without a log offset)."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line torn by a kill
                continue
            if rec.get("step", 0) <= step and rec.get("epoch", 0) <= epoch:
                kept.append(line + "\n")
        from rslavis.common.checkpoint import atomic_write_text

        atomic_write_text("".join(kept), self.path)

    def close(self):
        if self.tb is not None:
            self.tb.close()


def progress(iterable=None, **kwargs):
    """A tqdm bar; redrawn at most every 10 s when stderr is not a terminal (CI logs stay short)."""
    from tqdm import tqdm

    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", 10.0)
    return tqdm(iterable, **kwargs)
