"""One table renderer for every table raybench shows: HTML (a caption, header scopes, inside a
box that scrolls on its own so the page never does), Markdown, and aligned console text."""

from __future__ import annotations

import html
from dataclasses import dataclass, field


@dataclass
class Table:
    caption: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)  # cells already formatted
    note: str = ""  # one sentence under the table: what the numbers mean, or why it is empty

    def __bool__(self) -> bool:
        return bool(self.rows)

    def _numeric(self, j: int) -> bool:
        cells = [r[j] for r in self.rows if j < len(r) and r[j] not in ("", "–")]
        return bool(cells) and all(c[:1].isdigit() or c[:1] in "+-−" for c in cells)

    def html(self) -> str:
        head = "".join(f'<th scope="col">{html.escape(c)}</th>' for c in self.columns)
        body = []
        for row in self.rows:
            cells = [f'<th scope="row">{html.escape(row[0])}</th>'] + [
                f'<td class="{"num" if self._numeric(j) else "txt"}">{html.escape(c)}</td>'
                for j, c in enumerate(row) if j > 0]
            body.append("<tr>" + "".join(cells) + "</tr>")
        note = f'<p class="note">{html.escape(self.note)}</p>' if self.note else ""
        if not self.rows:
            return f"<p><strong>{html.escape(self.caption)}:</strong> {html.escape(self.note)}</p>"
        return (f'<div class="table"><table><caption>{html.escape(self.caption)}</caption>'
                f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
                + note)

    def markdown(self) -> str:
        if not self.rows:
            return f"**{self.caption}:** {self.note}"

        def cell(c: str) -> str:
            return c.replace("|", "\\|")

        lines = [f"**{self.caption}**", "", "| " + " | ".join(map(cell, self.columns)) + " |",
                 "|" + "".join("---:|" if self._numeric(j) else "---|"
                               for j in range(len(self.columns)))]
        lines += ["| " + " | ".join(map(cell, r)) + " |" for r in self.rows]
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines)

    def text(self) -> str:
        """Aligned columns for a terminal: numbers right, words left."""
        if not self.rows:
            return f"{self.caption}: {self.note}"
        widths = [max(len(str(x)) for x in [c, *(r[j] for r in self.rows if j < len(r))])
                  for j, c in enumerate(self.columns)]

        def line(cells: list[str]) -> str:
            return "  ".join(c.rjust(w) if j and self._numeric(j) else c.ljust(w)
                             for j, (c, w) in enumerate(zip(cells, widths, strict=False)))

        head = line(self.columns)
        out = [self.caption, head, "-" * len(head)] + [line(r) for r in self.rows]
        if self.note:
            out.append(self.note)
        return "\n".join(s.rstrip() for s in out)
