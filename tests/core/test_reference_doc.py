"""Every citation of the reference notes in the code resolves: "reference section N.M" to a heading of
docs/reference.md and "bug N" to an item of its numbered bug list (section 7)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "reference.md"
CODE_DIRS = ("dinowm_core", "ray_jobs", "serving", "bench")

# A section number: "5", "5.7".
NUM = r"\d+(?:\.\d+)?"
# "section 5.4", "sections 5.1, 5.6, 5.7", "section 5.1-5.2, 5.7", "sections\n 5.3-5.7": the word, then one or
# more numbers joined by ", ", "-" or " and ". A ", step 8" or ", bug 9" after it ends the list (no digit).
SECTIONS = re.compile(rf"\bsections?\s+({NUM}(?:\s*(?:,|-|and)\s*{NUM})*)")
# Only citations of the reference count: "reference" (also in "reference_dino_wm.md") or "DINO-WM" within this
# many characters before "section" (any case); sections of other documents are left alone.
WINDOW = 100
CITES_REFERENCE = re.compile(r"reference|dino-wm", re.I)
BUG = re.compile(r"\bbugs? (\d+)\b")


def _code_files() -> list[Path]:
    return sorted(p for d in CODE_DIRS if (REPO / d).is_dir() for p in (REPO / d).rglob("*.py"))


def _citations() -> list[tuple[str, str]]:
    """(where, section number) for every reference section cited in the code."""
    found = []
    for path in _code_files():
        text = path.read_text()
        for m in SECTIONS.finditer(text):
            if not CITES_REFERENCE.search(text, max(0, m.start() - WINDOW), m.start()):
                continue
            where = f"{path.relative_to(REPO)}:{text.count(chr(10), 0, m.start()) + 1}"
            found += [(where, n) for n in re.findall(NUM, m.group(1))]
    return found


def _headings() -> set[str]:
    """Section numbers of the doc's headings: "## 5. Planning" -> "5", "### 5.7 Evaluator" -> "5.7"."""
    return set(re.findall(rf"^#{{2,3}} ({NUM})\.?\s", DOC.read_text(), flags=re.M))


def _bugs() -> set[str]:
    """Item numbers of the numbered list in section 7 ("7. ..." lines that start at column 0)."""
    section7 = re.search(r"^## 7\..*?(?=^## 8\.)", DOC.read_text(), flags=re.M | re.S)
    assert section7, "docs/reference.md has no section 7 followed by section 8"
    return set(re.findall(r"^(\d+)\. ", section7.group(0), flags=re.M))


def test_doc_has_the_reference_sections():
    headings = _headings()
    assert {str(n) for n in range(9)} <= headings
    assert {"1.1", "1.7", "2.2", "3.2", "4.2", "5.7", "6.5"} <= headings
    assert _bugs() == {str(n) for n in range(1, 16)}


def test_every_cited_section_exists():
    citations = _citations()
    assert len(citations) >= 38, f"the regex finds too few citations to be working: {citations}"
    headings = _headings()
    missing = [(where, n) for where, n in citations if n not in headings]
    assert not missing, f"cited sections without a heading in docs/reference.md: {missing}"


def test_every_cited_bug_is_listed():
    bugs = _bugs()
    cited = [
        (f"{p.relative_to(REPO)}", m.group(1)) for p in _code_files() for m in BUG.finditer(p.read_text())
    ]
    assert cited, "no 'bug N' citations found"
    missing = [(where, n) for where, n in cited if n not in bugs]
    assert not missing, f"cited bugs not in docs/reference.md section 7: {missing}"


def test_deviations_link_back():
    assert "deviations.md" in DOC.read_text()
    assert "reference.md" in (REPO / "docs" / "deviations.md").read_text()
