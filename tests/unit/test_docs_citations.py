# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Comments cite the repository's own docs/, and every citation resolves.

A citation names a file under docs/ (``docs/security.md``), optionally
followed by rule numbers (``docs/security.md rule 5``, ``rules 1, 2 and 3``)
or a quoted section title (``docs/testing.md, "A real guest"``).  The file
must exist, each rule must be defined there by a heading ``## Rule N: ...``,
and a quoted section must be the start of one of its headings.  Nothing may
cite the design notes that live outside the repository.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
THIS_FILE = os.path.abspath(__file__)

# Where citations live: the code, its tests and tools, and the documentation itself.
SCANNED_DIRS = ("plugins", "tests", "scripts", "bench", "playbooks", "docs", "meta")
SCANNED_TOP_FILES = ("Makefile", "README.md", "CHANGELOG.md", "galaxy.yml")
TEXT_SUFFIXES = (".py", ".md", ".yml", ".yaml", ".sh", ".j2", ".ini", ".cfg", ".txt", ".xml", ".json", "")
SKIPPED_DIRS = ("__pycache__", ".git", "samples", "probe_samples", "output")

# Between the words of a citation: spaces, a line break, a comment's leading '#'.
_GAP = r"[\s#]+"
CITATION = re.compile(
    r"docs/(?P<file>[A-Za-z0-9_./-]+\.md)"
    r"(?:,?" + _GAP + r"(?:security" + _GAP + r")?rules?" + _GAP
    + r"(?P<rules>\d+(?:(?:\s*,\s*|" + _GAP + r"and" + _GAP + r")\d+)*)"
    r"|," + _GAP + r"\"(?P<section>[^\"]+)\")?")
RULE_HEADING = re.compile(r"^#{1,6}\s+Rule\s+(\d+)\b", re.MULTILINE)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)
# The out-of-repository design notes the code used to cite.
STALE = re.compile(r"\bDESIGN(?:\.md|\s+rules?\b)")


def scanned_files(root=ROOT):
    for name in SCANNED_TOP_FILES:
        path = os.path.join(root, name)
        if os.path.isfile(path):
            yield path
    for top in SCANNED_DIRS:
        for directory, subdirs, files in os.walk(os.path.join(root, top)):
            subdirs[:] = sorted(d for d in subdirs if d not in SKIPPED_DIRS)
            for name in sorted(files):
                if os.path.splitext(name)[1] in TEXT_SUFFIXES:
                    yield os.path.join(directory, name)


def read_text(path):
    with open(path, "rb") as stream:
        data = stream.read()
    if b"\0" in data:
        return None
    return data.decode("utf-8", "replace")


def defined_rules(doc_text):
    return set(int(number) for number in RULE_HEADING.findall(doc_text))


def headings(doc_text):
    return [title.strip() for title in HEADING.findall(doc_text)]


def citation_problems(text, where, docs_dir):
    """Problems with the docs/ citations and stale citations in ``text`` (a list of sentences)."""
    problems = []
    for match in STALE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        problems.append("%s:%d cites %r, which is not in the repository: cite docs/ instead"
                        % (where, line, match.group(0)))
    for match in CITATION.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        doc_path = os.path.join(docs_dir, match.group("file"))
        if not os.path.isfile(doc_path):
            problems.append("%s:%d cites docs/%s, which does not exist" % (where, line, match.group("file")))
            continue
        doc_text = read_text(doc_path) or ""
        if match.group("rules"):
            wanted = [int(number) for number in re.findall(r"\d+", match.group("rules"))]
            defined = defined_rules(doc_text)
            for number in wanted:
                if number not in defined:
                    problems.append("%s:%d cites docs/%s rule %d, which that file does not define (rules: %s)"
                                    % (where, line, match.group("file"), number,
                                       ", ".join(str(n) for n in sorted(defined)) or "none"))
        if match.group("section"):
            section = " ".join(match.group("section").split())
            if not any(title.startswith(section) for title in headings(doc_text)):
                problems.append("%s:%d cites section %r of docs/%s, which has no such heading"
                                % (where, line, section, match.group("file")))
    return problems


def repository_problems(root=ROOT):
    problems = []
    docs_dir = os.path.join(root, "docs")
    for path in scanned_files(root):
        if os.path.abspath(path) == THIS_FILE:
            continue
        text = read_text(path)
        if text is None:
            continue
        problems.extend(citation_problems(text, os.path.relpath(path, root), docs_dir))
    return problems


def test_every_citation_in_the_repository_resolves_and_none_cites_outside_notes():
    problems = repository_problems()
    assert not problems, "\n".join(problems)


def test_the_docs_define_the_rules_the_code_relies_on():
    with open(os.path.join(ROOT, "docs", "security.md")) as stream:
        assert defined_rules(stream.read()) >= set(range(1, 10))


# --- the checker itself: each kind of bad citation is caught, good ones pass ---------------
@pytest.fixture
def docs_dir(tmp_path):
    (tmp_path / "security.md").write_text("# Rules\n\n## Rule 1: paths\n\n## Rule 2: formats\n")
    (tmp_path / "testing.md").write_text("# Testing\n\n### A real guest: setup_guest\n")
    return str(tmp_path)


@pytest.mark.parametrize("text", [
    "# Cap (docs/security.md rule 2).",
    '"""Policy (docs/security.md, security rule 1)."""',
    "# (docs/security.md rules 1 and 2)",
    "# (docs/security.md rules 1, 2)",
    "opened through the opener, docs/security.md\n    rule 1); more",
    '# see docs/testing.md, "A real guest"',
    "# see docs/testing.md for the stand-ins",
])
def test_valid_citations_pass(text, docs_dir):
    assert citation_problems(text, "x.py", docs_dir) == []


@pytest.mark.parametrize("text, expected", [
    ("# Cap (docs/security.md rule 7).", "rule 7, which that file does not define"),
    ("# (docs/security.md rules 1, 2 and 9)", "rule 9, which that file does not define"),
    ("# docs/security.md\n# rule 3", "rule 3, which that file does not define"),
    ("# see docs/policy.md rule 1", "docs/policy.md, which does not exist"),
    ('# see docs/testing.md, "Real components in tests"', "has no such heading"),
    ("# Cap (DESIGN" + ".md rule 5).", "not in the repository"),
    ("# Cap (DESIGN" + " rule 5).", "not in the repository"),
    ('"""described in DESIGN' + '.md."""', "not in the repository"),
])
def test_bad_citations_are_reported(text, expected, docs_dir):
    problems = citation_problems(text, "x.py", docs_dir)
    assert len(problems) == 1 and expected in problems[0], problems
