"""pycocoevalcap's Java PTB tokenizer, run once per call on a list of captions (for tests)."""

import os
import shutil
import subprocess
import tempfile

import pytest


def ptb_jar():
    """Path of pycocoevalcap's stanford-corenlp jar, or skip the test (no Java, no jar)."""
    try:
        import pycocoevalcap.tokenizer.ptbtokenizer as m
    except ImportError:
        pytest.skip("pycocoevalcap is not installed")
    jar = os.path.join(os.path.dirname(m.__file__), m.STANFORD_CORENLP_3_4_1_JAR)
    if shutil.which("java") is None or not os.path.isfile(jar):
        pytest.skip("Java or pycocoevalcap's Stanford CoreNLP jar is absent")
    return jar, m.PUNCTUATIONS


def java_ptb(captions):
    """Tokens of each caption exactly as pycocoevalcap's PTBTokenizer.tokenize gives them
    (same command, one caption per line, same punctuation filter), in one Java call."""
    jar, punct = ptb_jar()
    lines = [c.replace("\n", " ") for c in captions]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write("\n".join(lines))
        path = f.name
    try:
        out = subprocess.run(
            ["java", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", path],
            capture_output=True, check=True, timeout=600,
        ).stdout.decode("utf-8")
    finally:
        os.remove(path)
    rows = out.split("\n")
    assert len(rows) >= len(lines), (len(rows), len(lines))
    return [[w for w in r.rstrip().split(" ") if w not in punct and w != ""] for r in rows[: len(lines)]]
