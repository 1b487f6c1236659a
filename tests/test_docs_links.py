"""The README stays page one (at most 12 KiB) and every relative link in the docs leads somewhere.

Links are checked the way GitHub renders them: a path relative to the page that holds the link,
and an optional ``#anchor`` that must be a heading of the target page (GitHub's slug: lower
case, punctuation dropped, spaces as hyphens, ``-1``, ``-2`` … for repeated headings).
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_LIMIT_BYTES = 12 * 1024

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target); the target ends at whitespace (an optional "title" follows).
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _prose_lines(text: str) -> list[str]:
    """The page's lines outside fenced code blocks, with inline code spans blanked."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays, its target goes
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").strip().lower()
    kept = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in _prose_lines(page.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    links = []
    for line in _prose_lines(page.read_text(encoding="utf-8")):
        for match in _LINK.finditer(_INLINE_CODE.sub("", line)):
            target = match.group(1)
            if not _SCHEME.match(target) and not target.startswith("//"):
                links.append(target)
    return links


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        destination = (page.parent / unquote(path_part)).resolve() if path_part else page
        shown = f"{page.relative_to(root)}: {target}"
        if not destination.exists():
            broken.append(f"{shown} (no such file)")
            continue
        if anchor and (destination.suffix != ".md" or unquote(anchor).lower() not in anchors(destination)):
            broken.append(f"{shown} (no such heading in {destination.name})")
    return broken


def test_readme_is_at_most_12_kib():
    size = len(README.read_bytes())
    assert size <= README_LIMIT_BYTES, f"README.md is {size} bytes; page one holds at most {README_LIMIT_BYTES}"


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path):
    assert broken_links(page) == []


def test_every_docs_page_is_indexed():
    """A page nobody links to is a page nobody finds: the README's or docs/README.md's index names each."""
    indexed = set()
    for index in (README, DOCS / "README.md"):
        if index.exists():
            indexed |= {(index.parent / t.partition("#")[0]).resolve() for t in relative_links(index)}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in indexed and p.name != "README.md"]
    assert missing == []


def test_slug_follows_github():
    assert slug("Dashboard: usage, cost and memory at a glance") == "dashboard-usage-cost-and-memory-at-a-glance"
    assert slug("Claude Code on a GPT (or Gemini) model") == "claude-code-on-a-gpt-or-gemini-model"
    assert slug("The `x-memory-mode` header") == "the-x-memory-mode-header"
    assert slug("Cloudflare: cookies, the in-flight cap, and error 1200") == (
        "cloudflare-cookies-the-in-flight-cap-and-error-1200")


def test_broken_links_are_found(tmp_path: Path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## Usage\n\n## Usage\n", encoding="utf-8")
    page = tmp_path / "README.md"
    page.write_text(
        "# Title\n\n## Part one\n\n[ok](#part-one) [bad](#part-two) `[code](#nope)`\n"
        "```\n[fenced](#nope)\n```\n[file](missing.md) [web](https://example.com/x.md)\n"
        "[there](docs/other.md#usage-1) [not there](docs/other.md#usage-2) ![img](docs/none.png)\n",
        encoding="utf-8")
    assert anchors(tmp_path / "docs" / "other.md") == {"other", "usage", "usage-1"}
    assert broken_links(page, root=tmp_path) == [
        "README.md: #part-two (no such heading in README.md)",
        "README.md: missing.md (no such file)",
        "README.md: docs/other.md#usage-2 (no such heading in other.md)",
        "README.md: docs/none.png (no such file)",
    ]


def _yaml_blocks(page: Path) -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", page.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)


def test_readme_config_loads(tmp_path: Path):
    """The README's minimal config.yaml is one a user can start with: it loads without error."""
    from memory_routing.config.schema import load_config

    minimal, fleet = _yaml_blocks(README)
    path = tmp_path / "config.yaml"
    path.write_text(minimal, encoding="utf-8")
    config = load_config(path, environ={"OPENAI_API_KEY": "sk-test-readme"})
    assert config.aliases == ("claude-sonnet-4.5", "gpt-4.1")
    assert config.memory.backend == "local"
    assert config.warnings == ()
    # The fleet's storage section, added to the minimal config, loads too.
    path.write_text(minimal + "\n" + fleet, encoding="utf-8")
    config = load_config(path, environ={"OPENAI_API_KEY": "sk-test-readme", "DATABASE_URL": "postgresql://db/mr",
                                        "REDIS_URL": "redis://cache:6379/0"})
    assert config.storage.uses_database and config.storage.uses_redis
    assert config.warnings == ()


def test_claude_code_recipe_is_the_tested_one():
    """docs/clients.md's Claude-Code-on-GPT recipe is the one the real-CLI end-to-end test runs."""
    import ast

    source = ast.parse((ROOT / "tests" / "test_e2e_claude_code.py").read_text(encoding="utf-8"))
    constants = {target.id: ast.literal_eval(node.value) for node in source.body if isinstance(node, ast.Assign)
                 for target in node.targets if isinstance(target, ast.Name)
                 and target.id in ("RECIPE_CONFIG", "RECIPE_ENV")}
    page = (DOCS / "clients.md").read_text(encoding="utf-8")
    assert constants["RECIPE_CONFIG"].strip() in page
    exported = dict(re.findall(r"\b([A-Z][A-Z_]+)=(\S+)", "\n".join(
        line for line in page.splitlines() if line.startswith("export "))))
    assert {name: exported.get(name) for name in constants["RECIPE_ENV"]} == constants["RECIPE_ENV"]
