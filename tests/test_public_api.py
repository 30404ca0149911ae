"""Plugins use only mmcore's declared public surface (``mmcore.PUBLIC_MODULES``, the data toolkit that
``mmcore.data.__all__`` names, and each public module's own ``__all__``), the hooks are typed and documented, and the
run hooks receive a read-only ``RunInfo``, not the engine."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from test_end_to_end import run_cli, write_recipe

import mmcore
import mmcore.data
import mmcore.hookspecs

ROOT = Path(__file__).resolve().parents[1]
# The built-in plugins, and the third-party ones the tests install as their authors would write them.
PLUGIN_ROOTS = (ROOT / "plugins", ROOT / "tests" / "third_party")

Surface = dict[str, frozenset[str] | None]  # public module -> the names it offers (None: all of its names)


def public_surface() -> Surface:
    """Every public module with the names it offers, as ``mmcore`` and ``mmcore.data`` declare them."""
    modules = [*mmcore.PUBLIC_MODULES, *(f"mmcore.data.{name}" for name in mmcore.data.__all__)]
    return {name: _offered(importlib.import_module(name)) for name in modules}


def _offered(module: ModuleType) -> frozenset[str] | None:
    names = getattr(module, "__all__", None)
    return None if names is None else frozenset(names)


def _is_mmcore(module: str | None) -> bool:
    return module == "mmcore" or (module or "").startswith("mmcore.")  # not mmcore_pairs, a plugin's own package


def _offers(surface: Surface, module: str, name: str) -> bool:
    names = surface[module]
    return f"{module}.{name}" in surface or names is None or name in names


def _dotted(node: ast.expr) -> list[str] | None:
    """``a.b.c`` as ``["a", "b", "c"]``; None for anything but names and attributes."""
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else [*base, node.attr]
    return None


def violations(source: str, surface: Surface, where: str = "<plugin>") -> list[str]:
    """Every use of mmcore in ``source`` outside ``surface``: an import (at any level, in a function too) of a
    module that is not public or of a name a public module does not offer, and an attribute it does not offer of a
    public module bound to a name (``import mmcore``, ``from mmcore.data import views``)."""
    tree = ast.parse(source)
    bound: dict[str, str] = {}  # local name -> the public module it is
    found = [*_imports(tree, surface, bound), *_attributes(tree, surface, bound)]
    return list(dict.fromkeys(f"{where}:{line}: {what} is not public (see mmcore.PUBLIC_MODULES)"
                              for line, what in found))


def _imports(tree: ast.AST, surface: Surface, bound: dict[str, str]) -> Iterator[tuple[int, str]]:
    """(line, what) of each import outside ``surface``; records in ``bound`` the public modules it binds."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_mmcore(alias.name) and alias.name not in surface:
                    yield node.lineno, alias.name
                elif _is_mmcore(alias.name):  # ``import mmcore.api`` binds mmcore, ``... as api`` the module
                    bound[alias.asname or "mmcore"] = alias.name if alias.asname else "mmcore"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _is_mmcore(node.module):
            module = str(node.module)
            if module not in surface:
                yield node.lineno, module
                continue
            for alias in node.names:
                if f"{module}.{alias.name}" in surface:
                    bound[alias.asname or alias.name] = f"{module}.{alias.name}"
                elif not _offers(surface, module, alias.name):
                    yield node.lineno, f"{module}.{alias.name}"


def _attributes(tree: ast.AST, surface: Surface, bound: dict[str, str]) -> Iterator[tuple[int, str]]:
    """(line, what) of each attribute of a bound public module (``mmcore.registry``) that it does not offer."""
    for node in ast.walk(tree):
        parts = _dotted(node) if isinstance(node, ast.Attribute) else None
        if not parts or parts[0] not in bound:
            continue
        path = [*bound[parts[0]].split("."), *parts[1:]]
        # The longest prefix that is a public module, then the name that module must offer.
        depth = max(i for i in range(1, len(path) + 1) if ".".join(path[:i]) in surface)
        module = ".".join(path[:depth])
        if depth < len(path) and not _offers(surface, module, path[depth]):
            yield node.lineno, f"{module}.{path[depth]}"


def plugin_files() -> list[Path]:
    return sorted(p for root in PLUGIN_ROOTS for p in root.rglob("*.py"))


# ---- the checker ---------------------------------------------------------------------------------------------


def test_the_checker_flags_what_is_not_public():
    surface = public_surface()
    cases = {
        "from mmcore.registry import Registry": ["mmcore.registry"],
        "import mmcore.progress": ["mmcore.progress"],
        "def f():\n    from mmcore.errors import MMCoreError": ["mmcore.errors"],
        "from mmcore.api import Task, Engine": ["mmcore.api.Engine"],
        "from mmcore import report": ["mmcore.report"],
        "from mmcore.data import collate": ["mmcore.data.collate"],
        "from mmcore.data.store import _OPEN": ["mmcore.data.store._OPEN"],
        "from mmcore.data import annotations as ann\nann.read_vqa\nann.secret_helper()":
            ["mmcore.data.annotations.secret_helper"],
        "import mmcore\nmmcore.hookimpl\nmmcore.registry.Registry": ["mmcore.registry"],
        "import mmcore.api\nmmcore.api.Task\nmmcore.api.torch": ["mmcore.api.torch"],
    }
    for source, expected in cases.items():
        got = violations(source, surface, "p.py")
        assert [m.split(": ")[1].removesuffix(" is not public (see mmcore.PUBLIC_MODULES)") for m in got] == \
            expected, source
    assert violations("import mmcore.progress", surface, "p.py") == [
        "p.py:1: mmcore.progress is not public (see mmcore.PUBLIC_MODULES)"]


def test_the_checker_accepts_the_public_surface_and_other_packages():
    source = """
import numpy
import mmcore
import mmcore.api as api
from mmcore import MMCoreError, Registry, hookimpl
from mmcore.api import RunInfo, Task, did_you_mean
from mmcore.data import views
from mmcore.data.store import FeatureStore
from mmcore.runplots import run_plots
from mmcore.testing import check_task
from mmcore_pairs.views import build_view
from . import sibling
mmcore.hookimpl, api.Head, views.PairView, numpy.zeros
"""
    assert violations(source, public_surface()) == []


# ---- the declarations and the plugins ------------------------------------------------------------------------


def test_every_declared_name_exists():
    surface = public_surface()
    for module, names in surface.items():
        loaded = importlib.import_module(module)
        missing = sorted(n for n in names or () if not hasattr(loaded, n) and f"{module}.{n}" not in surface)
        assert not missing, f"{module}.__all__ names what it does not have: {', '.join(missing)}"


def test_plugins_import_only_the_public_surface():
    surface = public_surface()
    files = plugin_files()
    assert len(files) > 40  # the walk finds the built-in plugins
    found = [m for path in files for m in violations(path.read_text(encoding="utf-8"), surface,
                                                       str(path.relative_to(ROOT)))]
    assert not found, "plugins use what is not public:\n" + "\n".join(found)


# ---- the hooks -----------------------------------------------------------------------------------------------


def hookspecs() -> dict[str, object]:
    return {name: f for name, f in inspect.getmembers(mmcore.hookspecs, inspect.isfunction) if name.startswith("mmcore_")}


def test_every_hookspec_is_typed_and_documented_with_an_example():
    assert len(hookspecs()) >= 10
    for name, spec in hookspecs().items():
        for parameter in inspect.signature(spec).parameters.values():  # type: ignore[arg-type]
            assert parameter.annotation not in (inspect.Parameter.empty, "Any"), f"{name}({parameter.name})"
        assert "Example::" in (spec.__doc__ or "") and "@mmcore.hookimpl" in (spec.__doc__ or ""), name
    for name in ("mmcore_stage_start", "mmcore_stage_end", "mmcore_log"):
        assert inspect.signature(hookspecs()[name]).parameters["run"].annotation == "RunInfo"  # type: ignore[arg-type]


def test_one_hookimpl_marker():
    defined = [p for p in (ROOT / "mmcore").rglob("*.py") if "HookimplMarker(" in p.read_text(encoding="utf-8")]
    assert [p.relative_to(ROOT).as_posix() for p in defined] == ["mmcore/__init__.py"]


SEEN = '''
import json

import mmcore


def _changes(mapping):
    try:
        mapping["name"] = "changed"
    except TypeError:
        return False
    return True


@mmcore.hookimpl
def mmcore_stage_start(run, stage):
    seen = {"type": type(run).__name__, "run_dir": str(run.run_dir), "recipe_name": run.recipe_name,
            "seed": run.seed, "main": run.is_main_process, "world_size": run.world_size, "stage": stage["name"],
            "stage_changes": _changes(stage), "recipe_changes": _changes(run.recipe),
            "engine": hasattr(run, "plugins")}
    with open(run.run_dir / "seen.jsonl", "a") as handle:
        handle.write(json.dumps(seen) + "\\n")
'''


ONE_STEP = """\
name: tiny
seed: 3
backbone: {name: lxmert_s, hidden_size: 32, num_attention_heads: 2, intermediate_size: 64, x_layers: 2}
datasets:
  synthworld: {train_images: 16, val_images: 8, test_images: 8, vqa_train_images: 8, retrieval_train_images: 8,
               max_regions: 6, feature_dim: 16, hard_negatives_top: 4}
stages:
  - {name: token, data: {view: token}, tasks: {mlm: {}}, max_steps: 1, batch_size: 8, max_text_len: 12}
"""


def test_run_hooks_receive_a_read_only_run_info(tmp_path, monkeypatch):
    (tmp_path / "seen.py").write_text(SEEN)
    monkeypatch.setenv("MMCORE_PLUGINS", str(tmp_path / "seen.py"))
    run_cli(["run", str(write_recipe(tmp_path, ONE_STEP)), "--output-dir", str(tmp_path / "runs"), "--run-name", "a",
             "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    run_dir = tmp_path / "runs" / "tiny" / "a"
    seen = [json.loads(line) for line in (run_dir / "seen.jsonl").read_text().splitlines()]
    assert seen == [{"type": "RunInfo", "run_dir": str(run_dir), "recipe_name": "tiny", "seed": 3, "main": True,
                     "world_size": 1, "stage": "token", "stage_changes": False, "recipe_changes": False,
                     "engine": False}]
