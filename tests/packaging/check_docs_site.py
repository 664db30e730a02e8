# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The built documentation site (scripts/docs.sh build), as a browser shows it.

Every module and role of the collection (ansible-doc lists them, ANSIBLE_COLLECTIONS_PATH says where) must have its
page; each page is opened in headless Chromium (``chromium --headless --dump-dom``: the DOM after the page's scripts
ran) and must show a title naming the module or role and an options table (antsibull-docs' ``ansible-option-table``)
holding every documented option, suboptions included: its anchor (``parameter-<path>``) and its name.

    python tests/packaging/check_docs_site.py SITE_DIR
"""

import concurrent.futures
import html.parser
import json
import os
import shutil
import subprocess
import sys
import tempfile

COLLECTION = "kvm.storage"


class _OptionTables(html.parser.HTMLParser):
    """The anchors and names of the options inside the page's option tables, and the page's first heading."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.anchors = set()
        self.names = set()
        self.tables = 0
        self.heading = ""
        self._table_depth = 0
        self._in_title = False
        self._in_strong = False
        self._in_h1 = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "table":
            if self._table_depth or "ansible-option-table" in classes:
                self._table_depth += 1
                if self._table_depth == 1:
                    self.tables += 1
        elif tag == "h1" and not self.heading:
            self._in_h1 = True
        if self._table_depth:
            anchor = attrs.get("id") or ""
            if anchor.startswith("parameter-"):
                self.anchors.add(anchor[len("parameter-"):])
            if tag == "p" and "ansible-option-title" in classes:
                self._in_title = True
            elif tag == "strong" and self._in_title:
                self._in_strong = True

    def handle_endtag(self, tag):
        if tag == "table" and self._table_depth:
            self._table_depth -= 1
        elif tag == "p":
            self._in_title = False
        elif tag == "strong":
            self._in_strong = False
        elif tag == "h1":
            self._in_h1 = False

    def handle_data(self, data):
        if self._in_strong:
            self.names.add(data.strip())
        if self._in_h1:
            self.heading += data


def option_paths(options, prefix=""):
    """Every option path of an argument spec or DOCUMENTATION ``options``: ``a``, ``a/b`` for a suboption."""
    paths = []
    for name, spec in sorted((options or {}).items()):
        path = prefix + name
        paths.append(path)
        spec = spec or {}
        paths.extend(option_paths(spec.get("suboptions") or spec.get("options"), path + "/"))
    return paths


def page_problems(dom, fqcn, paths, anchor_prefix=""):
    """What the rendered page ``dom`` lacks: its heading naming ``fqcn``, an options table, each option of ``paths``."""
    parser = _OptionTables()
    parser.feed(dom)
    problems = []
    if fqcn not in parser.heading:
        problems.append("the page's heading %r does not name %s" % (parser.heading.strip(), fqcn))
    if not parser.tables:
        problems.append("no options table (table.ansible-option-table)")
    for path in paths:
        if anchor_prefix + path not in parser.anchors:
            problems.append("option %s: no anchor parameter-%s%s in an options table" % (path, anchor_prefix, path))
        elif path.rsplit("/", 1)[-1] not in parser.names:
            problems.append("option %s: its name is not shown in an options table" % path)
    return problems


def documented(plugin_type):
    """{fqcn: option paths} of every module or role of the collection, from ansible-doc."""
    listing = json.loads(subprocess.run(["ansible-doc", "-t", plugin_type, "--list", "--json", COLLECTION],
                                        check=True, stdout=subprocess.PIPE).stdout)
    names = sorted(listing)
    if not names:
        raise SystemExit("check_docs_site: ansible-doc lists no %s of %s" % (plugin_type, COLLECTION))
    docs = json.loads(subprocess.run(["ansible-doc", "-t", plugin_type, "--json"] + names,
                                     check=True, stdout=subprocess.PIPE).stdout)
    result = {}
    for name in names:
        doc = docs[name]
        if plugin_type == "role":
            result[name] = option_paths(doc["entry_points"]["main"].get("options"))
        else:
            result[name] = option_paths(doc["doc"].get("options"))
    return result


def dump_dom(chromium, page):
    """The DOM of ``page`` after Chromium loaded it (its own profile directory: runs may overlap)."""
    profile = tempfile.mkdtemp(prefix="kvm-storage-chromium.")
    try:
        proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                               "--user-data-dir=" + profile, "--dump-dom",
                               "file://" + os.path.abspath(page)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120, check=False)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError("chromium exit %d on %s: %s" % (proc.returncode, page, proc.stderr.decode()[-2000:]))
    return proc.stdout.decode("utf-8")


def main(site):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("check_docs_site: no chromium (Debian's package chromium; scripts/setup.sh installs it)")
    pages = []
    for plugin_type, suffix, anchor_prefix in (("module", "module", ""), ("role", "role", "main--")):
        for fqcn, paths in documented(plugin_type).items():
            page = os.path.join(site, "collections", "kvm", "storage", "%s_%s.html" % (fqcn.split(".")[-1], suffix))
            pages.append((fqcn, page, paths, anchor_prefix))
    failures = 0
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        doms = {entry[0]: pool.submit(dump_dom, chromium, entry[1]) for entry in pages if os.path.exists(entry[1])}
        for fqcn, page, paths, anchor_prefix in pages:
            if fqcn not in doms:
                problems = ["no page %s" % page]
            else:
                try:
                    problems = page_problems(doms[fqcn].result(), fqcn, paths, anchor_prefix)
                except RuntimeError as exc:
                    problems = [str(exc)]
            if problems:
                failures += 1
                print("FAIL %s (%s):\n  %s" % (fqcn, page, "\n  ".join(problems)))
            else:
                print("ok   %s: rendered in Chromium, options table with all %d options" % (fqcn, len(paths)))
    print("docs site: %d pages checked, %d failed" % (len(pages), failures))
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: check_docs_site.py SITE_DIR")
    sys.exit(main(sys.argv[1]))
