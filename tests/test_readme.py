"""The README and the docs/ pages as a reader follows them: every file they link to or show exists in
the repository, every anchor names a heading of its page, the README stays a front page that links
every docs page, and CI's three commands are where .ci/run looks for them."""

import glob
import os
import re
from urllib.parse import unquote

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
PAGES = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
CI_MARKERS = ("<!-- ci:first -->", "<!-- ci:test -->", "<!-- ci:release -->")

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target), ![alt](target), also the outer link of [![badge](image)](target); <target> and a
# "title" allowed. Reference definitions ([id]: target) and HTML src= / href= as well.
_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
_HTML = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
_HTML_ANCHOR = re.compile(r"""<a\s[^>]*(?:name|id)\s*=\s*["']([^"']+)["']""")
_EXTERNAL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*:")


def _rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _prose_lines(text: str) -> list:
    """The lines outside fenced code blocks (a heading or a link inside a code block is neither)."""
    lines, fence = [], None
    for line in text.split("\n"):
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
        elif fence is not None:
            if (
                m
                and m.group(1)[0] == fence[0]
                and len(m.group(1)) >= len(fence)
                and not line.strip()[len(m.group(1)) :]
            ):
                fence = None
        else:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: links and images reduced to their text, then lower case,
    every character dropped that is not a letter, a digit, a space, a hyphen or an underscore, and
    spaces turned into hyphens (no collapsing: "a & b" -> "a--b")."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def slugs(headings: list) -> list:
    """The anchors of a page's headings in order: a repeated slug gets -1, -2, ... (github-slugger)."""
    seen, out = {}, []
    for heading in headings:
        base = s = slug(heading)
        while s in seen:
            seen[base] += 1
            s = f"{base}-{seen[base]}"
        seen[s] = 0
        out.append(s)
    return out


def anchors(path: str) -> set:
    """Every anchor a link may name in a Markdown page: its headings' slugs and explicit HTML anchors."""
    lines = _prose_lines(_read(path))
    headings = [m.group(2) for m in map(_HEADING.match, lines) if m]
    return set(slugs(headings)) | set(_HTML_ANCHOR.findall("\n".join(lines)))


def links(path: str) -> list:
    """The link and image targets of a Markdown page, code blocks and code spans left out."""
    text = "\n".join(_prose_lines(_read(path)))
    text = _INLINE_CODE.sub("code", text)
    return _LINK.findall(text) + _REFERENCE.findall(text) + _HTML.findall(text)


def local_links(path: str) -> list:
    """(target as written, file it resolves to relative to the page's directory, anchor or None) for
    every link that is not a URL (http:, https:, mailto:, ...)."""
    out = []
    for target in links(path):
        if _EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), unquote(file_part))) if file_part else path
        out.append((target, resolved, anchor or None))
    return out


@pytest.mark.parametrize(
    "heading, expected",
    [
        (
            "The paper's comparisons on your corpus (`blt-jax study`)",
            "the-papers-comparisons-on-your-corpus-blt-jax-study",
        ),
        ("Meta's `params.json`: what carries over", "metas-paramsjson-what-carries-over"),
        ("Set-up (Python 3.11, CPU or TPU host): two commands", "set-up-python-311-cpu-or-tpu-host-two-commands"),
        (
            "Scaling (compiled ahead of time for TPU topologies on a CPU host)",
            "scaling-compiled-ahead-of-time-for-tpu-topologies-on-a-cpu-host",
        ),
        ("Noised inputs, character tasks, tasks on your corpus", "noised-inputs-character-tasks-tasks-on-your-corpus"),
        ("train_and_evaluate & `init_from`.", "train_and_evaluate--init_from"),
        ("See [the guide](docs/guide.md) **now**", "see-the-guide-now"),
    ],
)
def test_slug_follows_githubs_rule(heading, expected):
    assert slug(heading) == expected


def test_repeated_headings_get_numbered_slugs():
    assert slugs(["Output", "Usage", "Output", "Output"]) == ["output", "usage", "output-1", "output-2"]
    assert slugs(["A-1", "A", "A"]) == ["a-1", "a", "a-2"]  # "a-1" is taken: the second repeat skips it


def test_every_relative_link_and_image_in_the_readme_exists():
    local = [(t, resolved) for t, resolved, _ in local_links(README)]
    assert any(t.startswith("docs/study/") for t, _ in local), (
        "README.md links no file under docs/study/ (the study's published report and figures)"
    )
    missing = [t for t, resolved in local if not os.path.exists(resolved)]
    assert not missing, f"README.md links files that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_relative_link_and_image_of_a_page_exists(page):
    problems = []
    for target, resolved, _ in local_links(page):
        if not (resolved == ROOT or resolved.startswith(ROOT + os.sep)):
            problems.append(f"{target!r} leaves the repository ({resolved})")
        elif not os.path.exists(resolved):
            problems.append(
                f"{target!r} -> {_rel(resolved)} does not exist (resolved from {_rel(os.path.dirname(page)) or '.'}/)"
            )
    assert not problems, f"{_rel(page)}: " + "; ".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_every_anchor_of_a_page_names_a_heading(page):
    problems = []
    for target, resolved, anchor in local_links(page):
        if anchor is None or not resolved.endswith(".md") or not os.path.isfile(resolved):
            continue  # a missing file is the other test's; anchors into code files are line numbers
        if anchor not in anchors(resolved):
            problems.append(f"{target!r}: {_rel(resolved)} has no heading whose anchor is #{anchor}")
    assert not problems, f"{_rel(page)}: " + "; ".join(problems)


def test_the_readme_is_a_front_page():
    n = len(_read(README).splitlines())
    assert n < 300, f"README.md has {n} lines; it is the front page (under 300): move detail to a docs/ page"


def test_the_readme_links_every_docs_page():
    linked = {resolved for _, resolved, _ in local_links(README)}
    orphans = [_rel(p) for p in PAGES[1:] if p not in linked]
    assert not orphans, f"README.md does not link these docs pages (add them to its Documentation list): {orphans}"


@pytest.mark.parametrize("marker", CI_MARKERS)
def test_the_ci_markers_are_each_followed_by_a_bash_block(marker):
    """.ci/run runs the first line of the first ```bash block after each marker (awk): the block must
    come right after its marker, and hold a command."""
    lines = _read(README).split("\n")
    where = [i for i, line in enumerate(lines) if line.strip() == marker]
    assert len(where) == 1, f"README.md: {marker} appears {len(where)} times; CI needs it exactly once"
    after = [i for i in range(where[0] + 1, len(lines)) if lines[i].strip()]
    assert after and lines[after[0]].startswith("```bash"), (
        f"README.md: the first non-blank line after {marker} is "
        f"{lines[after[0]] if after else None!r}, not a ```bash fence"
    )
    command = lines[after[0] + 1] if after[0] + 1 < len(lines) else ""  # what .ci/run's awk takes
    assert command.strip() and not command.startswith("```"), (
        f"README.md: the line after the ```bash fence under {marker} is {command!r}, not a command"
    )
