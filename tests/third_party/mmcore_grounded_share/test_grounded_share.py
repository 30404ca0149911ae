"""grounded_share's own tests, as its authors would write them with mmcore.testing."""
from mmcore.testing import check_head
from mmcore_grounded_share.plugin import GroundedShare


def test_grounded_share_keeps_the_head_contract():
    report = check_head(GroundedShare)
    assert "finite scalar loss" in report.checked and "gradient reaches the backbone" in report.checked
