"""grounded_count's own tests, as its authors would write them with mmcore.testing."""
from pathlib import Path

from mmcore.testing import check_task, tiny_run
from mmcore_grounded_count.plugin import GroundedCount


def test_grounded_count_keeps_the_task_contract():
    check_task(GroundedCount, scale=2.0)


def test_a_tiny_recipe_trains_it(tmp_path):
    recipe = Path(__file__).with_name("tiny.yaml")
    results = tiny_run(recipe, plugins=["mmcore_grounded_count.plugin"], directory=tmp_path)
    assert results["_stages"]["grounded"]["steps"] == 2 and "final_grounded_count" in results["_stages"]["grounded"]
