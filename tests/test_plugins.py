"""Plugin loading: a third party's real entry point, MMCORE_PLUGINS, MMCORE_DISABLE_PLUGINS, duplicate names."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmcore.cli import main
from mmcore.errors import PluginError
from mmcore.plugins import load_plugins


def test_entry_point_plugin_registers_with_distribution(third_party):
    plugins = load_plugins()
    entry = plugins.registry.get("task", "grounded_count")
    assert entry.origin == "grounded"
    info = plugins.infos["grounded"]
    assert (info.source, info.distribution, info.version) == ("entry point", "mmcore-grounded-count", "0.3.1")
    assert "task grounded_count" in info.registered


def test_list_tasks_and_plugins_show_third_party(third_party, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich sizes tables from COLUMNS when not on a terminal
    runner = CliRunner()
    result = runner.invoke(main, ["list-tasks"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "grounded_count" in result.output and "grounded" in result.output
    result = runner.invoke(main, ["plugins"], terminal_width=250)
    assert result.exit_code == 0
    assert "mmcore-grounded-count" in result.output and "0.3.1" in result.output


def test_disable_plugins(third_party, monkeypatch):
    monkeypatch.setenv("MMCORE_DISABLE_PLUGINS", "grounded")
    plugins = load_plugins()
    assert "grounded_count" not in plugins.registry.names("task")


def _plugin_file(path: Path, task_name: str) -> Path:
    path.write_text(textwrap.dedent(f"""
        import mmcore
        from mmcore import Task

        class T(Task):
            '''A task from a loose file.'''
            name = {task_name!r}

        @mmcore.hookimpl
        def mmcore_register_tasks(registry):
            registry.add_task(T)
    """))
    return path


def test_mmcore_plugins_env_loads_files(tmp_path, monkeypatch):
    path = _plugin_file(tmp_path / "loose_tasks.py", "loose")
    monkeypatch.setenv("MMCORE_PLUGINS", str(path))
    plugins = load_plugins()
    assert plugins.registry.get("task", "loose").origin == "loose_tasks"
    assert plugins.infos["loose_tasks"].source == "MMCORE_PLUGINS"


def test_duplicate_name_names_both_plugins(tmp_path, monkeypatch):
    first = _plugin_file(tmp_path / "first_plugin.py", "same")
    second = _plugin_file(tmp_path / "second_plugin.py", "same")
    monkeypatch.setenv("MMCORE_PLUGINS", f"{first},{second}")
    with pytest.raises(PluginError) as info:
        load_plugins()
    assert "first_plugin" in str(info.value) and "second_plugin" in str(info.value) and "'same'" in str(info.value)


def test_missing_plugin_file_is_a_clean_cli_error(monkeypatch):
    monkeypatch.setenv("MMCORE_PLUGINS", "/nonexistent/plugin.py")
    result = CliRunner().invoke(main, ["list-tasks"])
    assert result.exit_code == 2
    assert "plugin file not found: /nonexistent/plugin.py" in result.output
    assert "Traceback" not in result.output
