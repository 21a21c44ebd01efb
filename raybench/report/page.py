"""The report as a page: the findings first, then one section per directory. HTML is one
self-contained file that fits any screen (tables scroll inside their own box, images scale, a
viewport tag, `lang`, captions and header scopes, nothing told by colour alone); Markdown keeps
its figures as files beside it, for code hosts that strip `data:` images."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from raybench import artifacts
from raybench.report.sections import Section

STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;margin:0 auto;padding:1rem;max-width:72rem;line-height:1.45;
color:#1a1a1a}
h1{font-size:1.6rem}h2{font-size:1.3rem;margin-top:2rem;border-bottom:1px solid #ccc}
.findings{border:2px solid #1a4f8b;border-radius:6px;padding:.5rem 1rem;background:#f2f6fb}
.findings li{margin:.3rem 0}
.table{overflow-x:auto;max-width:100%;margin:.8rem 0}
table{border-collapse:collapse;font-size:.85rem}
caption{text-align:left;font-weight:600;padding:.3rem 0}
th,td{border:1px solid #ccc;padding:.2rem .5rem;vertical-align:top}
thead th{background:#eef0f3}
td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
td.txt{text-align:left}
th[scope=row]{text-align:left;font-weight:normal;white-space:nowrap}
.note{font-size:.85rem;color:#444;margin-top:0}
figure{margin:1rem 0}img{max-width:100%;height:auto;display:block}
figcaption{font-size:.85rem;color:#444}
"""


def html_page(sections: list[Section], title: str = "raybench report") -> str:
    findings = [x for s in sections for x in s.findings]
    parts = ['<!doctype html><html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             '<section class="findings" aria-label="Findings"><h2 id="findings">Findings</h2>',
             "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in findings) + "</ul>"
             if findings else "<p>Nothing to report: no section produced a finding.</p>",
             "</section>",
             "<nav><ul>" + "".join(f'<li><a href="#{s.anchor}">{html.escape(s.title)}</a></li>'
                                   for s in sections) + "</ul></nav>"]
    for s in sections:
        parts.append(f'<section><h2 id="{s.anchor}">{html.escape(s.title)}</h2>')
        parts += [f"<p>{html.escape(x)}</p>" for x in s.sentences]
        parts += [t.html() for t in s.tables]
        for fig in s.figures:
            data = base64.b64encode(fig.png).decode()
            parts.append(f'<figure><img alt="{html.escape(fig.alt)}" '
                         f'src="data:image/png;base64,{data}"><figcaption>'
                         f"{html.escape(fig.alt)}</figcaption></figure>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def markdown_page(sections: list[Section], out: Path, title: str = "raybench report") -> str:
    """Markdown, its figures written into `<name>_files/` beside it and linked relatively."""
    folder = out.with_name(out.stem + "_files")
    lines = [f"# {title}", "", "## Findings", ""]
    findings = [x for s in sections for x in s.findings]
    lines += [f"- {x}" for x in findings] or ["Nothing to report."]
    for s in sections:
        lines += ["", f"## {s.title}", ""]
        lines += [x + "\n" for x in s.sentences]
        lines += [t.markdown() + "\n" for t in s.tables]
        for fig in s.figures:
            folder.mkdir(parents=True, exist_ok=True)
            artifacts.write_bytes(folder / fig.name, fig.png)
            lines.append(f"![{fig.alt}]({folder.name}/{fig.name})\n")
    return "\n".join(lines) + "\n"
