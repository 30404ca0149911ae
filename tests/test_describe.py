"""Every plugin's options are visible with their types and defaults: list-*, --verbose, describe, the docs."""

from __future__ import annotations

from mmcore.describe import option_rows
from mmcore.plugins import load_plugins
from tests.helpers import invoke


def test_list_tasks_shows_each_option_with_type_and_default(third_party):
    out = invoke(["list-tasks"], width=400)
    row = next(line for line in out.splitlines() if "itm_hs" in line)
    assert "replace_prob: float = 0.5" in row
    assert "top_m: int = 100" in out and "balance_negatives: bool = false" in out and "max_predictions: int | null = null" in out
    assert "scale: float = 1.0" in next(line for line in out.splitlines() if "grounded_count" in line)


def test_every_list_command_shows_options():
    assert "train_images: int" in invoke(["list-datasets"], width=400)
    assert "hidden_size: int = 768" in invoke(["list-backbones"], width=400)
    assert "grid_size: int = 6" in invoke(["data", "extractors"], width=400)
    assert "(none)" in invoke(["list-tasks"], width=400)  # titp has no options, and says so


def test_describe_and_verbose_give_the_docstring_and_the_plugin(third_party):
    out = invoke(["describe", "grounded_count"], width=200)
    assert "plugin 'grounded' (mmcore-grounded-count 0.3.1)" in out
    assert "Regress the share of real regions" in out and "scale" in out and "float" in out
    verbose = invoke(["list-tasks", "--verbose"], width=200)
    assert "balance_negatives  bool   false" in verbose and "hub images then stop being mostly mismatched" in verbose
    out = invoke(["describe", "grounded_cout"], code=2)
    assert "did you mean 'grounded_count'" in out


def test_option_types_follow_the_checker(third_party):
    registry = load_plugins().registry
    assert option_rows(registry.get("task", "grounded_count")) == [("scale", "float", "1.0")]
    rows = option_rows(registry.get("task", "mlm"))
    assert ("mask_prob", "float", "0.15") in rows and ("max_predictions", "int | null", "null") in rows
