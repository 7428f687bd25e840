"""The README as a reader follows it: every file it links to or shows exists in the repository."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_relative_link_and_image_in_the_readme_exists():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    targets = re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", text)  # [text](target) and ![alt](target)
    local = [t for t in targets if not re.match(r"[a-z]+://|mailto:", t)]
    assert any(t.startswith("docs/study/") for t in local)  # the study's published figures are linked
    missing = [t for t in local if not os.path.exists(os.path.join(ROOT, t))]
    assert not missing, missing
