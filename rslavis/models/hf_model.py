"""Models around one transformers model (``self.model``): BLIP, BLIP-2, InstructBLIP, ``hf_vlm``.

:class:`HFModel` holds what they share: loading a local checkpoint (``model.pretrained``,
Hugging Face layout, nothing downloaded) or building a tiny random config once the
tokenizer exists (given, read from ``model.tokenizer_path`` or fitted on the training
text in ``prepare_for_training``), the not-built-yet error, and persistence
(``hf_config.json`` is ``self.model.config``; the saved folder is self-contained). A
subclass names its transformers class (``HF_CLASS``) and writes ``_build`` (the tiny
config), ``_attach`` (special tokens, freezing, LoRA on a built model) and
``fitted_tokenizers``.
"""

from rslavis.common.errors import ConfigError, RslavisError
from rslavis.models.base_model import BaseModel, local_pretrained_dir, model_dtype


class HFModel(BaseModel):
    HF_CLASS = None  # the name of the transformers class in ``transformers``
    TOKENIZER_ARG = "tokenizer"  # the constructor argument that holds the (main) tokenizer
    TINY_TYPES = ("tiny",)  # model types built from a random config; the others need model.pretrained
    PRETRAINED_HINT = {}  # model_type -> Hub name of its checkpoint (for the missing-directory message)
    CHECKPOINT_KIND = "a checkpoint"  # what the message asks for when the type has no Hub name
    LOCAL_PATH_KEYS = ("tokenizer_path", "pretrained")  # the saved folder is self-contained
    SAVED_FILES = ("config.json", "hf_config.json")

    def __init__(self, cfg=None, lazy=True):
        super().__init__(cfg, lazy=lazy)  # parameters appear only once the tokenizer exists
        self.model = None

    @property
    def model_type(self):
        return self.cfg.get("model_type") or self.DEFAULT_MODEL_TYPE

    def hf_class(self):
        """The transformers class named by ``HF_CLASS``."""
        import transformers

        return getattr(transformers, self.HF_CLASS)

    def pretrained_hint(self):
        return self.PRETRAINED_HINT.get(self.model_type, self.CHECKPOINT_KIND)

    def pretrained_dir(self):
        """``model.pretrained`` as a local directory (a missing one is a one-line error)."""
        return local_pretrained_dir(self.cfg["pretrained"], self.pretrained_hint())

    def build_or_load(self, hf_config=None, **tokenizers):
        """Load ``model.pretrained``, or build (``hf_config`` or the tiny config) when the tokenizer is
        known; a type that is not tiny without ``model.pretrained`` is a one-line error."""
        if tokenizers.get(self.TOKENIZER_ARG) is None and self.cfg.get("tokenizer_path"):
            tokenizers = self.tokenizer_parts(self.cfg["tokenizer_path"], "model.tokenizer_path")
        pretrained = self.cfg.get("pretrained")
        if pretrained and hf_config is None:
            p = self.pretrained_dir()
            if tokenizers.get(self.TOKENIZER_ARG) is None:
                tokenizers = self.tokenizer_parts(p, "model.pretrained")
            self._attach(self.hf_class().from_pretrained(str(p), local_files_only=True, dtype=model_dtype(self.cfg)), **tokenizers)
        elif tokenizers.get(self.TOKENIZER_ARG) is not None:
            self._build(**tokenizers, hf_config=hf_config)
        elif self.model_type not in self.TINY_TYPES:
            raise ConfigError(
                f"model.pretrained is not set for model_type {self.model_type!r}: give a local directory holding "
                f"{self.pretrained_hint()} (Hugging Face layout; nothing is downloaded)."
            )

    def _build(self, hf_config=None, **tokenizers):
        """Build ``self.model`` from ``hf_config`` (a saved folder's) or the tiny config of ``self.cfg``
        (called with keywords: the tokenizer argument(s) and ``hf_config``)."""
        raise NotImplementedError

    def _attach(self, model, **tokenizers):
        """Take ``model`` (built or loaded) as ``self.model`` with its tokenizer(s)."""
        raise NotImplementedError

    def fitted_tokenizers(self, datasets):
        """The tokenizer argument(s) of :meth:`_build`, fitted on the training text of ``datasets``."""
        raise NotImplementedError

    def prepare_for_training(self, datasets, output_dir):
        """Tiny types: fit the tokenizer(s) on the training text, build the model, save them with the run."""
        if self.model is not None:
            return
        self._build(**self.fitted_tokenizers(datasets))
        self.save_run_tokenizers(output_dir)

    def _require_model(self):
        if self.model is None:
            raise RslavisError(f"{self.registry_name()}: the model is not built yet (set model.tokenizer_path or call prepare_for_training).")

    def check_built(self):
        self._require_model()

    def hf_config_to_save(self):
        return self.model.config
