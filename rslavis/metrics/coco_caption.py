"""Standard captioning metrics through pycocoevalcap, the reference implementation.

Keys follow pycocoevalcap: ``Bleu_1``..``Bleu_4``, ``METEOR``, ``ROUGE_L``, ``CIDEr``,
``SPICE``. METEOR and the PTB tokenizer need Java; SPICE also needs the Stanford CoreNLP
jars that ``get_stanford_models`` would download, which is impossible offline, so SPICE
runs only when those jars are already present and is otherwise skipped with one warning.
"""

import contextlib
import io
import logging
import os
import shutil

logger = logging.getLogger(__name__)
_warned = set()


def _warn_once(key, msg):
    if key not in _warned:
        _warned.add(key)
        logger.warning(msg)


def java_available():
    return shutil.which("java") is not None


def spice_jars_present():
    """True when SPICE's Stanford CoreNLP jars are on disk (they are never downloaded here)."""
    try:
        import pycocoevalcap.spice as spice_pkg
    except ImportError:
        return False
    lib = os.path.join(os.path.dirname(spice_pkg.__file__), "lib")
    return os.path.isdir(lib) and any(f.startswith("stanford-corenlp-") and f.endswith(".jar") for f in os.listdir(lib))




def simple_tokenize(text):
    """Lower-case, drop punctuation, collapse spaces: the PTB tokenizer's effect on captions.

    The same tokens as :func:`rslavis.text.tokenize.simple_tokenize` (used by the rewards), joined.
    """
    from rslavis.text.tokenize import simple_tokenize as _tok

    return " ".join(_tok(text))


@contextlib.contextmanager
def _quiet_fds():
    """Silence stdout/stderr at the file-descriptor level: the Java PTB tokenizer writes its
    "PTBTokenizer tokenized ..." line from a subprocess, which ``redirect_stderr`` misses."""
    saved = []
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            saved.append((fd, os.dup(fd)))
            os.dup2(devnull, fd)
        os.close(devnull)
    except OSError:  # no real descriptors (e.g. captured streams): leave them alone
        for fd, old in saved:
            os.dup2(old, fd)
            os.close(old)
        saved = []
    try:
        yield
    finally:
        for fd, old in saved:
            os.dup2(old, fd)
            os.close(old)


def _ptb_tokenize(captions_for_image):
    """pycocoevalcap's ``PTBTokenizer().tokenize``, same command, jar and punctuation list, except that
    its input file goes to the system temporary folder: the original writes it next to the jar,
    inside site-packages, which fails for a user who does not own the installation."""
    import subprocess
    import tempfile

    from pycocoevalcap.tokenizer import ptbtokenizer as ptb

    jar = os.path.join(os.path.dirname(os.path.abspath(ptb.__file__)), ptb.STANFORD_CORENLP_3_4_1_JAR)
    image_id = [k for k, v in captions_for_image.items() for _ in range(len(v))]
    sentences = "\n".join(c["caption"].replace("\n", " ") for v in captions_for_image.values() for c in v)
    fd, tmp = tempfile.mkstemp(prefix="rslavis-ptb-", suffix=".txt")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(sentences.encode())
        cmd = ["java", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", tmp]
        lines = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True).stdout.decode().split("\n")
    finally:
        os.unlink(tmp)
    out = {}
    for k, line in zip(image_id, lines):
        out.setdefault(k, []).append(" ".join(w for w in line.rstrip().split(" ") if w not in ptb.PUNCTUATIONS))
    return out


def tokenize(captions_by_id):
    """``{id: [caption, ...]}`` to tokenized strings, PTB (Java) when available."""
    if java_available():
        data = {k: [{"caption": c} for c in v] for k, v in captions_by_id.items()}
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        with _quiet_fds(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return _ptb_tokenize(data)
    _warn_once("ptb", "Java not found: using a pure-Python tokenizer instead of the PTB tokenizer.")
    return {k: [simple_tokenize(c) for c in v] for k, v in captions_by_id.items()}


def caption_metrics(references, predictions, meteor=True, spice=True):
    """Corpus metrics for ``predictions {id: caption}`` against ``references {id: [captions]}``.

    Only ids present in ``predictions`` are scored. Returns a dict of floats.
    """
    ids = [i for i in predictions if i in references]
    if not ids:
        raise ValueError("caption_metrics: no prediction id matches a reference id.")
    gts = tokenize({i: list(references[i]) for i in ids})
    res = tokenize({i: [predictions[i]] for i in ids})
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    scorers = [(Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]), (Rouge(), "ROUGE_L"), (Cider(), "CIDEr")]
    if meteor:
        if java_available():
            from pycocoevalcap.meteor.meteor import Meteor

            scorers.append((Meteor(), "METEOR"))
        else:
            _warn_once("meteor", "Java not found: METEOR skipped.")
    if spice:
        if java_available() and spice_jars_present():
            from pycocoevalcap.spice.spice import Spice

            scorers.append((Spice(), "SPICE"))
        elif not java_available():
            _warn_once("spice", "SPICE skipped: Java is not installed.")
        else:
            _warn_once("spice", "SPICE skipped: its Stanford CoreNLP jars are not in pycocoevalcap/spice/lib (they cannot be downloaded here).")
    out = {}
    for scorer, names in scorers:
        with contextlib.redirect_stdout(io.StringIO()):
            score, _ = scorer.compute_score(gts, res)
        if isinstance(names, list):
            out.update({n: float(s) for n, s in zip(names, score)})
        else:
            out[names] = float(score)
    return out
