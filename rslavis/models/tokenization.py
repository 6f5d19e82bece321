"""Tokenizers: a local pretrained one, or one trained on the training captions.

Offline, no hub tokenizer can be fetched, so tiny models train a word-level tokenizer
with the ``tokenizers`` library on the training split and save it beside the
checkpoint; real checkpoints load theirs from a local directory.
"""

from pathlib import Path

from rslavis.common.errors import ConfigError

SPECIAL_TOKENS = {"pad_token": "[PAD]", "bos_token": "[BOS]", "eos_token": "[EOS]", "unk_token": "[UNK]"}


def train_caption_tokenizer(captions, vocab_size=2000, min_frequency=1):
    """A lower-casing word-level tokenizer (punctuation split off) fitted to ``captions``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS.values()), show_progress=False
    )
    # sorted: the vocabulary must not depend on the order captions arrive in
    tok.train_from_iterator(sorted(captions), trainer=trainer)
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def load_tokenizer(path, option="model.tokenizer_path"):
    """Load a tokenizer saved with ``save_pretrained`` from a local directory."""
    p = Path(str(path)).expanduser()
    if not p.is_dir():
        raise ConfigError(f"{option}: tokenizer directory not found: {p} (a local directory written by save_pretrained).")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    for key, value in SPECIAL_TOKENS.items():
        if getattr(tok, key, None) is None:
            if key == "pad_token" and tok.eos_token is not None:
                tok.pad_token = tok.eos_token
            elif key == "bos_token" and tok.eos_token is not None:
                tok.bos_token = tok.eos_token
            else:
                tok.add_special_tokens({key: value})
    return tok


def dataset_texts(datasets):
    """``(targets, instructions)`` of the training splits, read from records (no image is decoded)."""
    targets, instructions = [], set()
    for splits in datasets.values():
        ds = splits.get("train")
        if ds is None:
            continue
        if hasattr(ds, "all_captions"):
            targets.extend(ds.all_captions())
        if getattr(ds, "prompt", ""):
            instructions.add(ds.prompt)
        process = getattr(ds, "text_processor", None) or (lambda s: s)
        for r in getattr(ds, "records", ()):
            if r.get("prompt"):
                instructions.add(r["prompt"])
            if r.get("question"):
                instructions.add(process(r["question"]))
    return targets, sorted(instructions)


def training_texts(datasets, prompt, what="tokenizer"):
    """``(targets, instructions)`` to fit a ``what`` on: the training splits' targets, and their
    instructions with ``prompt``; no target is a one-line error."""
    targets, instructions = dataset_texts(datasets)
    if not targets:
        raise ConfigError(f"model.tokenizer_path is not set and no training texts were found to fit the {what} on.")
    return targets, sorted(set(instructions) | {prompt})


def fit_tokenizer(texts, cfg, what="a tokenizer", kind="texts"):
    """:func:`train_caption_tokenizer` on ``texts`` at ``model.tokenizer_vocab_size`` (``cfg``, default
    2000); no text is a one-line error naming ``what`` would have been fitted on which ``kind``."""
    if not texts:
        raise ConfigError(f"model.tokenizer_path is not set and no training {kind} were found to fit {what} on.")
    return train_caption_tokenizer(texts, vocab_size=int(cfg.get("tokenizer_vocab_size", 2000)))
