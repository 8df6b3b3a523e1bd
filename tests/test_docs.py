"""docs/ holds prose, tables and figures (STYLE.md, 16): raw run outputs live in the ignored results/,
and every link in the docs points at something that exists (a renamed figure or run table shows here)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_anchor(m.group(1)) for m in re.finditer(r"^#+ (.+)$", page.read_text(), re.M)}


def test_docs_hold_only_pages_and_figures():
    raw = [p.relative_to(ROOT) for p in (ROOT / "docs").rglob("*")
           if p.is_file() and p.suffix not in {".md", ".png", ".svg"}]
    assert raw == [], f"raw outputs belong in results/ (ignored), not docs/: {raw}"
    assert "/results/" in (ROOT / ".gitignore").read_text().split()


def test_every_relative_link_in_the_docs_resolves():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#") and not target[1:]:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == [], "\n".join(broken)


def test_the_link_check_sees_a_broken_link(tmp_path):
    """The check above is not vacuous: it finds links, and tells a heading that exists from one that does not."""
    assert sum(len(LINK.findall(p.read_text())) for p in PAGES) > 20
    page = tmp_path / "p.md"
    page.write_text("# Training pools: the hand-made policies\n")
    assert _anchor("Training pools: the hand-made policies") in _anchors(page)
    assert "training-pools" not in _anchors(page)
