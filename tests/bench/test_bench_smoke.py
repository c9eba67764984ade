"""A smoke run of the benchmark suite at its tiny sizes, so that it keeps working."""

from pathlib import Path

import pytest

from bench.run import main


@pytest.mark.timeout(120)
def test_quick_suite_writes_page(test_image: str, tmp_path: Path) -> None:
    assert main(["--quick", "--docs-dir", str(tmp_path)]) == 0

    page = (tmp_path / "benchmarks.md").read_text()
    assert "| one-step `true` job, submit to finished |" in page
    assert "| projection rebuild |" in page
    assert "Docker server:" in page
    for plot in ("ratios.png", "absolute.png"):
        assert (tmp_path / "benchmarks" / plot).stat().st_size > 0
