"""JupyterLab in a real browser: JupyterLab on localhost, driven by Playwright in headless
Chromium (Debian's package). Chinese text renders with real glyphs (a CJK font is installed:
`make browser`), and the explorer notebook runs, a widget is changed and the page checked."""

import json
import os
import shutil
import time

import pytest
from browser.lab import CHROMIUM, CHROMIUM_ARGS, JupyterLab

from prefstudy.paths import REPO

NOTEBOOK = REPO / "notebooks" / "05_explorer.ipynb"
ARTIFACTS = REPO / "tests" / "artifacts"
SCREENSHOT = ARTIFACTS / "browser_explorer.png"
CJK_NOTEBOOK = "cjk.ipynb"
CJK_TEXT = "中文偏好对：请礼貌地拒绝这个请求"  # a Chinese line as the bundled zh pairs hold

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} missing: `make browser` installs Debian's chromium")
playwright = pytest.importorskip("playwright.sync_api",
                                 reason="playwright missing: pip install playwright")
pytest.importorskip("jupyterlab", reason="jupyterlab missing: pip install jupyterlab")


def _cjk_notebook() -> dict:
    """A notebook whose saved output and markdown hold `CJK_TEXT`: Lab renders both on opening,
    no kernel needed."""
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
            "cells": [{"cell_type": "markdown", "id": "zh-md", "metadata": {},
                       "source": f"## {CJK_TEXT}"},
                      {"cell_type": "code", "id": "zh-code", "metadata": {}, "execution_count": 1,
                       "source": f"print({CJK_TEXT!r})",
                       "outputs": [{"output_type": "stream", "name": "stdout",
                                    "text": f"{CJK_TEXT}\n"}]}]}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab serving a copy of the explorer notebook (running it must not write outputs
    into the committed one) and the CJK notebook; stopped, kernels and all, whatever the tests
    do. Its kernels read the committed runs ($PREFSTUDY_RUNS unset)."""
    root = tmp_path_factory.mktemp("lab-root")
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    (root / CJK_NOTEBOOK).write_text(json.dumps(_cjk_notebook(), ensure_ascii=False))
    server = JupyterLab(root, tmp_path_factory.mktemp("jupyter"), unset=("PREFSTUDY_RUNS",))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pw():
    with playwright.sync_playwright() as pw:
        yield pw


def _launch(pw, **env: str):
    return pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
                              env={**os.environ, **env} if env else None)


# Each character of `text` that is not ASCII, drawn alone in the element's font on a canvas
# (PNG data URLs), beside two unassigned code points: what a font-less character looks like.
GLYPHS_JS = """(element, text) => {
  const family = getComputedStyle(element).fontFamily;
  const draw = (char) => {
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = 48;
    const context = canvas.getContext("2d");
    context.font = `32px ${family}`;
    context.fillText(char, 4, 36);
    return canvas.toDataURL();
  };
  const chars = [...text].filter((c) => c.codePointAt(0) > 0x2e7f);
  return {family, chars, glyphs: chars.map(draw), tofu: [draw("\u0378"), draw("\u0379")]};
}"""


def _tofu(element, text: str) -> list[str]:
    """The characters of `text` drawn as the missing-glyph box (tofu) in `element`'s font."""
    drawn = element.evaluate(GLYPHS_JS, text)
    assert drawn["chars"] and drawn["tofu"][0] == drawn["tofu"][1], drawn["family"]
    return [c for c, glyph in zip(drawn["chars"], drawn["glyphs"]) if glyph == drawn["tofu"][0]]


def test_the_tofu_check_sees_a_missing_cjk_font(pw, tmp_path):
    """The check below fails where no font has CJK glyphs: fontconfig given only DejaVu."""
    dejavu = next((d for d in ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu")
                   if os.path.isdir(d)), None)
    if dejavu is None:
        pytest.skip("no DejaVu fonts to stand for a machine without a CJK font")
    config = tmp_path / "fonts.conf"
    config.write_text(f"<?xml version='1.0'?><fontconfig><dir>{dejavu}</dir>"
                      f"<cachedir>{tmp_path / 'cache'}</cachedir></fontconfig>")
    browser = _launch(pw, FONTCONFIG_FILE=str(config))
    try:
        page = browser.new_page()
        page.set_content(f"<pre>{CJK_TEXT}</pre>")
        assert _tofu(page.locator("pre"), CJK_TEXT) == [c for c in CJK_TEXT if ord(c) > 0x2e7f]
    finally:
        browser.close()


def test_chinese_renders_in_jupyterlab(lab, pw):
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / ".gitignore").write_text("*\n")  # test output, never committed
    browser = _launch(pw)
    try:
        page = browser.new_page(viewport={"width": 1000, "height": 600})
        page.set_default_timeout(60_000)
        page.goto(lab.url(f"lab/tree/{CJK_NOTEBOOK}?reset"))
        output = page.locator(".jp-OutputArea-output pre", has_text=CJK_TEXT).first
        heading = page.locator(".jp-RenderedMarkdown h2", has_text=CJK_TEXT).first
        output.wait_for()
        heading.wait_for()
        dialog = page.locator(".jp-Dialog")  # "Select Kernel": none is needed to show outputs
        dialog.get_by_role("button", name="No Kernel").click()
        dialog.wait_for(state="detached")
        page.locator(".jp-Notebook").screenshot(path=str(ARTIFACTS / "browser_cjk.png"))
        for element in (output, heading):
            missing = _tofu(element, CJK_TEXT)
            assert not missing, (f"{''.join(missing)} drawn as boxes: no CJK font (`make browser`"
                                 " installs fonts-wqy-microhei)")
    finally:
        browser.close()


def _src(page, selector: str) -> str:
    return page.locator(selector).first.get_attribute("src") or ""


@pytest.mark.slow
@pytest.mark.skipif(not any((REPO / "reports" / "runs").glob("*/meta.json")),
                    reason="no committed runs in reports/runs (`make study` trains them)")
def test_explorer_runs_and_reacts_in_jupyterlab(lab, pw):
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / ".gitignore").write_text("*\n")  # test output, never committed
    started = time.time()
    browser = _launch(pw)
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
