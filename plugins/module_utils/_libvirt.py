# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared libvirt plumbing of the kvm.storage modules.

Private to this collection (the leading underscore): no compatibility promise.

- libvirt-python is optional: ``HAS_LIBVIRT`` / ``LIBVIRT_IMPORT_ERROR`` tell a module whether
  to fail with ``missing_required_lib``.  ``libvirt`` stands for the libvirt module and imports it
  when one of its names is first used, so that a module that may run without libvirt (disk_image
  without a pool, disk_image_info) does not load it (its shared library takes tens of ms).
- ``LibvirtConnection`` opens (and closes) one connection to a URI.
- ``libvirt_call`` turns a ``libvirtError`` into a ``LibvirtModuleError`` whose message
  says what was being done to which object, and libvirt's own explanation.
- XML helpers for idempotent comparison: parse, canonicalise (attributes sorted, whitespace
  dropped, children in a stable order) and render back to text.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import traceback
from importlib.util import find_spec
from xml.etree import ElementTree

from ansible.module_utils.basic import missing_required_lib


class _LibvirtPython(object):
    """The libvirt module, imported when one of its names is first used (``libvirt.open``...).

    Without libvirt-python every name is missing (AttributeError), as on ``None``.
    """

    def __init__(self):
        self.module = None
        self.import_error = None    # the traceback of a failed import

    def import_now(self):
        """The libvirt module, None when it cannot be imported."""
        if self.module is None and self.import_error is None:
            try:
                import libvirt  # pylint: disable=import-outside-toplevel
            except ImportError:
                self.import_error = traceback.format_exc()
            else:
                self.module = libvirt
        return self.module

    def __getattr__(self, name):
        if name in ('module', 'import_error') or name.startswith('__'):
            raise AttributeError(name)
        module = self.import_now()
        if module is None:
            raise AttributeError("libvirt-python cannot be imported (libvirt.%s): %s"
                                 % (name, self.import_error.strip().splitlines()[-1]))
        return getattr(module, name)

    def __repr__(self):
        return '<libvirt-python, imported on first use>'


libvirt = _LibvirtPython()
# Whether libvirt-python is installed, found without importing it.
HAS_LIBVIRT = find_spec('libvirt') is not None
LIBVIRT_IMPORT_ERROR = None if HAS_LIBVIRT else "ModuleNotFoundError: No module named 'libvirt'"

DEFAULT_URI = 'qemu:///system'


class LibvirtModuleError(Exception):
    """A libvirt failure or a refused request, with a message meant for the user.

    ``result``: keys the failed task reports besides ``msg``, such as ``changed=True`` and the ``actions``
    already done when a step failed after others succeeded and could not be undone.
    """

    def __init__(self, message, **result):
        super(LibvirtModuleError, self).__init__(message)
        self.result = result


def libvirt_argument_spec():
    """Options of the doc fragment kvm.storage.libvirt."""
    return dict(uri=dict(type='str', default=DEFAULT_URI))


# --------------------------------------------------------------------------- errors
def error_message(exc):
    """libvirt's own text of an error (without the python wrapper's decoration)."""
    getter = getattr(exc, 'get_error_message', None)
    message = getter() if getter is not None else None
    return message or str(exc) or exc.__class__.__name__


def error_is(exc, *code_names):
    """Whether a libvirtError has one of the error codes named (``'VIR_ERR_NO_STORAGE_POOL'``...).

    Codes are looked up by name when asked, so that nothing touches libvirt at import time
    and a code unknown to an older libvirt-python simply does not match.
    """
    getter = getattr(exc, 'get_error_code', None)
    if getter is None:
        return False
    code = getter()
    return any(code == getattr(libvirt, name, object()) for name in code_names)


def libvirt_call(what, function, *args):
    """Call a libvirt function; a libvirtError becomes LibvirtModuleError('<what>: <libvirt message>')."""
    try:
        return function(*args)
    except libvirt.libvirtError as exc:
        raise LibvirtModuleError('%s: %s' % (what, error_message(exc)))


def domain_not_defined_message(name, uri):
    """The one wording of every module for a domain libvirt does not know."""
    return "domain '%s' is not defined on %s" % (name, uri)


def lookup_domain(conn, name, uri=None):
    """The virDomain named ``name``; a LibvirtModuleError worded by domain_not_defined_message when there is none.

    ``uri`` names the connection in the message (the connection's own URI when not given).
    """
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if error_is(exc, 'VIR_ERR_NO_DOMAIN'):
            if uri is None:
                try:
                    uri = conn.getURI()
                except libvirt.libvirtError:
                    uri = 'this libvirt connection'
            raise LibvirtModuleError(domain_not_defined_message(name, uri))
        raise LibvirtModuleError("cannot look up domain '%s': %s" % (name, error_message(exc)))


def _ignore_libvirt_error(context, error):
    """libvirt's default handler prints every error on stderr; the module reports them itself."""


class LibvirtConnection(object):
    """A connection to ``uri`` (read-only when asked); a context manager that closes it."""

    def __init__(self, uri=DEFAULT_URI, readonly=False):
        if not HAS_LIBVIRT:
            raise LibvirtModuleError('libvirt-python is not installed')
        if libvirt.import_now() is None:
            raise LibvirtModuleError('libvirt-python cannot be imported: %s'
                                     % libvirt.import_error.strip().splitlines()[-1])
        self.uri = uri
        self.readonly = readonly
        self.conn = None

    def open(self):
        libvirt.registerErrorHandler(_ignore_libvirt_error, None)
        opener = libvirt.openReadOnly if self.readonly else libvirt.open
        try:
            conn = opener(self.uri)
        except libvirt.libvirtError as exc:
            raise LibvirtModuleError('cannot connect to libvirt at %s: %s' % (self.uri, error_message(exc)))
        if conn is None:
            raise LibvirtModuleError('cannot connect to libvirt at %s' % self.uri)
        self.conn = conn
        return conn

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except libvirt.libvirtError:
                pass
            self.conn = None

    def __enter__(self):
        return self.open()

    def __exit__(self, exc_type, exc_value, tb):
        self.close()
        return False


def run_libvirt_module(module, runner, readonly=False):
    """The body every libvirt module's main() shares: check libvirt-python, connect to ``uri``,
    ``runner(conn)`` -> result, failures as fail_json, ``notes`` as warnings, the diff only in diff mode."""
    if not HAS_LIBVIRT:
        module.fail_json(msg=missing_required_lib('libvirt-python'), exception=LIBVIRT_IMPORT_ERROR)
    try:
        with LibvirtConnection(module.params['uri'], readonly=readonly) as conn:
            result = runner(conn)
    except LibvirtModuleError as exc:
        module.fail_json(msg=str(exc), **exc.result)
    for warning in result.get('notes') or ():
        module.warn(warning)
    if not module._diff:
        result.pop('diff', None)
    module.exit_json(**result)


# --------------------------------------------------------------------------- who holds an image
def _same_file(path, identity, source):
    if source == path:
        return True
    try:
        st = os.stat(source)
    except (OSError, ValueError):
        return False
    return identity is not None and (st.st_dev, st.st_ino) == identity


def domains_holding(path, uris=(DEFAULT_URI,)):
    """``[(domain name, uri)]``: the running domains of each of ``uris`` with ``path`` (a file or block device) as
    the source of one of their disks or of a layer of a disk's backing chain.

    Meant for an error message only: cheap (one read-only connection per URI, asked only when an image is found in
    use) and optional, so without libvirt-python, without libvirtd or on any libvirt error the answer is ``[]``.
    """
    if not HAS_LIBVIRT or libvirt.import_now() is None:
        return []
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
        identity = (st.st_dev, st.st_ino)
    except OSError:
        identity = None
    found = []
    for uri in dict.fromkeys(uri for uri in uris if uri):
        try:
            with LibvirtConnection(uri, readonly=True) as conn:
                for domain in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                    root = ElementTree.fromstring(domain.XMLDesc(0))
                    sources = [source.get(name) for source in root.iterfind('devices/disk//source')
                               for name in ('file', 'dev') if source.get(name)]
                    if any(_same_file(real, identity, source) for source in sources):
                        found.append((domain.name(), uri))
        except (LibvirtModuleError, libvirt.libvirtError, ElementTree.ParseError):
            continue
    return found


def holders_text(path, uris=(DEFAULT_URI,)):
    """``"; libvirt: the running domain 'x' on qemu:///system has it as a disk"`` for the running domains holding
    ``path`` (domains_holding), '' when libvirt names none."""
    holders = domains_holding(path, uris)
    if not holders:
        return ''
    several = len(holders) > 1
    return '; libvirt: the running domain%s %s %s it as a disk' % (
        's' if several else '', ', '.join("'%s' on %s" % holder for holder in holders), 'have' if several else 'has')


# --------------------------------------------------------------------------- XML
def parse_xml(text, what='XML'):
    """An Element from XML text; a LibvirtModuleError naming ``what`` when it is not well-formed."""
    if not isinstance(text, str) or not text.strip():
        raise LibvirtModuleError('%s: expected an XML document, found %r' % (what, text))
    try:
        return ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise LibvirtModuleError('%s is not well-formed XML: %s' % (what, exc))


def canonical_element(element):
    """A copy of ``element`` in canonical form: attributes sorted, surrounding whitespace dropped,
    comments gone, children ordered by their own canonical text (libvirt does not give their order
    a meaning in the documents compared here)."""
    copy = ElementTree.Element(element.tag, dict(sorted(element.attrib.items())))
    text = (element.text or '').strip()
    copy.text = text or None
    children = [canonical_element(child) for child in element if isinstance(child.tag, str)]
    children.sort(key=lambda child: (child.tag, ElementTree.tostring(child, encoding='unicode')))
    copy.extend(children)
    return copy


def canonical_xml(element):
    """The canonical text of an element, indented two spaces per level: equal texts mean equal documents
    for our comparisons, and the text reads well in a diff."""
    copy = canonical_element(element)
    ElementTree.indent(copy, space='  ')
    return ElementTree.tostring(copy, encoding='unicode')


def child_text(element, path, default=None):
    """Stripped text of the first element at ``path`` under ``element`` (``default`` when absent or empty)."""
    found = element.find(path)
    if found is None or found.text is None or not found.text.strip():
        return default
    return found.text.strip()


def sanitize_path(path):
    """A path as libvirt stores it (virFileSanitizePath): repeated slashes collapsed, no trailing slash."""
    if not path:
        return path
    leading = '//' if path.startswith('//') and not path.startswith('///') else ('/' if path.startswith('/') else '')
    parts = [part for part in path.split('/') if part]
    sanitized = leading + '/'.join(parts)
    return sanitized or '/'


# --------------------------------------------------------------------------- XML: what a request specifies
def compact_xml(element):
    """One-line text of an element (its surrounding whitespace dropped), as a difference reports it."""
    copy = canonical_element(element)
    return ElementTree.tostring(copy, encoding='unicode')


def match_children(requested, candidates, path='', compare=None):
    """Pair each requested element with the candidate (same tag) that differs least from it, each candidate used once.

    Returns ``[(requested element, candidate or None, projection or None, differences)]`` in the order requested.  Devices carry no
    identity of their own in a definition (two NICs without a MAC), so the closest one is the one meant; on a tie
    the first in document order wins, which keeps libvirt's order.
    """
    compare = compare or project_requested
    used = set()
    counts = {}
    for element in requested:
        counts[element.tag] = counts.get(element.tag, 0) + 1
    seen = {}
    pairs = []
    for element in requested:
        seen[element.tag] = seen.get(element.tag, 0) + 1
        child_path = '%s/%s' % (path, element.tag)
        if counts[element.tag] > 1:
            child_path += '[%d]' % seen[element.tag]
        best = None
        for index, candidate in enumerate(candidates):
            if index in used or candidate.tag != element.tag:
                continue
            projection, differences = compare(element, candidate, child_path)
            if best is None or len(differences) < len(best[2]):
                best = (index, projection, differences)
            if not differences:
                break
        if best is None:
            pairs.append((element, None, None, [dict(path=child_path, requested=compact_xml(element), actual=None)]))
            continue
        used.add(best[0])
        pairs.append((element, candidates[best[0]], best[1], best[2]))
    return pairs


def project_requested(requested, actual, path=None):
    """What ``actual`` holds of what ``requested`` specifies, and how the two differ.

    Returns ``(projection, differences)``: the projection is ``actual`` cut down to the attributes, texts and
    elements ``requested`` names (so that it renders like the request when nothing differs), and each difference
    is ``{'path', 'requested', 'actual'}`` for a requested attribute or text with another value (``actual`` None
    when absent) or a requested element ``actual`` lacks.  What ``actual`` has beyond the request (what libvirt
    fills in) is no difference.  Both elements are expected normalised by the caller (units, spellings).
    """
    if path is None:
        path = '/' + requested.tag
    projection = ElementTree.Element(actual.tag)
    differences = []
    for name, value in sorted(requested.attrib.items()):
        found = actual.get(name)
        if found is not None:
            projection.set(name, found)
        if found != value:
            differences.append(dict(path='%s/@%s' % (path, name), requested=value, actual=found))
    text = (requested.text or '').strip()
    if text:
        found = (actual.text or '').strip()
        projection.text = found or None
        if found != text:
            differences.append(dict(path=path, requested=text, actual=found or None))
    wanted = [child for child in requested if isinstance(child.tag, str)]
    candidates = [child for child in actual if isinstance(child.tag, str)]
    for dummy, dummy_candidate, child_projection, child_differences in match_children(wanted, candidates, path):
        if child_projection is not None:
            projection.append(child_projection)
        differences.extend(child_differences)
    return projection, differences
