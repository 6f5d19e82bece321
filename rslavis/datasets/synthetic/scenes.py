"""Procedurally drawn top-down aerial scenes with counting captions.

Each scene is a land-cover background (meadow, desert, farmland, concrete, water)
with one or two kinds of countable objects (storage tanks, planes, tennis courts,
buildings, trees, ships), each present 1 to 4 times, drawn at random non-overlapping
positions. Five captions per scene come from several templates with synonyms and
state the counts; ``count_dict`` gives the canonical ``{object: count}``.

Everything is a pure function of the seed, so a split is reproducible bit for bit.
"""

import numpy as np

# background -> (caption phrases, objects that may appear on it)
BACKGROUNDS = {
    "meadow": (["a green meadow", "a grassland", "a green field"], ["storage tank", "building", "tree", "tennis court"]),
    "desert": (["a desert", "a sandy area", "a bare desert"], ["storage tank", "plane", "building"]),
    "farmland": (["farmland", "cropland", "some farmland"], ["tree", "building", "storage tank"]),
    "concrete": (["a concrete area", "a paved area", "an airport apron"], ["plane", "building", "tennis court"]),
    "water": (["the sea", "open water", "a calm sea"], ["ship"]),
}

# canonical object -> synonyms (singular, plural)
OBJECTS = {
    "storage tank": [("storage tank", "storage tanks"), ("oil tank", "oil tanks")],
    "plane": [("plane", "planes"), ("airplane", "airplanes")],
    "tennis court": [("tennis court", "tennis courts")],
    "building": [("building", "buildings"), ("house", "houses")],
    "tree": [("tree", "trees")],
    "ship": [("ship", "ships"), ("boat", "boats")],
}

NUMBERS = {1: ["a", "one"], 2: ["two"], 3: ["three"], 4: ["four"]}

# object -> footprint (height, width) in pixels at 64x64; scaled with image size
_SIZES = {"storage tank": (7, 7), "plane": (9, 9), "tennis court": (8, 12), "building": (8, 8), "tree": (6, 6), "ship": (4, 10)}


def _background(kind, size, rng):
    h = w = size
    noise = rng.normal(0, 1, (h, w, 1))
    if kind == "meadow":
        base = np.array([70, 130, 55]) + noise * np.array([8, 12, 6])
    elif kind == "desert":
        base = np.array([205, 180, 130]) + noise * np.array([10, 10, 8])
    elif kind == "farmland":
        stripe = ((np.arange(w) // max(2, size // 8)) % 2)[None, :, None]
        base = np.where(stripe, np.array([150, 120, 70]), np.array([95, 140, 60])) + noise * 6
    elif kind == "concrete":
        base = np.array([150, 150, 150]) + noise * 6
        base[:, :: max(4, size // 6)] -= 25  # pavement joints
    else:  # water
        base = np.array([35, 75, 130]) + noise * np.array([3, 5, 8])
    return np.clip(base, 0, 255)


def _draw(img, obj, top, left, hh, ww, rng):
    yy, xx = np.mgrid[0:hh, 0:ww]
    cy, cx = (hh - 1) / 2, (ww - 1) / 2
    region = img[top : top + hh, left : left + ww]
    if obj == "storage tank":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= (min(hh, ww) / 2) ** 2
        region[mask] = [235, 235, 230]
        region[((yy - cy) ** 2 + (xx - cx) ** 2 <= (min(hh, ww) / 5) ** 2)] = [180, 180, 180]
    elif obj == "plane":
        body = np.abs(xx - cx) <= max(1, ww // 9)
        wings = np.abs(yy - cy * 0.8) <= max(1, hh // 9)
        tail = (np.abs(yy - (hh - 2)) <= max(0, hh // 12)) & (np.abs(xx - cx) <= ww / 4)
        region[body | wings | tail] = [225, 225, 235]
    elif obj == "tennis court":
        region[:] = [60, 140, 90]
        region[[0, -1], :] = [245, 245, 245]
        region[:, [0, -1]] = [245, 245, 245]
        region[:, ww // 2] = [245, 245, 245]
    elif obj == "building":
        region[:] = [140, 70, 60]
        region[1:-1, 1:-1] = [165, 90, 75]
        region[: max(1, hh // 4), :] = [110, 55, 45]  # shadowed edge
    elif obj == "tree":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= (min(hh, ww) / 2) ** 2
        region[mask] = [25, 75, 30] + rng.integers(0, 15, 3)
    elif obj == "ship":
        mask = ((yy - cy) / (hh / 2)) ** 2 + ((xx - cx) / (ww / 2)) ** 2 <= 1
        region[mask] = [240, 240, 240]


def _place(counts, size, rng):
    """Non-overlapping boxes for every object instance; None when the scene is too crowded."""
    scale = size / 64
    boxes, taken = [], np.zeros((size, size), bool)
    for obj, n in counts.items():
        hh, ww = (max(3, int(round(d * scale))) for d in _SIZES[obj])
        if rng.random() < 0.5 and obj in ("tennis court", "ship", "plane"):
            hh, ww = ww, hh
        for _ in range(n):
            for _attempt in range(60):
                top = int(rng.integers(1, size - hh - 1))
                left = int(rng.integers(1, size - ww - 1))
                if not taken[max(0, top - 1) : top + hh + 1, max(0, left - 1) : left + ww + 1].any():
                    taken[top : top + hh, left : left + ww] = True
                    boxes.append((obj, top, left, hh, ww))
                    break
            else:
                return None
    return boxes


def _phrase(obj, n, rng):
    sing, plur = OBJECTS[obj][int(rng.integers(len(OBJECTS[obj])))]
    number = NUMBERS[n][int(rng.integers(len(NUMBERS[n])))]
    return f"{number} {sing if n == 1 else plur}"


def _join(phrases):
    return phrases[0] if len(phrases) == 1 else " and ".join(phrases)


def captions_for(background, counts, rng, n_captions=5):
    """``n_captions`` captions stating the scene's objects and counts, varied templates and synonyms."""
    bg_phrases = BACKGROUNDS[background][0]
    out = []
    for k in range(n_captions):
        objs = list(counts)
        if rng.random() < 0.5:
            objs = objs[::-1]
        things = _join([_phrase(o, counts[o], rng) for o in objs])
        bg = bg_phrases[int(rng.integers(len(bg_phrases)))]
        first_n = counts[objs[0]]
        verb = "is" if first_n == 1 and len(objs) == 1 else "are"
        templates = [
            f"there {verb} {things} in {bg}",
            f"{things} {verb} located in {bg}",
            f"{bg} with {things}",
            f"we can see {things} in {bg}",
            f"this image shows {things} in {bg}",
        ]
        out.append(templates[(k + int(rng.integers(len(templates)))) % len(templates)] + " .")
    return out


def generate_scene(seed, size=64, max_kinds=2, max_count=4, backgrounds=None, context=None):
    """One scene from ``seed``: ``(uint8 image HxWx3, background, {object: count})``.

    ``context`` forces the background; the confounded split uses it.
    """
    rng = np.random.default_rng(seed)
    names = list(backgrounds or BACKGROUNDS)
    while True:
        background = context or names[int(rng.integers(len(names)))]
        allowed = BACKGROUNDS[background][1]
        k = int(rng.integers(1, min(max_kinds, len(allowed)) + 1))
        kinds = list(rng.choice(allowed, size=k, replace=False))
        counts = {str(o): int(rng.integers(1, max_count + 1)) for o in kinds}
        boxes = _place(counts, size, rng)
        if boxes is not None:
            break
    img = _background(background, size, rng)
    for obj, top, left, hh, ww in boxes:
        _draw(img, obj, top, left, hh, ww, rng)
    return np.clip(img, 0, 255).astype(np.uint8), background, counts


def generate_split(n, seed, size=64, n_captions=5, max_kinds=2, max_count=4):
    """``n`` scenes as ``[(image, {"background", "captions", "count_dict"})]``, deterministic in ``seed``."""
    out = []
    for i in range(n):
        scene_seed = [seed, i]
        img, background, counts = generate_scene(scene_seed, size, max_kinds, max_count)
        rng = np.random.default_rng([seed, i, 1])
        out.append((img, {"background": background, "captions": captions_for(background, counts, rng, n_captions), "count_dict": counts}))
    return out


def generate_scene_with(seed, size=64, background="meadow", include=None, exclude=(), max_kinds=2, max_count=4):
    """A scene on ``background`` that shows ``include`` (when given) and none of ``exclude``.

    The confounded split uses it; ``generate_scene`` is left as it is so the default
    configuration keeps drawing the same scenes.
    """
    rng = np.random.default_rng(seed)
    allowed = [o for o in BACKGROUNDS[background][1] if o not in exclude and o != include]
    while True:
        if include is not None:
            n_extra = int(rng.integers(0, min(max_kinds - 1, len(allowed)) + 1)) if allowed else 0
            extra = [str(o) for o in rng.choice(allowed, size=n_extra, replace=False)] if n_extra else []
            kinds = [include, *extra]
        else:
            k = int(rng.integers(1, min(max_kinds, len(allowed)) + 1))
            kinds = [str(o) for o in rng.choice(allowed, size=k, replace=False)]
        counts = {o: int(rng.integers(1, max_count + 1)) for o in kinds}
        boxes = _place(counts, size, rng)
        if boxes is not None:
            break
    img = _background(background, size, rng)
    for obj, top, left, hh, ww in boxes:
        _draw(img, obj, top, left, hh, ww, rng)
    return np.clip(img, 0, 255).astype(np.uint8), counts


def generate_confounded_split(n, seed, split, context="concrete", obj="plane", cooccurrence=0.9, context_share=0.3, size=64, n_captions=5, max_kinds=2, max_count=4, elsewhere=None, test_unusual_share=0.0):
    """Scenes where ``context`` (a background) and ``obj`` are confounded.

    ``train``/``val``: a share ``context_share`` of scenes shows the context, and
    ``cooccurrence`` (``p(obj | context)``) of those also show ``obj``; the rest are scenes
    on the other backgrounds. There ``obj`` appears as the background's ordinary objects
    allow (``elsewhere: None``), or with probability ``elsewhere`` (``p(obj | other
    context)``, drawn on any other background, also where it never appears otherwise).

    ``test``: a share ``test_unusual_share`` of scenes shows ``obj`` on another background
    (present in an unusual context: naming it is the question, missing it an oversight);
    the rest show the context and never ``obj`` (absent from its usual context: naming it
    is a hallucination). Metadata adds ``in_context`` and ``has_object``.
    """
    others = [b for b in BACKGROUNDS if b != context]
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i, 7])
        if split == "test":
            if test_unusual_share > 0 and rng.random() < test_unusual_share:
                background, include, exclude = others[int(rng.integers(len(others)))], obj, ()
            else:
                background, include, exclude = context, None, (obj,)
        elif rng.random() < context_share:
            background = context
            include, exclude = (obj, ()) if rng.random() < cooccurrence else (None, (obj,))
        else:
            background, include, exclude = others[int(rng.integers(len(others)))], None, ()
            if elsewhere is not None:
                include, exclude = (obj, ()) if rng.random() < elsewhere else (None, (obj,))
        img, counts = generate_scene_with([seed, i], size, background, include, exclude, max_kinds, max_count)
        caps = captions_for(background, counts, np.random.default_rng([seed, i, 1]), n_captions)
        meta = {"background": background, "captions": caps, "count_dict": counts, "in_context": background == context, "has_object": obj in counts}
        out.append((img, meta))
    return out


def object_names(obj):
    """Every word form the captions use for ``obj`` (synonyms, singular and plural)."""
    return sorted({form for pair in OBJECTS[obj] for form in pair})
