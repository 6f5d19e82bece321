"""The registry: names used in YAML configs mapped to classes.

Eight kinds of things are registered: models, dataset builders, tasks, processors,
rewards, learning-rate schedulers, runners and caption parsers. Each has a decorator that doubles as a
plain call::

    @registry.register_reward("my_reward")
    class MyReward(BaseReward): ...

    registry.register_reward("my_reward", MyReward)      # same thing

Built-in names resolve lazily through :mod:`rslavis.common.builtin_index`: a lookup
imports only the module that defines the name. Third-party packages add names through
the ``rslavis.plugins`` entry-point group or a project YAML's ``plugins:`` list; both
are imported before an unknown name is reported.
"""

import importlib
import logging
import threading

from rslavis.common.builtin_index import ALIASES, BUILTINS
from rslavis.common.errors import RegistryKeyError, RslavisError

logger = logging.getLogger(__name__)

PLUGIN_GROUP = "rslavis.plugins"

# kind -> (dotted path of the base class a registered class must subclass, plural noun)
_KINDS = {
    "model": ("rslavis.models.base_model.BaseModel", "models"),
    "builder": ("rslavis.datasets.builders.base_builder.BaseDatasetBuilder", "dataset builders"),
    "task": ("rslavis.tasks.base_task.BaseTask", "tasks"),
    "processor": ("rslavis.processors.base_processor.BaseProcessor", "processors"),
    "reward": ("rslavis.rewards.base_reward.BaseReward", "rewards"),
    "lr_scheduler": ("rslavis.runners.lr_schedulers.BaseLRScheduler", "lr schedulers"),
    "runner": ("rslavis.runners.runner_base.RunnerBase", "runners"),
    "parser": ("rslavis.text.base_parser.BaseCaptionParser", "caption parsers"),
}


def _import_dotted(path):
    module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def closest_match(name, candidates, preferred=()):
    """The candidate closest to ``name``, or None when nothing is close.

    Containment comes first (``blip_captions`` -> ``blip_caption``; ``caption_coco`` ->
    ``coco_caption`` by shared parts), preferring names in ``preferred`` (aliases), then
    the difflib ratio."""
    import difflib  # only needed on the error path

    name = str(name)
    candidates = list(candidates)
    preferred = set(preferred)
    low = name.lower()
    contained = [c for c in candidates if c.lower() in low or low in c.lower()]
    if not contained:  # same underscore-separated parts in another order
        parts = set(low.split("_"))
        contained = [c for c in candidates if len(parts) > 1 and set(c.lower().split("_")) == parts]
    if contained:
        ratio = lambda c: difflib.SequenceMatcher(None, low, c.lower()).ratio()  # noqa: E731
        return max(contained, key=lambda c: (c in preferred, ratio(c)))
    found = difflib.get_close_matches(name, [c for c in candidates if c in preferred], n=1, cutoff=0.75)
    if not found:
        found = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    return found[0] if found else None


class Registry:
    """Name-to-class mapping for every registrable kind (see module docstring)."""

    def __init__(self, builtins=None, aliases=None):
        self._classes = {kind: {} for kind in _KINDS}
        self._builtins = builtins if builtins is not None else BUILTINS
        self._aliases = {kind: dict((aliases if aliases is not None else ALIASES).get(kind, {})) for kind in _KINDS}
        self._plugins_loaded = False
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ registering
    def register(self, kind, name, cls=None, force=False):
        """Register ``cls`` under ``name``; without ``cls`` return a decorator."""
        if kind not in _KINDS:
            raise RslavisError(f"Unknown registry kind {kind!r}; valid kinds: {', '.join(_KINDS)}.")
        if not isinstance(name, str) or not name:
            raise RslavisError(f"A registered {kind} name must be a non-empty string, got {name!r}.")

        def add(klass):
            base_path = _KINDS[kind][0]
            is_base = isinstance(klass, type) and f"{klass.__module__}.{klass.__qualname__}" == base_path
            if not is_base and not (isinstance(klass, type) and issubclass(klass, _import_dotted(base_path))):
                base = _import_dotted(base_path)
                raise RslavisError(
                    f"Cannot register {klass!r} as {kind} {name!r}: it must be a subclass of "
                    f"{base.__module__}.{base.__qualname__}."
                )
            with self._lock:
                existing = self._classes[kind].get(name)
                if existing is not None and existing is not klass and not force:
                    raise RslavisError(
                        f"The {kind} name {name!r} is already registered by "
                        f"{existing.__module__}.{existing.__qualname__}; pass force=True to replace it."
                    )
                self._classes[kind][name] = klass
            return klass

        return add if cls is None else add(cls)

    def register_alias(self, kind, alias, target):
        """Make ``alias`` another name of the registered ``target`` (e.g. LAVIS's names)."""
        if kind not in _KINDS:
            raise RslavisError(f"Unknown registry kind {kind!r}; valid kinds: {', '.join(_KINDS)}.")
        with self._lock:
            if alias in self._classes[kind] or alias in self._builtins.get(kind, {}):
                raise RslavisError(f"Cannot make {alias!r} an alias: it is a registered {kind} name itself.")
            self._aliases[kind][alias] = target

    def aliases(self, kind):
        """``{alias: target}`` of ``kind``."""
        return dict(self._aliases[kind])

    def register_model(self, name, cls=None, force=False):
        return self.register("model", name, cls, force)

    def register_builder(self, name, cls=None, force=False):
        return self.register("builder", name, cls, force)

    def register_task(self, name, cls=None, force=False):
        return self.register("task", name, cls, force)

    def register_processor(self, name, cls=None, force=False):
        return self.register("processor", name, cls, force)

    def register_reward(self, name, cls=None, force=False):
        return self.register("reward", name, cls, force)

    def register_lr_scheduler(self, name, cls=None, force=False):
        return self.register("lr_scheduler", name, cls, force)

    def register_runner(self, name, cls=None, force=False):
        return self.register("runner", name, cls, force)

    def register_parser(self, name, cls=None, force=False):
        return self.register("parser", name, cls, force)

    # ------------------------------------------------------------------ plugins
    def load_plugins(self, modules=(), force_entry_points=False):
        """Import entry-point plugins (once) and the given module names (each time asked)."""
        if not self._plugins_loaded or force_entry_points:
            self._plugins_loaded = True
            from importlib.metadata import entry_points

            for ep in entry_points(group=PLUGIN_GROUP):
                try:
                    ep.load()
                except Exception as exc:  # a broken plugin must not hide every other name
                    logger.warning("rslavis plugin %r (%s) failed to load: %s", ep.name, ep.value, exc)
        for mod in modules or ():
            try:
                importlib.import_module(mod)
            except ImportError as exc:
                raise RslavisError(
                    f"Plugin module {mod!r} (listed under 'plugins:') cannot be imported: {exc}. "
                    "Install its package or fix the module path."
                ) from exc
            except RslavisError:
                raise
            except Exception as exc:  # the plugin's own code failed while importing: name it and where
                import traceback

                frame = traceback.extract_tb(exc.__traceback__)[-1]
                raise RslavisError(
                    f"Plugin module {mod!r} (listed under 'plugins:') raised {type(exc).__name__} while importing, "
                    f"at {frame.filename}:{frame.lineno}: {exc}. Fix the plugin (--debug shows the traceback)."
                ) from exc

    # ------------------------------------------------------------------ looking up
    def get(self, kind, name):
        """The class registered as ``name`` (or an alias of it); raises :class:`RegistryKeyError` if unknown."""
        name = self._aliases[kind].get(name, name)
        with self._lock:
            if name in self._classes[kind]:
                return self._classes[kind][name]
            module = self._builtins.get(kind, {}).get(name)
            if module is not None:
                importlib.import_module(module)
                if name in self._classes[kind]:
                    return self._classes[kind][name]
                raise RslavisError(
                    f"Internal index error: module {module} does not register {kind} {name!r}."
                )
            self.load_plugins()
            if name in self._classes[kind]:
                return self._classes[kind][name]
        names = self.list(kind)
        plural = _KINDS[kind][1]
        aliases = self._aliases[kind]
        guess = closest_match(name, names, preferred=aliases)
        hint = f" Did you mean {guess!r}{f' (an alias of {aliases[guess]!r})' if guess in aliases else ''}?" if guess else ""
        listed = [f"{n} (alias of {aliases[n]})" if n in aliases else n for n in names]
        raise RegistryKeyError(
            f"Unknown {kind.replace('_', ' ')} {name!r}.{hint} Registered {plural}: "
            f"{', '.join(listed) if listed else '(none)'}."
        )

    def list(self, kind):
        """Sorted names of ``kind``: built-ins (not imported), registered and plugin names, and aliases."""
        self.load_plugins()
        return sorted(set(self._classes[kind]) | set(self._builtins.get(kind, {})) | set(self._aliases[kind]))

    def describe(self, kind):
        """``{name: None for a class's own name, or the name an alias points to}`` (sorted)."""
        return {n: self._aliases[kind].get(n) for n in self.list(kind)}

    def get_model_class(self, name):
        return self.get("model", name)

    def get_builder_class(self, name):
        return self.get("builder", name)

    def get_task_class(self, name):
        return self.get("task", name)

    def get_processor_class(self, name):
        return self.get("processor", name)

    def get_reward_class(self, name):
        return self.get("reward", name)

    def get_lr_scheduler_class(self, name):
        return self.get("lr_scheduler", name)

    def get_runner_class(self, name):
        return self.get("runner", name)

    def get_parser_class(self, name):
        return self.get("parser", name)

    def list_models(self):
        return self.list("model")

    def list_builders(self):
        return self.list("builder")

    def list_tasks(self):
        return self.list("task")

    def list_processors(self):
        return self.list("processor")

    def list_rewards(self):
        return self.list("reward")

    def list_lr_schedulers(self):
        return self.list("lr_scheduler")

    def list_runners(self):
        return self.list("runner")

    def list_parsers(self):
        return self.list("parser")

    def registered(self, kind):
        """Names actually registered so far (imported), for index consistency checks."""
        return dict(self._classes[kind])


registry = Registry()
