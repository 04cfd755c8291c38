"""The report as one self-contained HTML page (``reports/index.html``): every table with its caption,
notes and provenance, every figure with its caption. Images are embedded as base64 ``data:`` URIs, so
the page shows everything when the file alone is copied or mailed.

On load the page writes each image's ``naturalWidth`` into a ``data-natural-width`` attribute: a
headless browser's dumped DOM then tells a decoded image from a broken one (tests/test_report_html.py).
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

import pandas as pd

from hmsa.io import atomic_write_text

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } td.text { text-align: left; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; margin-top: 0.3em; }
code { background: #f4f4f4; padding: 0 0.2em; } .notes { font-size: 0.9em; } nav li { margin: 0.1em 0; }
"""
# Records what the browser decoded (not what the HTML claims): a broken image has naturalWidth 0.
_CHECK = """
window.addEventListener("load", function () {
  for (const img of document.images) {
    img.setAttribute("data-natural-width", String(img.naturalWidth));
    img.setAttribute("data-loaded", img.complete && img.naturalWidth > 0 ? "1" : "0");
  }
  document.body.setAttribute("data-images-checked", String(document.images.length));
});
"""


def inline(text: str) -> str:
    """Escaped text with the report's bits of Markdown: `code`, *emphasis*."""
    out = html.escape(str(text))
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", out)


def _cell(value: object) -> tuple[str, bool]:
    """(HTML text, is numeric) of one table cell; NaN / None as "—", like the Markdown tables."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—", True
    if isinstance(value, bool):
        return str(value), False
    if isinstance(value, float):
        return f"{value:.2f}", True
    if isinstance(value, int):
        return str(value), True
    return inline(str(value)), False


def table_html(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for values in df.astype(object).itertuples(index=False):
        cells = [_cell(v) for v in values]
        rows.append("<tr>" + "".join(f"<td{'' if num else ' class=text'}>{t}</td>" for t, num in cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" data-file="{html.escape(path.name)}">'


def _section(sec: dict) -> str:
    parts = [f'<section id="{sec["name"]}"><h2>{inline(sec["title"])}</h2>', f"<p>{inline(sec['caption'])}</p>",
             table_html(sec["df"])]
    if sec.get("notes"):
        parts.append('<ul class="notes">' + "".join(f"<li>{inline(n)}</li>" for n in sec["notes"]) + "</ul>")
    prov = [line for line in sec.get("provenance", []) if line.strip()]
    if prov:
        parts.append(f"<details><summary>Provenance</summary>{_lines(prov)}</details>")
    return "\n".join(parts) + "</section>"


def _lines(lines: list[str]) -> str:
    """Markdown-ish lines: "- item" runs become lists, other lines paragraphs."""
    out, items = [], []
    for line in [*lines, ""]:
        if line.startswith("- "):
            items.append(f"<li>{inline(line[2:])}</li>")
            continue
        if items:
            out.append(f"<ul>{''.join(items)}</ul>")
            items = []
        if line:
            out.append(f"<p>{inline(line)}</p>")
    return "".join(out)


def _figures(figures: dict[str, list[Path]]) -> str:
    parts = ['<section id="figures"><h2>Figures</h2>']
    for caption, paths in figures.items():
        pngs = [p for p in paths if p.suffix == ".png"]
        if not pngs:
            parts.append(f"<p><em>{inline(caption.split(':')[0])}: not drawn (its inputs were not produced by "
                         "this pipeline).</em></p>")
            continue
        data = [p for p in paths if p.suffix != ".png"]
        extra = "".join(f' (data: <a href="figures/{html.escape(p.name)}">{html.escape(p.name)}</a>)' for p in data)
        for p in pngs:
            parts.append(f"<figure>{_img(p, caption)}<figcaption>{inline(caption)}. <code>{html.escape(p.name)}"
                         f"</code>{extra}</figcaption></figure>")
    return "\n".join(parts) + "</section>"


def render(title: str, intro: list[str], sections: list[dict], figures: dict[str, list[Path]]) -> str:
    """The whole page as a string."""
    toc = "".join(f'<li><a href="#{s["name"]}">{inline(s["title"])}</a></li>' for s in sections)
    toc += '<li><a href="#figures">Figures</a></li>'
    body = "\n".join(_section(s) for s in sections)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head>\n<body><h1>{html.escape(title)}</h1>"
            + "".join(f"<p>{inline(line)}</p>" for line in intro)
            + f"<nav><ul>{toc}</ul></nav>\n{body}\n{_figures(figures)}\n<script>{_CHECK}</script></body></html>\n")


def write_page(path: Path, title: str, intro: list[str], sections: list[dict], figures: dict[str, list[Path]]) -> Path:
    """Write the page atomically; returns its path."""
    atomic_write_text(Path(path), render(title, intro, sections, figures))
    return Path(path)
