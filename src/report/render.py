"""Rendering the report: one Doc collects the content once and renders it as HTML and as Markdown.
Text from runs is escaped in both."""

from __future__ import annotations

import html

import pandas as pd

from src import analysis as A


def md_text(text) -> str:
    """Text from runs (errors, names, paths) made inert in Markdown: HTML escaped as in index.html."""
    return html.escape(str(text), quote=False)


def md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(none)_\n"
    esc = lambda v: md_text(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in df.itertuples(index=False, name=None)]
    return "\n".join(lines) + "\n"


def html_table(df: pd.DataFrame, cls: str = "") -> str:
    if df.empty:
        return "<p><em>(none)</em></p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in df.itertuples(index=False, name=None)
    )
    return f'<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
  margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px;background:#fff;box-shadow:0 0 12px rgba(0,0,0,.06)}
h1{font-size:1.55rem;margin:.2em 0 .1em}
h2{font-size:1.2rem;margin-top:1.8em;border-bottom:2px solid #e4e7ec;padding-bottom:4px}
h3{font-size:1.0rem;margin:1.1em 0 .3em;color:#334}
.meta{color:#5b6475;font-size:.9rem;margin-bottom:1em} code{background:#f0f2f5;padding:1px 4px;border-radius:3px}
.verdict{background:#f3f7ff;border-left:4px solid #3b6fd8;padding:8px 18px 10px;margin:12px 0}
.verdict ul{margin:.2em 0 .6em;padding-left:1.2em} .verdict li{margin:.25em 0;line-height:1.4}
.status span{display:inline-block;margin-right:10px;padding:2px 10px;border-radius:12px;font-size:.88rem;
  background:#eef0f3}
.status .completed{background:#dff3e4;color:#14532d} .status .failed{background:#fde2e1;color:#7f1d1d}
.status .interrupted,.status .running,.status .pruned{background:#fff3cd;color:#6b4f00}
.scroll{overflow-x:auto} table{border-collapse:collapse;font-size:.84rem;margin:6px 0 14px}
th,td{border:1px solid #dde1e7;padding:3px 8px;text-align:left;white-space:nowrap} th{background:#f0f2f5}
tbody tr:nth-child(even){background:#fafbfc}
figure{margin:14px 0 26px} figure img{max-width:100%;height:auto;border:1px solid #e4e7ec}
figcaption{color:#4a5263;font-size:.88rem;margin-top:4px}
details summary{cursor:pointer;font-weight:600;margin:8px 0}
"""


class Doc:
    """Collects the report once and renders it as HTML and Markdown (same content)."""

    def __init__(self):
        self.html: list[str] = []
        self.md: list[str] = []

    def h(self, level: int, text: str):
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")
        self.md.append("#" * level + " " + md_text(text) + "\n")

    def p(self, text: str, cls: str = ""):
        self.html.append(f'<p class="{cls}">{html.escape(text)}</p>' if cls else f"<p>{html.escape(text)}</p>")
        self.md.append(md_text(text) + "\n")

    def raw(self, html_text: str, markdown: str):
        self.html.append(html_text)
        self.md.append(markdown)

    def table(self, df: pd.DataFrame, collapsed: str | None = None):
        t = html_table(df)
        self.html.append(f"<details><summary>{html.escape(collapsed)}</summary>{t}</details>" if collapsed else t)
        self.md.append(md_table(df))

    def figure(self, file: str, caption: str):
        self.html.append(
            f'<figure><img src="{html.escape(file)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        self.md.append(f"![{md_text(caption)}]({file})\n\n_{md_text(caption)}_\n")

    def verdict(self, sections):
        parts = []
        for title, lines in sections:
            items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
            parts.append(f"<h3>{html.escape(title)}</h3><ul>{items}</ul>")
        self.html.append('<div class="verdict">' + "".join(parts) + "</div>")
        self.md.append(A.verdict_markdown([(md_text(t), [md_text(ln) for ln in lines]) for t, lines in sections]))

    def page(self, title: str) -> str:
        """index.html: one self-contained page, the CSS inline."""
        return (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body><main>"
            + "\n".join(self.html)
            + "</main></body></html>\n"
        )

    def markdown(self) -> str:
        return "\n".join(self.md)
