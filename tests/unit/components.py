# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Skips for a missing component (libvirt-python, libvirtd, loop devices, qemu-system, qemu-img, lvm2...).

A test that cannot run because the machine lacks a component skips through ``missing()`` or
``needs()`` here, never through ``pytest.skip`` directly: the reason then starts with
``MISSING`` and says which component is missing.

Outside CI the skip stays a skip, with that reason. In CI (``CI=true``) conftest.py turns it
into a failure (``fail_in_ci``): the set-up installs every component, so a skip there means
the set-up broke, and a suite that skipped its libvirt tests must not pass.
test_components.py checks that no other skip is left in the suite.
"""

import os

import pytest

MISSING = "missing component: "


def reason(component, detail=None):
    """The skip reason for ``component`` (a name such as 'libvirtd'), with what was found."""
    return MISSING + component + (" (%s)" % detail if detail else "")


def missing(component, detail=None):
    """Skip the running test (or, at module level, the whole module): ``component`` is not available here."""
    pytest.skip(reason(component, detail), allow_module_level=True)


def needs(available, component, detail=None):
    """A mark that skips the test unless ``available`` (evaluated once, at import)."""
    return pytest.mark.skipif(not available, reason=reason(component, detail))


def in_ci(environ=None):
    """True when the suite runs in CI (CI=true, as CI services set it)."""
    environ = os.environ if environ is None else environ
    return environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def skip_reason(report):
    """The reason of a skipped test or collector report, '' for any other report."""
    if not report.skipped:
        return ""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def point_at_the_test(report, item):
    """Report a missing-component skip at the test that skipped, not at missing() here."""
    text = skip_reason(report)
    if MISSING in text and isinstance(report.longrepr, tuple):
        report.longrepr = (str(item.path), item.location[1] + 1, text)


def fail_in_ci(report, environ=None):
    """In CI, turn a missing-component skip into a failure saying which component and why it matters."""
    text = skip_reason(report)
    if MISSING not in text or not in_ci(environ):
        return
    found = text[text.index(MISSING):]
    report.outcome = "failed"
    report.longrepr = ("CI=true: %s. The set-up installs every component the tests need, "
                       "so in CI this is a failure, not a skip: the set-up broke." % found)
