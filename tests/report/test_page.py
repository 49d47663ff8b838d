"""The HTML file itself: self-contained, escaped, rebuilt from the run folder."""

import re

import pytest

from prm.cli import main
from prm.report import build_report

from .conftest import EVIL


def test_the_page_is_self_contained_and_escapes_data(runs, tmp_path):
    good, worse = runs
    page = build_report(good, tmp_path / "out", compare=worse)
    text = page.read_text()
    # Only our own script; the hostile class name and image ids appear escaped.
    assert text.count("<script") == 1
    assert EVIL not in text and "&lt;script&gt;window.pwned=1&lt;/script&gt;" in text
    assert "<b>" not in text and "../img 0&lt;b&gt;" in text
    # Pictures by relative path, all present; nothing fetched from the network.
    sources = re.findall(r'src="([^"]+)"', text)
    assert sources and all(s.startswith("images/") for s in sources)
    assert all((page.parent / s).is_file() for s in sources)
    assert "http://" not in text and "https://" not in text
    assert "<link" not in text
    # Every gallery image has its photo, prediction, ground truth, PRMs and CRMs, and the
    # comparison shows the other run on the same images.
    assert len(re.findall(r"g\d{3}-photo\.png", text)) >= 4
    assert re.search(r"g000-prm00\.png", text) and re.search(r"g000-crm00\.png", text)
    assert re.search(r"c000-other\.png", text)
    assert 'id="compare-class-table"' in text
    # Counts differ by counts, fractions by percentage points.
    compared = text[text.index('id="compare-table"') :]
    row = re.search(r'data-key="instance/num_predictions">(.*?)</tr>', compared).group(1)
    assert re.findall(r">([^<]*)</td>", row) == ["18", "15", "+3"]


def test_rebuilding_replaces_old_pictures(runs, tmp_path):
    good, _ = runs
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "images" / "stale.png").write_bytes(b"x")
    build_report(good, out)
    assert not (out / "images" / "stale.png").exists()


def test_prm_report_rebuilds_from_the_run_folder(runs, tmp_path, capsys):
    good, worse = runs
    out = tmp_path / "copy"
    assert main(["report", str(good), "--out", str(out), "--compare", str(worse)]) == 0
    assert (out / "index.html").is_file()
    assert str(out / "index.html") in capsys.readouterr().out


def test_a_folder_without_metrics_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "metrics.json: not found" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        build_report(tmp_path / "nope")
