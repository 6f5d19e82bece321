"""Train (or evaluate) from a project YAML.

    python -m rslavis.train --cfg-path projects/smallcap/synthetic_demo.yaml [--options run.max_epoch=3 ...]
    torchrun --nproc_per_node=2 -m rslavis.train --cfg-path ...

Bad input prints one line naming the file, key or value and exits 2 (``--debug`` shows
the traceback).
"""

import argparse
import datetime
import json
import logging
import os
import sys
from pathlib import Path

from rslavis.common.errors import RslavisError

logger = logging.getLogger("rslavis.train")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m rslavis.train", description=__doc__.split("\n")[0])
    p.add_argument("--cfg-path", required=True, help="project YAML (sections model, datasets, run)")
    p.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys, e.g. run.max_epoch=3")
    p.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    p.add_argument("--dry-run", action="store_true", help="build the model on the meta device (no weights read) and print parameters, checkpoint size and memory; exit")
    p.add_argument("--resume", default=None, metavar="auto|PATH", help="resume from a checkpoint; 'auto' picks the latest in the output dir")
    p.add_argument("--lenient", action="store_true", help="unknown sections and keys warn (one line each, listing them) instead of failing; for files written for other LAVIS forks")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p.parse_args(argv)


def find_latest_checkpoint(output_dir, job_id=None):
    """``(job_id, path)`` of the newest ``checkpoint_latest.pth`` under ``output_dir``."""
    root = Path(output_dir)
    pattern = f"{job_id}/checkpoint_latest.pth" if job_id else "*/checkpoint_latest.pth"
    found = sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        where = root / job_id if job_id else root
        raise RslavisError(f"--resume auto: no checkpoint_latest.pth under {where}; start without --resume or set run.output_dir.")
    return found[-1].parent.name, found[-1]


def main(argv=None):
    from rslavis.common.cli import run_cli

    return run_cli(run, parse_args(argv), rank=int(os.environ.get("RANK", 0)))


def run(args):
    from rslavis.common.config import Config

    cfg = Config.from_file(args.cfg_path, args.options, lenient=args.lenient)
    if args.print_config:
        print(cfg.to_yaml())
        return 0

    if args.dry_run:
        return dry_run(cfg)

    from rslavis.common import dist_utils
    from rslavis.common.registry import registry

    device = dist_utils.resolve_device(cfg.run.get("device"))
    dist_utils.init_distributed_mode(cfg.run, device)
    job_id = cfg.run.get("job_id")
    if args.resume:
        if args.resume == "auto":
            job_id, path = find_latest_checkpoint(cfg.run.output_dir, job_id)
        else:
            path = Path(args.resume)
        cfg.config.run.resume_ckpt_path = str(path)
    if not job_id:
        job_id = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
    job_id = dist_utils.broadcast_object(job_id)
    cfg.config.run.job_id = job_id

    from rslavis.common.checkpoint import seed_everything

    seed_everything(int(cfg.run.seed) + dist_utils.get_rank())  # model initialisation is reproducible
    task = registry.get_task_class(cfg.run.task).setup_task(cfg)
    with dist_utils.main_process_first():  # rank 0 writes dataset caches once
        datasets = task.build_datasets(cfg)
    model = task.build_model(cfg)
    runner_cls = registry.get_runner_class(cfg.run.get("runner") or "runner_base")
    runner = runner_cls(cfg, task, model, datasets, job_id)
    is_main = dist_utils.is_main_process()
    try:
        metrics = runner.train()
    finally:
        runner.close()
        dist_utils.destroy()
    if is_main:
        print(json.dumps({"output_dir": str(runner.output_dir), "test": metrics}, indent=2))
    return 0


def dry_run(cfg):
    """Print what the configured run costs (``rslavis.runners.plan``); reads no weights and no data."""
    from rslavis.models.meta import build_model_on_meta
    from rslavis.runners.plan import format_plan, memory_plan

    model, notes = build_model_on_meta(cfg)
    print(format_plan(memory_plan(model, cfg.run), notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
