"""Registry: decorators, type checks, errors, lazy built-ins, plugins, index consistency."""

import importlib
import pkgutil
import textwrap

import pytest

import rslavis
from rslavis.common.builtin_index import BUILTINS
from rslavis.common.errors import RegistryKeyError, RslavisError
from rslavis.rewards.base_reward import BaseReward
from tests.conftest import run_python


class _Len(BaseReward):
    def __call__(self, generated, references, **extra):
        return self.as_tensor([len(g.split()) for g in generated])


def test_decorator_and_plain_call(fresh_registry):
    reg = fresh_registry
    decorated = reg.register_reward("len_a")(_Len)
    assert decorated is _Len
    reg.register_reward("len_b", _Len)
    assert reg.get_reward_class("len_a") is _Len
    assert reg.get_reward_class("len_b") is _Len
    assert {"len_a", "len_b"} <= set(reg.list_rewards())


def test_type_checked_against_base_class(fresh_registry):
    class NotAReward:
        pass

    with pytest.raises(RslavisError, match="subclass of rslavis.rewards.base_reward.BaseReward"):
        fresh_registry.register_reward("bad", NotAReward)


def test_duplicate_name_needs_force(fresh_registry):
    class Other(_Len):
        pass

    fresh_registry.register_reward("dup", _Len)
    with pytest.raises(RslavisError, match="already registered"):
        fresh_registry.register_reward("dup", Other)
    fresh_registry.register_reward("dup", Other, force=True)
    assert fresh_registry.get_reward_class("dup") is Other


def test_unknown_name_lists_names_and_closest_match():
    with pytest.raises(KeyError) as info:
        rslavis.registry.get_model_class("smalcap")
    err = info.value
    assert isinstance(err, RegistryKeyError)
    msg = str(err)
    assert "Did you mean 'smallcap'?" in msg
    assert "Registered models:" in msg and "smallcap" in msg
    with pytest.raises(RegistryKeyError, match="linear_warmup_cosine_lr"):
        rslavis.registry.get_lr_scheduler_class("linear_warmup_cosin")


@pytest.mark.parametrize("kind", ["models", "builders", "tasks", "processors", "rewards", "lr_schedulers", "runners"])
def test_list_functions_exist(kind):
    names = getattr(rslavis.registry, f"list_{kind}")()
    assert names == sorted(names)


def test_import_and_listing_are_light():
    code = textwrap.dedent(
        """
        import sys, rslavis
        rslavis.registry.list_models(); rslavis.registry.list_rewards(); rslavis.registry.list_builders()
        heavy = [m for m in ("torch", "transformers", "open_clip", "faiss", "spacy", "omegaconf") if m in sys.modules]
        loaded = [m for m in sys.modules if m.startswith("rslavis.models.") or m.startswith("rslavis.rewards.")]
        print(heavy, loaded)
        """
    )
    out = run_python(["-c", code])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] []"


def test_lookup_imports_only_the_defining_module():
    code = textwrap.dedent(
        """
        import sys, rslavis
        rslavis.registry.get_lr_scheduler_class("constant_lr")
        print(sorted(m for m in sys.modules if m.startswith("rslavis.models") or m == "transformers"))
        """
    )
    out = run_python(["-c", code])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _import_all_rslavis_modules():
    skip = {"rslavis.train", "rslavis.evaluate"}
    for info in pkgutil.walk_packages(rslavis.__path__, "rslavis."):
        if info.name in skip or info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)


def test_builtin_index_matches_decorators():
    """Every indexed name is registered by its module, and every built-in registration is indexed."""
    _import_all_rslavis_modules()
    reg = rslavis.registry
    for kind, names in BUILTINS.items():
        registered = reg.registered(kind)
        for name, module in names.items():
            assert name in registered, f"index lists {kind} {name!r} in {module} but nothing registers it"
            assert registered[name].__module__ == module, f"{kind} {name!r} is registered in {registered[name].__module__}, index says {module}"
        for name, cls in registered.items():
            if cls.__module__.startswith("rslavis."):
                assert name in names, f"{kind} {name!r} ({cls.__module__}) is missing from rslavis/common/builtin_index.py"


def test_entry_point_plugin_is_loaded(tmp_path):
    """A package declaring the ``rslavis.plugins`` entry point registers its names before lookup."""
    pkg = tmp_path / "ep_plugin_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            """
            from rslavis import registry
            from rslavis.rewards.base_reward import BaseReward

            @registry.register_reward("ep_words")
            class Words(BaseReward):
                def __call__(self, generated, references, **extra):
                    return self.as_tensor([len(g.split()) for g in generated])
            """
        )
    )
    dist = tmp_path / "ep_plugin_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[rslavis.plugins]\nep_words = ep_plugin_pkg\n")
    code = "import rslavis; print('ep_words' in rslavis.registry.list_rewards()); print(rslavis.registry.get_reward_class('ep_words')().__call__(['a b c'], [['x']]).tolist())"
    out = run_python(["-c", code], env={"PYTHONPATH": f"{tmp_path}"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "[3.0]"]
