"""Build a project's retrieval datastore and retrieved captions alone: ``python -m rslavis.retrieval --cfg-path X``.

Builds the datasets and the model of the project (seeded as ``python -m rslavis.train``
seeds them, so a later training run finds and reuses the same files), encodes the
images with the model's retrieval encoder (progress bars), writes the datastore and
``retrieved_captions.json`` under ``model.retrieval.cache_dir`` and prints their
folders as JSON. Errors print one line and exit 2.
"""

import argparse
import json
import sys

from rslavis.common.errors import ConfigError


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m rslavis.retrieval", description=__doc__.split("\n")[0])
    p.add_argument("--cfg-path", required=True, help="project YAML (model with retrieval settings, datasets)")
    p.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE", help="override config keys")
    p.add_argument("--device", default=None, help="default: run.device, else cpu")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    from rslavis.common.cli import run_cli

    return run_cli(run, args)


def run(args):
    from rslavis.common import dist_utils
    from rslavis.common.checkpoint import seed_everything
    from rslavis.common.config import Config
    from rslavis.common.registry import registry

    cfg = Config.from_file(args.cfg_path, args.options)
    device = dist_utils.resolve_device(args.device or cfg.run.get("device"))
    seed_everything(int(cfg.run.seed))  # as rslavis.train: the same initial (retrieval) encoder
    task = registry.get_task_class(cfg.run.task).setup_task(cfg)
    datasets = task.build_datasets(cfg)
    model = task.build_model(cfg)
    if not hasattr(model, "build_retrieval"):
        raise ConfigError(f"{args.cfg_path}: model.arch {cfg.model.arch!r} has no retrieval datastore (use smallcap_causal).")
    if getattr(model, "disable_rag", False):
        raise ConfigError(f"{args.cfg_path}: model.disable_rag is true; there is nothing to retrieve.")
    model.to(device)
    built = model.build_retrieval(datasets)
    print(json.dumps({name: {"folder": str(r["folder"]), "datastore_images": len(r["datastore"]), "retrieved_images": len(r["retrieved"])} for name, r in built.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
