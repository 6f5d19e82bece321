"""Static index of the built-in registry names and the module that defines each.

Looking a name up imports only its module, so ``import rslavis`` and
``registry.list_models()`` stay free of torch/transformers. ``tests/test_registry.py``
imports every module under ``rslavis`` and checks that this index and the decorators
agree, so the two cannot drift apart.
"""

BUILTINS = {
    "model": {
        "smallcap": "rslavis.models.smallcap.model",
        "instructblip": "rslavis.models.instructblip.model",
        "blip2": "rslavis.models.blip2.model",
        "blip": "rslavis.models.blip.model",
        "smallcap_causal": "rslavis.models.smallcap.causal",
        "knn_caption": "rslavis.models.knn_caption",
        "rs_moe": "rslavis.models.rs_moe.model",
        "score_model": "rslavis.models.score_model",
        "hf_vlm": "rslavis.models.hf_vlm.model",
        "clip_dual_encoder": "rslavis.models.clip_dual",
    },
    "builder": {
        "rs_synthetic": "rslavis.datasets.builders.synthetic",
        "ucm_caption": "rslavis.datasets.builders.caption_builders",
        "rsicd_caption": "rslavis.datasets.builders.caption_builders",
        "sydney_caption": "rslavis.datasets.builders.caption_builders",
        "coco_caption_format": "rslavis.datasets.builders.caption_builders",
        "rsicap_caption": "rslavis.datasets.builders.caption_builders",
        "rsieval_caption": "rslavis.datasets.builders.caption_builders",
        "vrsbench_caption": "rslavis.datasets.builders.caption_builders",
        "rsieval_vqa": "rslavis.datasets.builders.vqa_builders",
        "vrsbench_vqa": "rslavis.datasets.builders.vqa_builders",
        "rsvqa_lr": "rslavis.datasets.builders.vqa_builders",
        "rsvqa_hr": "rslavis.datasets.builders.vqa_builders",
        "preference_json": "rslavis.datasets.preference",
        "caption_preferences": "rslavis.datasets.preference",
        "lavis_caption": "rslavis.datasets.builders.caption_builders",
        "lavis_vqa": "rslavis.datasets.builders.vqa_builders",
    },
    "task": {
        "captioning": "rslavis.tasks.captioning",
        "vqa": "rslavis.tasks.vqa",
        "scst": "rslavis.tasks.scst",
        "preference": "rslavis.tasks.preference",
        "grpo": "rslavis.tasks.grpo",
        "clip_pretrain": "rslavis.tasks.clip_pretrain",
    },
    "processor": {
        "rs_image_train": "rslavis.processors.image_processors",
        "rs_image_eval": "rslavis.processors.image_processors",
        "rs_caption": "rslavis.processors.text_processors",
        "rs_question": "rslavis.processors.text_processors",
        "blip_image_train": "rslavis.processors.lavis_processors",
        "blip2_image_train": "rslavis.processors.lavis_processors",
        "blip_image_eval": "rslavis.processors.lavis_processors",
        "clip_image_train": "rslavis.processors.lavis_processors",
        "clip_image_eval": "rslavis.processors.lavis_processors",
        "blip_caption": "rslavis.processors.lavis_processors",
        "blip_question": "rslavis.processors.lavis_processors",
    },
    "reward": {
        "cider": "rslavis.rewards.cider",
        "sde": "rslavis.rewards.sde",
        "count": "rslavis.rewards.count",
        "nkl": "rslavis.rewards.nkl",
        "length": "rslavis.rewards.length",
        "varentropy": "rslavis.rewards.varentropy",
        "learned_score": "rslavis.rewards.learned_score",
    },
    "lr_scheduler": {
        "linear_warmup_cosine_lr": "rslavis.runners.lr_schedulers",
        "linear_warmup_step_lr": "rslavis.runners.lr_schedulers",
        "constant_lr": "rslavis.runners.lr_schedulers",
    },
    "runner": {
        "runner_base": "rslavis.runners.runner_base",
    },
    "parser": {
        "spacy": "rslavis.text.spacy_parser",
        "rules": "rslavis.text.rules_parser",
        "hybrid": "rslavis.text.hybrid_parser",
        "factual": "rslavis.text.factual_parser",
    },
}

# Other names of registered things: LAVIS's names, so LAVIS project files resolve.
ALIASES = {
    "model": {
        "blip2_t5_instruct": "instructblip",
        "blip2_vicuna_instruct": "instructblip",
        "blip2_opt": "blip2",
        "blip2_t5": "blip2",
        "blip_caption": "blip",
    },
    "builder": {
        "coco_caption": "lavis_caption",
        "coco_vqa": "lavis_vqa",
    },
}
