"""The explorer in a real browser: JupyterLab on localhost, driven by Playwright in headless
Chromium (Debian's package). The notebook is run, a widget changed, and the page checked."""

import shutil
import time

import pytest
from browser.lab import CHROMIUM, CHROMIUM_ARGS, JupyterLab

from prefstudy.paths import REPO

NOTEBOOK = REPO / "notebooks" / "05_explorer.ipynb"
ARTIFACTS = REPO / "tests" / "artifacts"
SCREENSHOT = ARTIFACTS / "browser_explorer.png"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason=f"{CHROMIUM} missing: `make browser` installs Debian's chromium"),
    pytest.mark.skipif(not any((REPO / "reports" / "runs").glob("*/meta.json")),
                       reason="no committed runs in reports/runs (`make study` trains them)"),
]
playwright = pytest.importorskip("playwright.sync_api",
                                 reason="playwright missing: pip install playwright")
pytest.importorskip("jupyterlab", reason="jupyterlab missing: pip install jupyterlab")


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """JupyterLab serving a copy of the explorer notebook (running it must not write outputs
    into the committed one); stopped, kernels and all, whatever the test does."""
    monkeypatch.delenv("PREFSTUDY_RUNS", raising=False)  # the kernel reads the committed runs
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    server = JupyterLab(root, tmp_path / "jupyter")
    try:
        yield server.start()
    finally:
        server.stop()


def _src(page, selector: str) -> str:
    return page.locator(selector).first.get_attribute("src") or ""


def test_explorer_runs_and_reacts_in_jupyterlab(lab):
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / ".gitignore").write_text("*\n")  # test output, never committed
    started = time.time()
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(120_000)
            page.goto(lab.url(f"lab/tree/{NOTEBOOK.name}?reset"))
            page.wait_for_selector(".jp-Notebook .jp-Cell")
            page.wait_for_function("() => window.jupyterapp && window.jupyterapp.commands"
                                   ".hasCommand('notebook:run-all-cells')")
            page.wait_for_function(  # the notebook's kernel has started and is idle
                "() => { const s = window.jupyterapp.shell.currentWidget?.sessionContext;"
                " return s?.session?.kernel?.status === 'idle'; }")
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")

            explorer = ".prefstudy-explorer"
            image = f"{explorer} .prefstudy-trajectories img"
            page.wait_for_selector(image)
            page.wait_for_selector(".prefstudy-what-if .prefstudy-figure img")
            status = page.locator(f"{explorer} .prefstudy-status")
            assert "objectives: naive-sum, dpo, simpo" in status.inner_text()
            before = _src(page, image)

            page.locator(f"{explorer} .prefstudy-objectives select").select_option(["dpo"])
            page.wait_for_function(
                "([sel, old]) => { const img = document.querySelector(sel);"
                " return img && img.getAttribute('src') !== old; }", arg=[image, before])
            assert "objectives: dpo ·" in status.inner_text()
            assert _src(page, image).startswith("data:image/png")

            page.locator(explorer).scroll_into_view_if_needed()
            page.screenshot(path=str(SCREENSHOT))
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 10_000
    assert time.time() - started < 120
