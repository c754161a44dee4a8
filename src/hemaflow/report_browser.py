"""Open the workflow's HTML report in headless Chromium, as a person would see it.

Snakemake's report is a JavaScript application: the categories, figures and captions exist
only once it has run in a browser. ``check_report`` loads a copy of the report with a
small script appended that walks the application (every category, subcategory and
result: its caption panel, and each image shown in the content pane) and writes what the
page then shows into a ``<pre>`` that ``chromium --dump-dom`` returns. ``screenshot``
opens one view (the landing page, or a category's result with its figure) and saves a PNG.

Nothing here imports Snakemake; the report's globals (``app``, ``categories``,
``results``) are those of Snakemake 9's report template."""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_ENV = "HEMAFLOW_CHROMIUM"
RESULT_ELEMENT = "hemaflow-report-check"
# virtual time the page may use (setTimeout waits advance it, not the wall clock)
VIRTUAL_TIME_MS = 120_000

_WALK = """
<script>
(function () {
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const text = () => document.body.innerText;
  async function walk() {
    const out = {landing: "", categories: {}, errors: []};
    for (let k = 0; k < 100 && typeof app === "undefined"; k++) await sleep(50);
    await sleep(200);
    out.landing = text();
    for (const [category, subcategories] of Object.entries(categories)) {
      app.showCategory(category);
      await sleep(100);
      const entry = {menu: text(), subcategories: {}};
      for (const [subcategory, paths] of Object.entries(subcategories)) {
        app.setView({navbarMode: "subcategory", category: category, subcategory: subcategory});
        await sleep(100);
        const sub = {menu: text(), results: {}};
        for (const path of paths) {
          const result = results[path];
          app.showResultInfo(path);
          await sleep(100);
          const shown = {name: result.name, mime_type: result.mime_type, info: text()};
          if ((result.mime_type || "").startsWith("image/")) {
            app.setView({content: "img", contentPath: result.data_uri, resultPath: path});
            await sleep(300);
            const img = Array.from(document.images).find((i) => i.src === result.data_uri);
            shown.image = img ? [img.naturalWidth, img.naturalHeight] : null;
          }
          sub.results[path] = shown;
        }
        entry.subcategories[subcategory] = sub;
      }
      out.categories[category] = entry;
    }
    return out;
  }
  function publish(value) {
    const pre = document.createElement("pre");
    pre.id = "%(element)s";
    pre.textContent = JSON.stringify(value);
    document.body.appendChild(pre);
  }
  window.addEventListener("load", () => {
    walk().then(publish, (error) => publish({errors: [String(error)]}));
  });
})();
</script>
"""

_VIEW = """
<script>
window.addEventListener("load", () => {
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  (async () => {
    for (let k = 0; k < 100 && typeof app === "undefined"; k++) await sleep(50);
    const view = %(view)s;
    if (view.category) {
      app.showCategory(view.category);
      await sleep(100);
      if (view.subcategory) {
        app.setView({navbarMode: "subcategory", category: view.category,
                     subcategory: view.subcategory});
        await sleep(100);
      }
      if (view.info) { app.showResultInfo(view.info); await sleep(100); }
      if (view.image) {
        app.setView({content: "img", contentPath: results[view.image].data_uri,
                     resultPath: view.image});
      }
    }
  })();
});
</script>
"""


class ChromiumMissing(RuntimeError):
    """No Chromium on this machine (``apt-get install chromium``, or HEMAFLOW_CHROMIUM)."""


def find_chromium() -> str | None:
    """``$HEMAFLOW_CHROMIUM``, else the first Chromium or Chrome on the PATH, else None."""
    explicit = os.environ.get(CHROMIUM_ENV)
    if explicit:
        return explicit if shutil.which(explicit) else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _chromium(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    binary = find_chromium()
    if binary is None:
        raise ChromiumMissing(
            f"no Chromium found (tried ${CHROMIUM_ENV}, {', '.join(CHROMIUM_NAMES)}); "
            "install it with `apt-get install chromium`"
        )
    with tempfile.TemporaryDirectory(prefix="hemaflow-chromium-") as profile:
        command = [
            binary,
            "--headless",
            "--no-sandbox",  # root in a container has no user namespace sandbox
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={VIRTUAL_TIME_MS}",
            *args,
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def _with_script(report: Path, script: str, folder: Path) -> Path:
    """A copy of the report with ``script`` before ``</body>``."""
    page = Path(report).read_text(encoding="utf-8")
    at = page.rfind("</body>")
    if at < 0:
        raise ValueError(f"{report}: not an HTML page (no </body>)")
    copy = folder / "report.html"
    copy.write_text(page[:at] + script + page[at:], encoding="utf-8")
    return copy


def check_report(report: str | Path, timeout: float = 300) -> dict[str, Any]:
    """What the report shows in a browser: ``landing`` (the first page's text) and, per
    category and subcategory, the menu text and per result its caption panel text
    (``info``) and, for an image, the size it rendered at (``image``: [w, h], 0 when the
    image did not decode)."""
    with tempfile.TemporaryDirectory(prefix="hemaflow-report-") as folder:
        page = _with_script(Path(report), _WALK % {"element": RESULT_ELEMENT}, Path(folder))
        result = _chromium(["--dump-dom", page.as_uri()], timeout)
    dom = result.stdout
    start = dom.find(f'<pre id="{RESULT_ELEMENT}">')
    if start < 0:
        raise RuntimeError(
            f"{report}: the check script never reported (chromium exit {result.returncode}); "
            f"last stderr: {result.stderr[-2000:]}"
        )
    start = dom.index(">", start) + 1
    return json.loads(html.unescape(dom[start : dom.index("</pre>", start)]))


def screenshot(
    report: str | Path,
    out_png: str | Path,
    *,
    category: str | None = None,
    subcategory: str | None = None,
    info: str | None = None,
    image: str | None = None,
    size: tuple[int, int] = (1280, 800),
    timeout: float = 300,
) -> Path:
    """A PNG of one view of the report: the landing page, or a category (and subcategory)
    with a result's caption panel (``info``) and an image result in the content pane."""
    view = {"category": category, "subcategory": subcategory, "info": info, "image": image}
    out_png = Path(out_png).resolve()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hemaflow-report-") as folder:
        page = _with_script(Path(report), _VIEW % {"view": json.dumps(view)}, Path(folder))
        result = _chromium(
            [f"--screenshot={out_png}", f"--window-size={size[0]},{size[1]}", page.as_uri()],
            timeout,
        )
    if not out_png.is_file():
        raise RuntimeError(
            f"chromium wrote no screenshot {out_png} (exit {result.returncode}): "
            f"{result.stderr[-2000:]}"
        )
    return out_png
