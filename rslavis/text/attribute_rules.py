"""A spaCy pipeline's ``attribute_ruler`` matched in Python: the same matches, in a fraction of the time.

On short captions spaCy's ``attribute_ruler`` (tag-map and exception patterns run by its
``Matcher``) takes about a third of the ``spacy`` parser's time. Its patterns are short
fixed sequences of token tests (``LOWER``, ``TAG``, ``DEP``, ``IS_SPACE``: equal, ``IN``,
``NOT_IN``, ``REGEX``), and whether a token passes one is a function of those four values,
so :class:`AttributeRules` tests each distinct (lower, tag, dep, is_space) once and keeps the
answer. It builds the ruler's match list (sorted by pattern, as the ruler sorts it) and
hands it to the ruler's own ``set_annotations``, so the attributes set are the ruler's.
A ruler with any other kind of pattern is not supported (:func:`attribute_rules` returns
None and the pipeline runs unchanged). ``tests/test_text_parser.py`` checks the tokens
against the unchanged pipeline.
"""

import re

KEYS = ("LOWER", "TAG", "DEP", "IS_SPACE")


def _test(key, spec):
    """A test of one token value (``key`` of :data:`KEYS`) from a pattern's value, or None when unsupported."""
    if not isinstance(spec, dict):
        return (lambda v: v == spec) if key != "IS_SPACE" or isinstance(spec, bool) else None
    if len(spec) != 1 or key == "IS_SPACE":
        return None
    (op, arg), = spec.items()
    if op == "IN":
        s = frozenset(arg)
        return s.__contains__
    if op == "NOT_IN":
        s = frozenset(arg)
        return lambda v: v not in s
    if op == "REGEX":
        rx = re.compile(arg)
        return lambda v: rx.search(v) is not None
    return None


class AttributeRules:
    """The matcher of ``ruler`` (an ``AttributeRuler``) over (lower, tag, dep, is_space) values; call it on a Doc
    instead of the ruler (see module docstring)."""

    def __init__(self, ruler, tests, steps_by_value):
        self.ruler = ruler
        self.tests = tests  # [(attr_id, match_id, [checks of each position])]
        # (test number, position) of the steps to try on a token: per (value index, value) of a step's
        # equality check on LOWER or TAG (most steps have one), and those without (under None)
        self._steps_by_value = steps_by_value
        self._passes = {}

    @classmethod
    def build(cls, ruler):
        """:class:`AttributeRules` of ``ruler``, or None when one of its patterns is of another kind."""
        strings = ruler.vocab.strings
        tests, steps_by_value = [], {}
        for attr_id, entry in enumerate(ruler.patterns):  # patterns in attribute-id order
            match_id = strings.add(str(attr_id))
            for pattern in entry["patterns"]:
                if not pattern:
                    return None
                steps = []
                for spec in pattern:
                    if not isinstance(spec, dict) or not spec.keys() <= set(KEYS):
                        return None
                    checks = [(KEYS.index(k), _test(k, v)) for k, v in spec.items()]
                    if any(t is None for _, t in checks):
                        return None
                    steps.append(tuple(checks))
                    index = next(((KEYS.index(k), v) for k, v in sorted(spec.items())
                                  if k in ("LOWER", "TAG") and isinstance(v, str)), None)
                    steps_by_value.setdefault(index, []).append((len(tests), len(steps) - 1))
                tests.append((attr_id, match_id, steps))
        return cls(ruler, tests, steps_by_value)

    def _passed(self, value):
        """The (test number, position) pairs the token ``value`` = (lower, tag, dep, is_space) passes."""
        by_value = self._steps_by_value
        tests = self.tests
        out = frozenset((n, pos) for key in ((0, value[0]), (1, value[1]), None) for n, pos in by_value.get(key, ())
                        if all(t(value[k]) for k, t in tests[n][2][pos]))
        if len(self._passes) > 200000:
            self._passes.clear()
        self._passes[value] = out
        return out

    def matches(self, doc):
        """The ruler's ``match(doc)``: ``[(attr_id, match_id, start, end)]`` sorted."""
        passes = self._passes
        per_token = []
        for t in doc:
            value = (t.lower_, t.tag_, t.dep_, t.is_space)
            got = passes.get(value)
            per_token.append(got if got is not None else self._passed(value))
        found = []
        n = len(per_token)
        for start, got in enumerate(per_token):
            for test, pos in got:
                if pos:
                    continue
                attr_id, match_id, steps = self.tests[test]
                end = start + len(steps)
                if end <= n and all((test, k) in per_token[start + k] for k in range(1, len(steps))):
                    found.append((attr_id, match_id, start, end))
        found = list(dict.fromkeys(found))  # one match per pattern key and span, as the Matcher gives
        found.sort()
        return found

    def __call__(self, doc):
        self.ruler.set_annotations(doc, self.matches(doc))
        return doc


def attribute_rules(nlp):
    """(components to run after ``nlp.pipe`` without them: the :class:`AttributeRules` of the pipeline's
    ``attribute_ruler``, then the components after it), or None when it has none or it is not supported."""
    names = list(nlp.pipe_names)
    if "attribute_ruler" not in names:
        return None
    rules = AttributeRules.build(nlp.get_pipe("attribute_ruler"))
    if rules is None:
        return None
    i = names.index("attribute_ruler")
    return [("attribute_ruler", rules)] + [(name, nlp.get_pipe(name)) for name in names[i + 1:]]
