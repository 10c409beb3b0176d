"""What a report is made of: number formats, and a list of blocks (headings, paragraphs, lists,
tables, figures) rendered to Markdown or to one self-contained HTML file."""
import base64
import html
import math
from pathlib import Path

import pandas as pd


def pct(x, digits=1):
    return "n/a" if missing(x) else f"{100 * x:.{digits}f}%"


def pct_ci(mean, ci):
    return pct(mean) + ("" if missing(ci) else f" ± {100 * ci:.1f}")


def pp_ci(gap, ci):
    if missing(gap):
        return "n/a"
    text = f"{100 * gap:+.1f} pp"
    return text + ("" if missing(ci) else f" [{100 * (gap - ci):+.1f}, {100 * (gap + ci):+.1f}]")


def pp_iv(gap, low, high):
    """A difference in points with its (asymmetric) interval: "+1.2 pp [-0.3, +2.7]"."""
    if missing(gap):
        return "n/a"
    text = f"{100 * gap:+.1f} pp"
    return text + ("" if missing(low) or missing(high) else f" [{100 * low:+.1f}, {100 * high:+.1f}]")


def times(x):
    return "n/a" if missing(x) else f"{x:.2f}x"


def ms(x):
    return "n/a" if missing(x) else f"{1e3 * x:.3g}"


def missing(x):
    return x is None or (isinstance(x, float) and math.isnan(x))


def show(frame, columns):
    """Select and rename columns for display; ``columns`` maps name -> (header, formatter or None)."""
    out = {}
    for name, (header, fmt) in columns.items():
        if name in frame:
            out[header] = frame[name].map(fmt) if fmt else frame[name]
    return pd.DataFrame(out)


class Report:
    def __init__(self):
        self.blocks = []

    def h(self, level, text):
        self.blocks.append(("h", level, text))

    def p(self, text):
        self.blocks.append(("p", text))

    def items(self, lines):
        if lines:
            self.blocks.append(("ul", list(lines)))

    def table(self, frame):
        if frame is not None and len(frame):
            self.blocks.append(("table", frame))

    def figure(self, png, caption):
        self.blocks.append(("img", Path(png), caption))

    def markdown(self, out_dir):
        lines = []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                lines += ["#" * block[1] + " " + block[2], ""]
            elif kind == "p":
                lines += [block[1], ""]
            elif kind == "ul":
                lines += [f"- {item}" for item in block[1]] + [""]
            elif kind == "table":
                frame = block[1].map(_text)
                cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
                lines.append("| " + " | ".join(cell(c) for c in frame.columns) + " |")
                lines.append("|" + "---|" * len(frame.columns))
                lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
                lines.append("")
            elif kind == "img":
                rel = block[1].relative_to(out_dir).as_posix()
                lines += [f"![{block[2]}]({rel})", "", f"*{block[2]}*", ""]
        return "\n".join(lines)

    def html(self, title):
        esc = html.escape
        body = []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                body.append(f"<h{block[1]}>{esc(block[2])}</h{block[1]}>")
            elif kind == "p":
                body.append(f"<p>{_inline(block[1])}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block[1]) + "</ul>")
            elif kind == "table":
                frame = block[1].map(_text)
                head = "".join(f"<th>{esc(str(c))}</th>" for c in frame.columns)
                rows = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>"
                               for row in frame.itertuples(index=False))
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif kind == "img":
                data = base64.b64encode(block[1].read_bytes()).decode()
                body.append(f'<figure><img alt="{esc(block[2])}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{esc(block[2])}</figcaption></figure>")
        style = ("body{font-family:sans-serif;max-width:72em;margin:2em auto;line-height:1.4}"
                 "table{border-collapse:collapse;font-size:85%}td,th{border:1px solid #ccc;padding:2px 6px}"
                 "img{max-width:100%}code{background:#f4f4f4}")
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
                f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def _text(value):
    """A table cell as text; missing values as "-" (pandas keeps NaN through astype(str))."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _inline(text):
    """Markdown ``code`` and **bold** spans to HTML, everything else escaped."""
    parts = html.escape(text).split("`")
    out = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    bold = out.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(bold))
