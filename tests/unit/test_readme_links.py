"""Every in-page link of README.md (its contents list included) names a heading that exists."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def anchors(text: str) -> set[str]:
    """GitHub's heading ids: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    out, fenced = set(), False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6} (.+)", line)):
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return out


def test_every_in_page_link_names_a_heading() -> None:
    text = README.read_text()
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links, "no in-page links"
    assert links <= anchors(text), f"links to no heading: {sorted(links - anchors(text))}"


def test_contents_lists_every_section() -> None:
    text = README.read_text()
    contents = text.split("**Contents**", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"\]\(#([^)]+)\)", contents))
    sections = {a for a in anchors("\n".join(line for line in text.splitlines() if line.startswith("## ")))}
    assert sections <= listed, f"sections missing from Contents: {sorted(sections - listed)}"
