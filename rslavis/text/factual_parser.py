"""The ``factual`` caption parser: FACTUAL's textual scene-graph parser (optional).

Uses ``SceneGraphParser`` of FactualSceneGraph (``pip install 'rslavis[factual]'``, i.e.
``factualscenegraph==0.6.1``, the release that installs beside recent torch) on a local
checkpoint directory (a FACTUAL flan-t5 scene-graph model saved with
``save_pretrained``), given as the ``checkpoint_dir`` option. Nothing is ever downloaded:
the hub is switched to offline mode before the model loads, and a missing directory is
an error naming the option. Entity heads go through the synonym table; an entity's
quantity ("2", "three", "many") gives its count with the rules of
:mod:`rslavis.text.base_parser`.
"""

import importlib.util
import os

from rslavis.common.errors import ConfigError, RslavisError
from rslavis.common.registry import registry
from rslavis.text.base_parser import MAX_COUNT, NUMBER_WORDS, ONE_WORDS, TWO_WORDS, BaseCaptionParser
from rslavis.text.closed_tagger import rules_lemma


@registry.register_parser("factual")
class FactualCaptionParser(BaseCaptionParser):
    """FACTUAL scene-graph parser. Extra config keys: ``checkpoint_dir`` (required),
    ``device`` ("cpu"), ``beam_size`` (1), ``batch_size`` (32)."""

    name = "factual"

    def __init__(self, checkpoint_dir=None, device="cpu", beam_size=1, batch_size=32, **kwargs):
        if not checkpoint_dir:
            raise ConfigError(
                "caption parser 'factual' needs the option 'checkpoint_dir': a local directory holding a "
                "FACTUAL scene-graph checkpoint (e.g. flan-t5-base-VG-factual-sg saved with save_pretrained); "
                "it is never downloaded. Or use parser 'spacy'."
            )
        if not os.path.isdir(os.fspath(checkpoint_dir)):
            raise ConfigError(
                f"caption parser 'factual': checkpoint_dir {os.fspath(checkpoint_dir)!r} is not a directory; "
                "give a local FACTUAL checkpoint directory."
            )
        if importlib.util.find_spec("factual_scene_graph") is None:
            raise RslavisError(
                "caption parser 'factual' needs FactualSceneGraph: pip install 'rslavis[factual]' "
                "(factualscenegraph==0.6.1)."
            )
        super().__init__(**kwargs)
        os.environ["HF_HUB_OFFLINE"] = "1"  # a local directory only: never reach the hub
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        from factual_scene_graph.parser.scene_graph_parser import SceneGraphParser

        self.sg = SceneGraphParser(os.fspath(checkpoint_dir), device=device)
        self.beam_size = int(beam_size)
        self.batch_size = int(batch_size)

    @staticmethod
    def _count(quantity):
        q = str(quantity or "").strip().lower()
        if not q:
            return "implicit", 1
        if q.isdigit():
            return ("exact", int(q)) if int(q) <= MAX_COUNT else ("vague", None)
        if q in NUMBER_WORDS:
            return "exact", NUMBER_WORDS[q]
        if q in ONE_WORDS:
            return "exact", 1
        if q in TWO_WORDS:
            return "exact", 2
        return "vague", None

    def parse_batch(self, captions):
        keys = [c if isinstance(c, str) else ("" if c is None else str(c)) for c in captions]
        todo = list(dict.fromkeys(k for k in keys if k not in self._cache))
        for a in range(0, len(todo), self.batch_size):
            chunk = todo[a : a + self.batch_size]
            graphs = self.sg.parse(chunk, beam_size=self.beam_size, return_text=False)
            for k, g in zip(chunk, graphs):
                self._cache[k] = self._objects(g)
        return [dict(self._cache[k]) for k in keys]

    def _objects(self, graph):
        known = self.table.nouns | set(self.table.to_canonical)
        mentions = {}
        for ent in (graph or {}).get("entities", []) or []:
            head = str(ent.get("head", "")).strip().lower()
            if not head:
                continue
            words = head.split()
            words[-1] = rules_lemma(words[-1], known)
            name = self.table.canonical(" ".join(words))
            if name is None and len(words) > 1:
                name = self.table.canonical(words[-1])
            if name is None:
                continue
            kind, value = self._count(ent.get("quantity"))
            if name in self.table.mass_nouns:
                kind, value = "vague", None
            mentions.setdefault(name, []).append((kind, value))
        out = {}
        for name, ms in mentions.items():
            kinds = {k for k, _ in ms}
            if "vague" in kinds:
                out[name] = None
            elif "exact" in kinds:
                total = sum(v for k, v in ms if k == "exact")
                if total > 0:
                    out[name] = total
            else:
                out[name] = 1
        return out
