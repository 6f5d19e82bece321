"""Caption a folder of images with a trained model: ``python -m rslavis.caption --checkpoint DIR --images FOLDER``.

``DIR`` is either a run folder written by ``python -m rslavis.train`` (``config.yaml``,
``checkpoint_best.pth`` or ``checkpoint_latest.pth``, ``tokenizer/``, and for
``smallcap_causal`` the retrieval datastore in ``retrieval/``), a checkpoint file inside
one, or a folder written by a model's ``save_pretrained`` (``config.json``). Images
(``.tif .tiff .jpg .jpeg .png``, ``--recursive`` for sub-folders) are read as 8-bit RGB
(:mod:`rslavis.datasets.image_io`), preprocessed like the run's eval split, and
captioned in batches with a progress bar; a model with a retrieval datastore prompts
each image with the captions retrieved for it. Unreadable images are reported on
stderr and skipped.

Output: a JSON list ``[{"image_id", "file", "caption"}]`` (``image_id``: the path
relative to FOLDER without extension, so the file scores with ``python -m
rslavis.evaluate``), written to ``--out`` or printed. Errors print one line, exit 2.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from rslavis.common.errors import ConfigError, DataError

logger = logging.getLogger("rslavis.caption")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m rslavis.caption", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="run folder, checkpoint .pth in one, or a save_pretrained folder")
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--out", default=None, help="JSON file to write (default: print to stdout)")
    p.add_argument("--recursive", action="store_true", help="also caption images in sub-folders")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-len", type=int, default=None, help="default: the run's run.max_len, else 30")
    p.add_argument("--min-len", type=int, default=None)
    p.add_argument("--num-beams", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p.parse_args(argv)


def list_images(folder, recursive=False):
    from rslavis.datasets.image_io import IMAGE_EXTENSIONS

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"--images {folder}: not a folder.")
    files = root.rglob("*") if recursive else root.iterdir()
    found = sorted(p for p in files if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not found:
        raise DataError(f"--images {folder}: no images (.tif .tiff .jpg .jpeg .png){' in it or its sub-folders' if recursive else ''}.")
    ids = {}
    for p in found:  # the id drops the extension: a.png and a.jpg would be scored as one image
        i = str(p.relative_to(root).with_suffix(""))
        if i in ids:
            raise DataError(f"--images {folder}: {ids[i].name} and {p.name} would both get image_id {i!r}; rename or move one of them.")
        ids[i] = p
    return root, found


def load_model(checkpoint, device="cpu"):
    """``(model, run config or None, run folder)`` from any of the accepted ``--checkpoint`` forms
    (:func:`rslavis.models.loading.load_model`), in eval mode on ``device``."""
    import torch

    from rslavis.models.loading import load_model as load

    path = Path(checkpoint).expanduser()
    if not (path.is_dir() or (path.is_file() and path.suffix == ".pth")):
        raise ConfigError(f"--checkpoint {checkpoint}: no such folder or .pth file.")
    model, cfg, run_dir = load(path, option="--checkpoint")
    return model.to(torch.device(device)).eval(), cfg, run_dir


def image_processor(model, cfg):
    """The run's eval image processor (first dataset), else one at the model's image size."""
    from rslavis.common.registry import registry

    if cfg is not None and cfg.get("datasets"):
        for dcfg in cfg.datasets.values():
            pcfg = (dcfg.get("vis_processor") or {}).get("eval")
            if pcfg is not None:
                return registry.get_processor_class(pcfg["name"]).from_config(pcfg)
    if hasattr(model, "default_image_processor"):
        return model.default_image_processor()
    from rslavis.processors.image_processors import RSImageEvalProcessor

    return RSImageEvalProcessor(image_size=224)


def caption_images(model, files, root, processor, batch_size=16, generate_kwargs=None, progress=True):
    """``(results, skipped)``: captions of the readable images, and ``[(file, reason)]`` of the others."""
    import torch

    from rslavis.common.logger import progress as bar
    from rslavis.datasets.image_io import load_image

    results, skipped = [], []
    device = model.device
    for start in bar(range(0, len(files), batch_size), desc="captioning", disable=not progress, total=(len(files) + batch_size - 1) // batch_size):
        batch, names = [], []
        for f in files[start : start + batch_size]:
            try:
                batch.append(processor(load_image(f)))
                names.append(f)
            except DataError as exc:
                skipped.append((str(f), str(exc)))
                print(f"rslavis: skipping {f}: {exc}", file=sys.stderr)
        if not batch:
            continue
        samples = {"image": torch.stack(batch).to(device), "text_input": [""] * len(batch)}
        with torch.no_grad():
            captions = model.generate(samples, **(generate_kwargs or {}))
        for f, c in zip(names, captions):
            rel = f.relative_to(root)
            results.append({"image_id": str(rel.with_suffix("")), "file": str(rel), "caption": c})
    return results, skipped


def main(argv=None):
    args = parse_args(argv)
    from rslavis.common.cli import run_cli

    return run_cli(run, args)


def run(args):
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root, files = list_images(args.images, args.recursive)
    model, cfg, _ = load_model(args.checkpoint, args.device)
    from rslavis.tasks.generation import generation_settings

    run_cfg = dict(cfg.get("run", {}) if cfg is not None else {})
    given = {"max_len": args.max_len, "min_len": args.min_len, "num_beams": args.num_beams}
    run_cfg.update({k: v for k, v in given.items() if v is not None})  # the command line wins over the run's settings
    gen = generation_settings(run_cfg)
    results, skipped = caption_images(model, files, root, image_processor(model, cfg), args.batch_size, gen)
    if not results:
        raise DataError(f"--images {args.images}: none of its {len(files)} images could be read (first: {skipped[0][1]}); nothing was captioned.")
    text = json.dumps(results, indent=2)
    if args.out:
        from rslavis.common.checkpoint import atomic_write_text

        atomic_write_text(text + "\n", Path(args.out))
    else:
        print(text)
    retrieval = " with retrieval prompts" if getattr(model, "datastore", None) is not None else ""
    print(f"rslavis: captioned {len(results)} images{retrieval}, skipped {len(skipped)} unreadable{' -> ' + args.out if args.out else ''}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
