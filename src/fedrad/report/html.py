"""report.html: the same tables as report.md and the figures, self-contained (PNGs as base64)."""

from __future__ import annotations

import base64
import html

from fedrad.report.sections import Section

STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
    "th,td{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}"
    "td:first-child,th:first-child{text-align:left}p.note{color:#555;font-size:13px}img{max-width:100%}"
)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(title: str, intro: str, sections: list[Section], figures: dict[str, bytes]) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p class='note'>{html.escape(intro)}</p>"]  # fmt: skip
    for name, note, header, rows in sections:
        parts += [f"<h2>{html.escape(name)}</h2>", f"<p class='note'>{html.escape(note)}</p>", _table(header, rows)]
    for name, png in figures.items():
        data = base64.b64encode(png).decode()
        alt = html.escape(name)
        parts += [f"<h2>{alt}</h2>", f"<img alt='{alt}' src='data:image/png;base64,{data}'>"]
    parts.append("</body></html>")
    return "\n".join(parts)
