"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

THIRD_PARTY = Path(__file__).parent / "third_party"


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    """Make ``mmcore-grounded-count`` an installed distribution with an ``mmcore`` entry point."""
    site = tmp_path / "site"
    dist = site / "mmcore_grounded_count-0.3.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mmcore-grounded-count\nVersion: 0.3.1\n")
    (dist / "entry_points.txt").write_text("[mmcore]\ngrounded = mmcore_grounded_count.plugin\n")
    monkeypatch.syspath_prepend(str(THIRD_PARTY))
    monkeypatch.syspath_prepend(str(site))
    return site
