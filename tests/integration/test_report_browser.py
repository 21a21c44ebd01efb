"""The report opened in a real browser (Debian's Chromium, driven by Playwright; .ci/run installs
it): it fits a 1280 px and an 800 px screen, every section is there for inputs that have it, and
no interval of a positive quantity has a negative bound."""

from __future__ import annotations

import re
import shutil

import pytest

from raybench import report
from tests import report_inputs as inputs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (.ci/run installs it)")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def page_html(tmp_path_factory, request):
    tmp = tmp_path_factory.mktemp("report")
    npz = request.getfixturevalue("reg_npz")
    dirs = [inputs.a_run(tmp, npz), inputs.throughput_sweep(tmp), inputs.target_sweep(tmp),
            inputs.target_sweep(tmp, "missed", reached=False), inputs.chaos_sweep(tmp),
            inputs.streaming_sweep(tmp), inputs.tune_sweep(tmp)]
    out = tmp / "report.html"
    assert report.main([*map(str, dirs), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.mark.parametrize("width", [1280, 800])
def test_the_report_fits_the_screen(browser, page_html, width):
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto(page_html.as_uri())
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    # tables scroll inside their own box; images scale down
    for img_width in page.evaluate("[...document.images].map(i => i.getBoundingClientRect()"
                                   ".width)"):
        assert img_width <= width
    assert page.evaluate("document.documentElement.lang") == "en"
    assert page.evaluate("!!document.querySelector('meta[name=viewport]')")
    assert page.evaluate("[...document.images].every(i => i.alt.length > 20)")
    assert page.evaluate("[...document.querySelectorAll('table')].every(t => t.caption)")
    page.close()


def test_every_section_is_there_and_no_bound_goes_negative(browser, page_html):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(page_html.as_uri())
    text = page.inner_text("body")
    page.close()
    # findings first, then each kind of figure the inputs hold
    assert text.index("Findings") < text.index("Run run_1")
    for needle in ("than the naive baseline", "Throughput per launcher and N",
                   "Paired comparisons", "Forecasts, made from the N=1 point",
                   "Time to val_r2>=0.9", "0 of 6 runs reached val_r2>=0.9",
                   "The cost of faults", "Ingest", "Memory", "What each N costs",
                   "Where it was measured", "Best trials by auc", "passed before the first "
                   "training step", "from launch", "not started", "forecast (not run)"):
        assert needle in text, needle
    # numbers for people: shares in %, no hyphen between bounds, no negative bound
    assert "%" in text and "(empty)" not in text
    for low, high in re.findall(r"95% CI (-?[\d.,]+)–(-?[\d.,]+)", text):
        assert not low.startswith("-"), (low, high)
