"""Docstrings of the attention code link into docs/attention.md: every link names a real section."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
LINK = re.compile(r"docs/attention\.md#([a-z0-9-]+)")


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 -]", "", title).replace(" ", "-"))
    return anchors


def test_docstring_links_name_sections_of_attention_md():
    anchors = _anchors((ROOT / "docs" / "attention.md").read_text())
    links = {
        (str(path.relative_to(ROOT)), anchor)
        for package in ("lcm", "kernels_pallas")
        for path in (ROOT / package).rglob("*.py")
        for anchor in LINK.findall(path.read_text())
    }
    assert len(links) >= 15  # the attention modules and kernels each link their section
    missing = sorted((path, anchor) for path, anchor in links if anchor not in anchors)
    assert not missing, f"links to sections docs/attention.md lacks: {missing}"
