"""The one-page report (``reports/index.html``) in headless Chromium: every table and figure is on it,
every image decodes (the browser's own ``naturalWidth`` equals the PNG's width), the page alone works
when copied elsewhere, and one broken image is caught."""

from __future__ import annotations

import base64
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from browser import dump_dom
from PIL import Image
from test_report import built  # noqa: F401 - the fixture: a report built from generated results


class _Page(HTMLParser):
    """The attributes of every <img>, of <body>, and the <h2> and <figcaption> texts of a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict[str, str]] = []
        self.body: dict[str, str] = {}
        self.texts: dict[str, list[str]] = {"h2": [], "figcaption": [], "table": []}
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.imgs.append(a)
        elif tag == "body":
            self.body = a
        elif tag in self.texts:
            self._open = tag
            self.texts[tag].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == self._open:
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open:
            self.texts[self._open][-1] += data


def _rendered(path: Path) -> _Page:
    page = _Page()
    page.feed(dump_dom(path.as_uri()))
    return page


@pytest.mark.slow
def test_every_table_and_figure_renders_and_every_image_loads(built: tuple, tmp_path: Path) -> None:  # noqa: F811
    _, out, _, written = built
    html_path = out / "index.html"
    assert html_path in written
    pngs = {p.name: p for p in (out / "figures").glob("*.png")}
    # the page alone, away from figures/: images are embedded, so it must not need them
    alone = tmp_path / "copied" / "index.html"
    alone.parent.mkdir()
    shutil.copyfile(html_path, alone)
    page = _rendered(alone)
    assert page.body.get("data-images-checked") == str(len(pngs)) == str(len(page.imgs))
    assert sorted(i["data-file"] for i in page.imgs) == sorted(pngs)
    for img in page.imgs:  # what the browser decoded: the PNG's real width, not a claim of the page
        with Image.open(pngs[img["data-file"]]) as png:
            assert int(img["data-natural-width"]) == png.width, img["data-file"]
        assert img["data-loaded"] == "1"
    titles = " | ".join(page.texts["h2"])
    for t in ("Table 1", "Table 2", "Table 3: per-class IoU, ours on", "Table 4", "Claims", "Convergence",
              "Auto-labels", "Figures"):
        assert t in titles
    assert len(page.texts["table"]) == 7  # tables 1-4, claims, convergence, auto-labels
    captions = " | ".join(page.texts["figcaption"])
    assert all(f"Figure {n}" in captions for n in (3, 4, 5)) and "Training curves" in captions

    # break one image: the same check must catch it, and only it
    text = alone.read_text()
    victim = "figure5_qualitative.png"
    m = re.search(r'src="data:image/png;base64,([^"]+)"[^>]*data-file="' + re.escape(victim) + '"', text)
    assert m is not None
    garbage = base64.b64encode(b"this is not a PNG file" * 8).decode()
    broken = tmp_path / "broken.html"
    broken.write_text(text[:m.start(1)] + garbage + text[m.end(1):])
    imgs = {i["data-file"]: i for i in _rendered(broken).imgs}
    assert imgs[victim]["data-natural-width"] == "0" and imgs[victim]["data-loaded"] == "0"
    assert all(i["data-loaded"] == "1" for name, i in imgs.items() if name != victim)
