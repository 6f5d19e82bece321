"""``learned_score``: a trained quality scorer (``score_model``) as a reward.

The reward of a caption is the scorer's score of (image, caption), times ``scale``.
It needs the images: the ``scst`` task passes them (``images`` in the reward's extra
arguments, rows aligned with the captions), and so does best-of-N decoding. Combine it
with the others in a ``rewards:`` block::

    rewards:
      cider: 1.0
      learned_score: {weight: 0.5, path: output/score_model_synthetic_clip/<job>, normalize: true}

Options: ``path`` (a scorer ``save_pretrained`` directory or a ``score_model`` run
folder, see :func:`rslavis.models.score_model.load_scorer`), ``scale`` (1.0),
``batch_size`` (64), ``template`` (``"{caption}"``; VQA answers can be scored as
``"{question} {caption}"`` when ``questions`` are passed), ``model`` (``score_model``:
the registered model whose ``load(path)`` gives the scorer; any model with ``load`` and
``score(images, texts, prompts, batch_size)`` fits). The scorer runs without grad
on the images' device and is loaded once per path.
"""

from rslavis.common.errors import ConfigError
from rslavis.common.registry import registry
from rslavis.rewards.base_reward import BaseReward


@registry.register_reward("learned_score")
class LearnedScoreReward(BaseReward):
    def __init__(self, path=None, scale=1.0, batch_size=64, template="{caption}", model="score_model"):
        if not path:
            raise ConfigError("rewards.learned_score.path is not set: give a scorer directory (save_pretrained) or a score_model run folder.")
        self.path = str(path)
        self.scale = float(scale)
        self.batch_size = int(batch_size)
        self.template = str(template)
        self.model = str(model)
        registry.get_model_class(self.model)  # an unknown name fails at set-up, not at the first reward
        self._scorer = None

    def scorer(self, device=None):
        if self._scorer is None:
            # by registered name: rewards sit below the model layer and never import it
            self._scorer = registry.get_model_class(self.model).load(self.path)
        if device is not None and self._scorer.device != device:
            self._scorer.to(device)
        return self._scorer

    def texts(self, generated, questions=None):
        if questions is None:
            return [self.template.format(caption=g, question="").strip() for g in generated]
        return [self.template.format(caption=g, question=q).strip() for g, q in zip(generated, questions)]

    def __call__(self, generated, references=None, images=None, questions=None, prompts=None, **extra):
        if images is None:
            raise ConfigError(
                "reward learned_score needs the images of the captions; use it in the scst task or best-of-N decoding "
                "(they pass them), not where only texts are scored."
            )
        if len(images) != len(generated):
            raise ConfigError(f"reward learned_score: {len(images)} images for {len(generated)} captions.")
        scorer = self.scorer(images.device)
        values = scorer.score(images, self.texts(generated, questions), prompts=prompts, batch_size=self.batch_size)
        return self.as_tensor(values * self.scale)
