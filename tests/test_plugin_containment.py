"""A broken installed plugin is contained and named; MMCORE_DISABLE_PLUGINS takes entry-point and distribution
names and warns about unknown ones; two distributions registering one name are both named."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import mmcore.plugins
from mmcore.errors import PluginError
from mmcore.plugins import load_plugins
from tests.helpers import invoke


def install(site: Path, dist: str, version: str, entry_point: str, module: str, source: str) -> None:
    """Make ``dist`` an installed distribution whose ``mmcore`` entry point ``entry_point`` is ``module``."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[mmcore]\n{entry_point} = {module}\n")
    (site / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def broken(third_party, monkeypatch):
    """Installs ``mmcore-broken`` 1.0, whose entry point ``brokenep`` fails to import."""
    monkeypatch.setattr(mmcore.plugins, "_warned", set())
    install(third_party, "mmcore-broken", "1.0", "brokenep", "mmcore_broken_mod", "import not_a_module_xyz\n")
    return third_party


def test_broken_entry_point_is_listed_and_other_commands_work(broken, monkeypatch):
    out = invoke(["plugins"], width=400)
    row = next(line for line in out.splitlines() if "brokenep" in line)
    assert "mmcore-broken" in row and "1.0" in row and "broken" in row and "ModuleNotFoundError" in row
    assert "mmcore_broken_mod" in row
    monkeypatch.setattr(mmcore.plugins, "_warned", set())  # as in a new process: each command warns once
    out = invoke(["list-tasks"], width=400)
    assert "mlm" in out and "grounded_count" in out
    assert out.count("warning:") == 1 and "plugin 'brokenep' (mmcore-broken 1.0) is broken" in out


def test_recipe_using_what_a_broken_plugin_would_register_names_it(broken, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("backbone: {name: lxmert_s}\ndatasets: {synthworld: {}}\n"
                      "stages:\n  - {name: a, data: {view: token}, tasks: {broken_task: {}}}\n")
    out = " ".join(invoke(["validate", str(recipe)], code=2, width=400).split())  # unwrapped
    assert "unknown task 'broken_task'" in out and "r.yaml:4" in out
    assert "plugin 'brokenep' (mmcore-broken 1.0), entry point brokenep = mmcore_broken_mod, failed to import" in out
    assert "Traceback" not in out


def test_disable_by_distribution_name_and_warn_about_unknown_names(broken, monkeypatch, capsys):
    monkeypatch.setenv("MMCORE_DISABLE_PLUGINS", "mmcore-broken, mmcore-grounded-count, no-such-plugin")
    plugins = load_plugins()
    assert plugins.infos["brokenep"].status == "disabled" and plugins.infos["grounded"].status == "disabled"
    assert "grounded_count" not in plugins.registry.names("task") and not plugins.broken()
    err = capsys.readouterr().err
    assert "MMCORE_DISABLE_PLUGINS names 'no-such-plugin', which is no plugin" in err
    assert "mmcore-broken" not in err.split("known:")[0]  # a known name is not warned about


def test_duplicate_registration_names_both_distributions(third_party, monkeypatch):
    install(third_party, "other-counts", "2.0", "counts", "other_counts_mod", """
        import mmcore
        from mmcore import Task

        class Again(Task):
            name = "grounded_count"

        @mmcore.hookimpl
        def mmcore_register_tasks(registry):
            registry.add_task(Again)
    """)
    with pytest.raises(PluginError) as info:
        load_plugins()
    message = str(info.value)
    assert "task 'grounded_count' is registered twice" in message
    assert "(mmcore-grounded-count 0.3.1)" in message and "(other-counts 2.0)" in message
