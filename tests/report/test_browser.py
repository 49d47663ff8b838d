"""The report as a person sees it: opened in headless Chromium, checked on the screen.

Needs Debian's ``chromium`` and ``chromium-driver`` packages (``.ci/run`` installs them)
and selenium (the ``test`` extra); skipped with a message when they are missing. The
driver is the local one: nothing is downloaded.
"""

import json
import shutil

import pytest

from prm.report import build_report
from prm.report.page import split_metrics

from .conftest import CLASSES, EVIL


def _find(*names):
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium not installed (pip install -e '.[test]')"
    )
    from selenium.webdriver.chrome.service import Service

    binary = _find("chromium", "chromium-browser", "google-chrome")
    driver_path = _find("chromedriver")
    if binary is None or driver_path is None:
        pytest.skip(
            "browser tests need chromium and chromedriver on PATH "
            "(Debian: apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_window_size(1280, 900)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    good, worse = runs
    return build_report(good, tmp_path_factory.mktemp("report") / "out", compare=worse)


def cell(value):
    """How a metric should read (written out again here, not imported from the page)."""
    if value is None:
        return "\u2013"
    if isinstance(value, int):
        return str(value)
    return f"{100 * value:.1f}"


def open_page(browser, path, width=1280):
    browser.set_window_size(width, 900)
    browser.get(path.resolve().as_uri())
    browser.execute_script("return document.readyState")
    return browser


def test_the_tables_show_the_numbers_of_metrics_json(browser, report, runs):
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    summary, columns, per_class = split_metrics(metrics, CLASSES)
    page = open_page(browser, report)
    shown = page.execute_script(
        "return Array.from(document.querySelectorAll('#summary tr[data-key]'))"
        ".map(r => [r.dataset.key, r.querySelector('td').innerText])"
    )
    assert dict(shown) == {key: cell(value) for key, value in summary.items()}
    assert any(key.startswith("instance/mAP_r@") for key, _ in shown)
    # The per-class table: one row per class with ground truth, one column per metric.
    header = page.execute_script(
        "return Array.from(document.querySelectorAll('#class-table thead th'))"
        ".map(h => h.innerText.replace(/[\\u25B2\\u25BC]/g, '').trim())"
    )
    assert header == ["class", *columns]
    rows = page.execute_script(
        "return Array.from(document.querySelectorAll('#class-table tbody tr'))"
        ".map(r => Array.from(r.cells).map(c => c.innerText))"
    )
    assert {row[0] for row in rows} == set(CLASSES)
    for row in rows:
        assert row[1:] == [cell(per_class[row[0]].get(c)) for c in columns]


def test_every_picture_loads(browser, report):
    page = open_page(browser, report)
    images = page.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete,"
        " i.naturalWidth])"
    )
    assert len(images) >= 20  # curves, photos, predictions, truths, PRMs, CRMs, comparison
    broken = [src for src, complete, width in images if not complete or width == 0]
    assert broken == []


def test_clicking_a_header_sorts_the_rows(browser, report):
    page = open_page(browser, report)
    column = "instance/AP_r@0.5"

    def values():
        return page.execute_script(
            "var t = document.getElementById('class-table');"
            "var col = Array.from(t.tHead.rows[0].cells).findIndex("
            f"  h => h.innerText.replace(/[\\u25B2\\u25BC]/g, '').trim() === '{column}');"
            "return Array.from(t.tBodies[0].rows).map(r => r.cells[col].dataset.value);"
        )

    before = values()
    button = page.execute_script(
        "return Array.from(document.querySelectorAll('#class-table thead button'))"
        f".find(b => b.innerText.trim() === '{column}')"
    )
    button.click()
    ascending = [float(v) for v in values() if v != ""]
    assert ascending == sorted(ascending)
    button.click()
    descending = [float(v) for v in values() if v != ""]
    assert descending == sorted(ascending, reverse=True)
    assert sorted(before) == sorted(values())  # the same rows, reordered
    assert len(set(ascending)) > 1  # the check could fail: the values differ


def test_a_class_name_with_a_script_tag_renders_as_text(browser, report):
    page = open_page(browser, report)
    assert page.execute_script("return window.pwned === undefined")
    assert page.execute_script("return document.scripts.length") == 1
    text = page.execute_script("return document.body.innerText")
    assert EVIL in text  # shown to the reader as the literal name
    assert "../img 0<b>" in text


def test_a_copied_report_works_offline_at_phone_and_desktop_width(browser, report, tmp_path):
    copy = shutil.copytree(report.parent, tmp_path / "elsewhere")
    for width in (1280, 390):
        page = open_page(browser, copy / "index.html", width)
        # Every picture comes from the copied folder (none from the original, none remote).
        sources = page.execute_script("return Array.from(document.images).map(i => i.currentSrc)")
        assert sources and all(s.startswith(copy.as_uri() + "/images/") for s in sources)
        broken = page.execute_script(
            "return Array.from(document.images).filter(i => i.naturalWidth === 0).length"
        )
        assert broken == 0
        # No sideways scrolling of the page itself (wide tables scroll in their box).
        overflow = page.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth"
        )
        assert overflow <= 0, f"page {overflow} px wider than a {width} px window"
