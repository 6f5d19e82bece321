"""Best-of-N decoding for the captioning and VQA tasks (``run.inference_method: best_of_n``).

For each image, ``n`` captions (answers) are sampled with the model's ``sample`` (see
:class:`rslavis.models.base_model.BaseModel`), the greedy/beam output is added
(``include_greedy``), and the candidate with the highest score is kept (ties: the
greedy output, then the first sample). The score comes from

- ``scorer: DIR``: a trained ``score_model`` (a ``save_pretrained`` directory or a run
  folder) on (image, text), text from ``template`` (``"{caption}"``; VQA default
  ``"{question} {caption}"``); or
- ``reward: name`` or ``{name: weight, ...}``: any registered reward(s), built with
  :func:`rslavis.rewards.combine.build_reward`. Rewards that read the references
  (``cider``, ``count``, ...) make this an oracle (an upper bound), not a decoder.

Run keys, under ``run.best_of_n``: ``n`` (8), ``temperature`` (1.0), ``include_greedy``
(true), ``scorer``, ``reward``, ``parser`` (for ``count``/``sde``), ``template``,
``seed`` (0: the sampling generator is re-seeded at every evaluation, so results are
reproducible), ``batch_size`` (64, scorer batches).
"""

import torch

from rslavis.common.config import to_plain
from rslavis.common.errors import ConfigError

KEYS = ("n", "temperature", "include_greedy", "scorer", "reward", "parser", "template", "seed", "batch_size")


class BestOfN:
    """Chooses one of ``n`` sampled candidates (see module docstring); ``kind``: caption | vqa."""

    def __init__(self, spec, kind="caption", option="run.best_of_n"):
        spec = to_plain(spec) or {}
        if not isinstance(spec, dict):
            raise ConfigError(f"{option} must be a mapping with keys {', '.join(KEYS)}, got {spec!r:.100}.")
        unknown = set(spec) - set(KEYS)
        if unknown:
            raise ConfigError(f"{option}: unknown key(s) {sorted(unknown)}; valid: {', '.join(KEYS)}.")
        self.kind = kind
        self.n = int(spec.get("n", 8))
        self.temperature = float(spec.get("temperature", 1.0))
        self.include_greedy = bool(spec.get("include_greedy", True))
        self.seed = int(spec.get("seed", 0))
        self.batch_size = int(spec.get("batch_size", 64))
        self.template = str(spec.get("template") or ("{question} {caption}" if kind == "vqa" else "{caption}"))
        if self.n < 1 or self.temperature <= 0:
            raise ConfigError(f"{option}: n must be >= 1 and temperature > 0, got n={self.n}, temperature={self.temperature}.")
        self.scorer_path = spec.get("scorer")
        reward = spec.get("reward")
        if bool(self.scorer_path) == bool(reward):
            raise ConfigError(f"{option}: set exactly one of 'scorer' (a score_model directory or run folder) and 'reward' (a registered reward name or {{name: weight}}).")
        self.reward = None
        if reward:
            from rslavis.rewards.combine import build_reward

            mapping = {reward: 1.0} if isinstance(reward, str) else dict(reward)
            self.reward = build_reward(mapping, parser=spec.get("parser"))
        else:
            from rslavis.models.score_model import load_scorer

            load_scorer(self.scorer_path)  # fail at set-up, not at the first evaluation
        self.generator = None
        self.last = None  # (candidates per image, scores per image) of the last batch, for inspection

    def state_dict(self):
        """The sampling generator and the reward's state (see :meth:`BaseTask.state_dict`)."""
        return {"generator": None if self.generator is None else self.generator.get_state(),
                "reward": self.reward.state_dict() if self.reward is not None else {}}

    def load_state_dict(self, state):
        if state.get("generator") is not None:
            self.generator = torch.Generator()
            self.generator.set_state(state["generator"])
        if state.get("reward") and self.reward is not None:
            self.reward.load_state_dict(state["reward"])

    def start(self):
        """Re-seed the sampling generator (called at the start of every evaluation)."""
        self.generator = torch.Generator().manual_seed(self.seed)

    def _texts(self, flat, rows, samples):
        questions = samples.get("question")
        out = []
        for c, r in zip(flat, rows):
            q = questions[r] if questions is not None else ""
            out.append(self.template.format(caption=c, question=q).strip())
        return out

    def scores(self, flat, rows, samples):
        images = samples.get("image")
        if self.reward is not None:
            refs = samples.get("references") if self.kind == "caption" else samples.get("answers")
            refs = [list(refs[r]) for r in rows] if refs is not None else [[] for _ in rows]
            extra = {"update_stats": False}
            if samples.get("count_dict") is not None:
                extra["count_dicts"] = [samples["count_dict"][r] for r in rows]
            if images is not None:
                extra["images"] = images[torch.as_tensor(rows, device=images.device)]
            return self.reward.compute(flat, refs, **extra)[0]
        from rslavis.models.score_model import load_scorer

        if images is None:
            raise ConfigError("run.best_of_n.scorer needs samples with 'image' (a feature cache cannot feed the scorer).")
        scorer = load_scorer(self.scorer_path)
        if scorer.device != images.device:
            scorer.to(images.device)
        prompts = samples.get("text_input")
        prompts = [prompts[r] for r in rows] if prompts is not None and all(prompts) else None
        idx = torch.as_tensor(rows, device=images.device)
        return scorer.score(images[idx], self._texts(flat, rows, samples), prompts=prompts, batch_size=self.batch_size)

    @torch.no_grad()
    def select(self, model, samples, generation_kwargs):
        """The chosen caption (answer) of every sample."""
        can_sample = getattr(type(model), "can_sample", None)
        if not (can_sample() if can_sample is not None else hasattr(model, "sample")):
            raise ConfigError(f"run.inference_method best_of_n: {type(model).__name__} has no sample(); use generate.")
        if self.generator is None:
            self.start()
        b = len(samples["image_id"])
        out = model.sample(samples, n=self.n, temperature=self.temperature, max_len=int(generation_kwargs.get("max_len", 30)),
                           min_len=int(generation_kwargs.get("min_len", 1)), generator=self.generator)
        cands = [list(out.captions[i * self.n : (i + 1) * self.n]) for i in range(b)]
        if self.include_greedy:
            greedy = model.generate(samples, **generation_kwargs)
            cands = [[g] + c for g, c in zip(greedy, cands)]
        flat = [c for cs in cands for c in cs]
        rows = [i for i, cs in enumerate(cands) for _ in cs]
        scores = torch.as_tensor(self.scores(flat, rows, samples), dtype=torch.float32).reshape(-1).cpu()
        chosen, per_image, start = [], [], 0
        for cs in cands:
            s = scores[start : start + len(cs)]
            start += len(cs)
            chosen.append(cs[int(torch.argmax(s))])  # argmax returns the first maximum: greedy wins ties
            per_image.append(s.tolist())
        self.last = (cands, per_image)
        return chosen


def from_run(run, kind):
    """A :class:`BestOfN` when ``run.inference_method`` is ``best_of_n``, else None."""
    if str(run.get("inference_method") or "generate") != "best_of_n":
        return None
    return BestOfN(run.get("best_of_n"), kind)
