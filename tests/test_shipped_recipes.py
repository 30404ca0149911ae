"""Shipped recipes by name from any directory, and a CLI that answers --help, --version and completion at once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from mmcore.shipped import shipped_recipes
from tests.helpers import invoke


def test_recipes_lists_each_shipped_recipe_on_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = invoke(["recipes"]).splitlines()
    names = [line.split()[0] for line in lines]
    assert names[:4] == ["downstream_all", "inspect_msp", "msp_tps", "vanilla"]
    assert {"base/lxmert_s_cpu", "ablations/t_s", "paper/msp_tps_lxmert_data"} <= set(names)
    assert len(lines) == len(shipped_recipes())
    msp = next(line for line in lines if line.startswith("msp_tps "))
    assert "token -> phrase -> sentence" in msp


def test_show_and_validate_a_shipped_recipe_by_name_outside_a_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shown = yaml.safe_load(invoke(["show", "msp_tps"]))
    assert shown["name"] == "msp_tps" and [s["name"] for s in shown["stages"]] == ["token", "phrase", "sentence"]
    assert "ok msp_tps: token → phrase → sentence" in invoke(["validate", "msp_tps", "ablations/t_s.yaml"])


def test_a_users_recipe_includes_shipped_bases_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text(textwrap.dedent("""\
        include: [msp_tps]
        name: mine
        stages:
          - {name: token, data: {view: token}, tasks: {mlm: {}}, epochs: 1, batch_size: 8}
        """))
    (tmp_path / "parts.yaml").write_text("include: [base/lxmert_s_cpu, base/synthworld, base/downstream.yaml]\n"
                                         "name: parts\nstages: []\n")
    resolved = yaml.safe_load(invoke(["show", "mine.yaml"]))
    assert resolved["name"] == "mine" and [s["name"] for s in resolved["stages"]] == ["token"]
    assert [f["name"] for f in resolved["finetune"]] == ["vqa", "retrieval"]  # from msp_tps's downstream base
    parts = yaml.safe_load(invoke(["show", "parts.yaml"]))
    assert parts["backbone"]["name"] == "lxmert_s" and "synthworld" in parts["datasets"]


def test_a_local_file_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "synthworld.yaml").write_text("datasets: {synthworld: {train_images: 77}}\n")
    (tmp_path / "r.yaml").write_text("include: [msp_tps, base/synthworld.yaml]\nname: r\n")
    assert yaml.safe_load(invoke(["show", "r.yaml"]))["datasets"]["synthworld"]["train_images"] == 77


def test_unknown_names_say_what_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = " ".join(invoke(["show", "msp_tp"], code=2).split())
    assert "no shipped recipe has that name (did you mean 'msp_tps'?); `mmcore recipes` lists" in out
    (tmp_path / "r.yaml").write_text("include: [base/lxmert_s_cp]\n")
    out = " ".join(invoke(["show", "r.yaml"], code=2).split())
    assert "r.yaml:1: include[0]: included file not found" in out and "did you mean 'base/lxmert_s_cpu'?" in out


def _fresh(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          env={**os.environ, **env})


def test_help_version_and_completion_import_neither_torch_nor_plugins():
    probe = textwrap.dedent("""\
        import sys
        from mmcore.cli import main
        for args in (["--help"], ["--version"], ["run", "--help"]):
            try:
                main(args)
            except SystemExit as exit:
                assert exit.code == 0, (args, exit.code)
        heavy = sorted(m for m in sys.modules if m == "torch" or m.startswith(("numpy", "mmcore_")))
        print("HEAVY", heavy, file=sys.stderr)
        """)
    proc = _fresh(probe)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stderr
    assert "Commands:" in proc.stdout and "export" in proc.stdout and "recipes" in proc.stdout
    completion = _fresh("import sys\nfrom mmcore.cli import main\ntry:\n    main(prog_name='mmcore')\n"
                        "except SystemExit:\n    pass\nprint('HEAVY', 'torch' in sys.modules, file=sys.stderr)",
                        COMP_WORDS="mmcore ", COMP_CWORD="1", _MMCORE_COMPLETE="bash_complete")
    assert "HEAVY False" in completion.stderr, completion.stderr
    assert {"plain,run", "plain,export", "plain,data", "plain,recipes"} <= set(completion.stdout.split())
    names = _fresh("from mmcore.cli import main\ntry:\n    main(prog_name='mmcore')\nexcept SystemExit:\n    pass\n",
                   COMP_WORDS="mmcore run ablations/t_", COMP_CWORD="2", _MMCORE_COMPLETE="bash_complete")
    assert {"plain,ablations/t_s", "plain,ablations/t_p_s", "file,ablations/t_"} <= set(names.stdout.split())


def test_a_command_a_plugin_adds_runs_by_name(tmp_path, monkeypatch):
    plugin = tmp_path / "hello_command.py"
    plugin.write_text(textwrap.dedent("""\
        import click
        import mmcore

        @mmcore.hookimpl
        def mmcore_register_commands(cli):
            @cli.command(name="hello")
            def hello():
                '''Say hello.'''
                click.echo("hello from a plugin")
        """))
    proc = subprocess.run([sys.executable, "-m", "mmcore", "hello"], capture_output=True, text=True, check=False,
                          env={**os.environ, "MMCORE_PLUGINS": str(plugin)})
    assert (proc.returncode, proc.stdout) == (0, "hello from a plugin\n"), proc.stderr


def test_the_wheel_carries_every_shipped_recipe():
    """pyproject's package-data patterns match every file under mmcore/recipes (a deeper folder would be left out)."""
    import fnmatch
    import tomllib

    from mmcore.shipped import shipped_dir

    root = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["mmcore"]
    files = [p.relative_to(shipped_dir().parent).as_posix() for p in shipped_dir().rglob("*") if p.is_file()]
    assert files and all(any(fnmatch.fnmatch(f, pattern) and f.count("/") == pattern.count("/") for pattern in patterns)
                         for f in files), files
