# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backend of the domain_snapshot and domain_snapshot_info modules.

Private to this collection (the leading underscore): no compatibility promise.

domain_snapshot reads the domain and all its snapshots once (``read_domain``), compares them
with the request (``plan_domain_snapshot``, pure but for an injected image comparison used by
the revert rule), and applies the plan only outside check mode (``apply_plan``).  The diff
shows the same view the plan is computed from: the domain's state, its current snapshot and
its snapshot tree (``domain_view`` / ``render_view``).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import copy
import os
import time
from xml.etree import ElementTree

from ansible_collections.kvm.storage.plugins.module_utils._libvirt import (
    LibvirtModuleError,
    child_text,
    error_is,
    error_message,
    libvirt,
    libvirt_argument_spec,
    libvirt_call,
    lookup_domain,
    parse_xml,
)
from ansible_collections.kvm.storage.plugins.module_utils._plan import Action, Plan
from ansible_collections.kvm.storage.plugins.module_utils.diskimage import ImageError, snapshot_compare

SNAPSHOT_STATES = ('present', 'absent', 'revert')
DISK_SNAPSHOT_MODES = ('internal', 'external', 'no')
REVERT_DOMAIN_STATES = ('snapshot', 'running', 'paused')

# libvirt versions (virConnectGetLibVersion numbers) that gained a snapshot operation.
EXTERNAL_REVERT_VERSION = 9009000   # reverting to external snapshots (libvirt 9.9.0)
EXTERNAL_DELETE_VERSION = 9000000   # deleting external snapshots, not only their metadata (libvirt 9.0.0)

# libvirt error codes that mean "this libvirt cannot do that" (rather than "you asked wrong").
UNSUPPORTED_ERRORS = ('VIR_ERR_OPERATION_UNSUPPORTED', 'VIR_ERR_CONFIG_UNSUPPORTED', 'VIR_ERR_NO_SUPPORT',
                      'VIR_ERR_ARGUMENT_UNSUPPORTED')

# virDomainState numbers in order, as the modules report them.
DOMAIN_STATE_NAMES = ('nostate', 'running', 'blocked', 'paused', 'shutdown', 'shutoff', 'crashed', 'pmsuspended')
# Each of those reduced to what a revert can leave a domain in.
DOMAIN_RUN_STATES = {'running': 'running', 'blocked': 'running', 'shutdown': 'running', 'paused': 'paused',
                     'pmsuspended': 'paused', 'shutoff': 'shutoff', 'crashed': 'shutoff', 'nostate': 'shutoff'}
# Disks that are not snapshotted unless the task names them (libvirt cannot snapshot what it cannot write).
NO_SNAPSHOT_DEVICES = ('cdrom',)
GUEST_AGENT_CHANNEL = 'org.qemu.guest_agent.0'


# --------------------------------------------------------------------------- argument specs
def domain_snapshot_argument_spec():
    spec = dict(
        domain=dict(type='str', required=True),
        name=dict(type='str', required=True),
        state=dict(type='str', default='present', choices=list(SNAPSHOT_STATES)),
        description=dict(type='str'),
        external=dict(type='bool'),
        disk_only=dict(type='bool', default=False),
        memory=dict(type='path'),
        disks=dict(type='list', elements='dict', options=dict(
            name=dict(type='str', required=True),
            snapshot=dict(type='str', choices=list(DISK_SNAPSHOT_MODES)),
            file=dict(type='path'),
        )),
        quiesce=dict(type='bool', default=False),
        live=dict(type='bool', default=False),
        children=dict(type='bool', default=False),
        children_only=dict(type='bool', default=False),
        metadata_only=dict(type='bool', default=False),
        domain_state=dict(type='str', default='snapshot', choices=list(REVERT_DOMAIN_STATES)),
        revert_always=dict(type='bool', default=False),
        force=dict(type='bool', default=False),
    )
    spec.update(libvirt_argument_spec())
    return spec


DOMAIN_SNAPSHOT_MUTUALLY_EXCLUSIVE = [('children', 'children_only')]


def domain_snapshot_info_argument_spec():
    spec = dict(domain=dict(type='str', required=True), name=dict(type='str'))
    spec.update(libvirt_argument_spec())
    return spec


# --------------------------------------------------------------------------- versions
def version_text(number):
    """'9.0.0' from virConnectGetLibVersion's 9000000."""
    return '%d.%d.%d' % (number // 1000000, (number // 1000) % 1000, number % 1000)


def unsupported_message(what, lib_version, uri, reason, hint=None):
    """The message of an operation the connected libvirt cannot do."""
    message = '%s: libvirt %s (the daemon at %s) cannot do this: %s' % (what, version_text(lib_version), uri, reason)
    if hint:
        message += '; ' + hint
    return message


def snapshot_call(what, lib_version, uri, function, *args, **kwargs):
    """libvirt_call, with refusals of an unsupported operation naming the libvirt version."""
    hint = kwargs.get('hint')
    try:
        return function(*args)
    except libvirt.libvirtError as exc:
        if error_is(exc, *UNSUPPORTED_ERRORS):
            raise LibvirtModuleError(unsupported_message(what, lib_version, uri, error_message(exc), hint))
        raise LibvirtModuleError('%s: %s' % (what, error_message(exc)))


# --------------------------------------------------------------------------- what libvirt has
class DomainDisk(object):
    """One disk of a domain definition."""

    def __init__(self, target, device='disk', disk_type='file', source=None, driver_format=None, readonly=False, snapshot=None):
        self.target = target
        self.device = device
        self.type = disk_type
        self.source = source
        self.format = driver_format
        self.readonly = readonly
        self.snapshot = snapshot   # the disk's own snapshot attribute (<disk snapshot='no'>), None when unset

    @classmethod
    def from_element(cls, element):
        source = element.find('source')
        path = None
        if source is not None:
            path = source.get('file') or source.get('dev') or source.get('volume') or source.get('name')
        driver = element.find('driver')
        target = element.find('target')
        return cls(target=None if target is None else target.get('dev'), device=element.get('device', 'disk'),
                   disk_type=element.get('type', 'file'), source=path,
                   driver_format=None if driver is None else driver.get('type'),
                   readonly=element.find('readonly') is not None, snapshot=element.get('snapshot'))

    def __repr__(self):
        return 'DomainDisk(%r, %r)' % (self.target, self.source)


def domain_disks(domain_element):
    return [DomainDisk.from_element(disk) for disk in domain_element.findall('devices/disk')]


def has_guest_agent(domain_element):
    """Whether the definition has the QEMU guest agent's channel (quiesce needs the agent)."""
    for channel in domain_element.findall('devices/channel'):
        target = channel.find('target')
        if target is not None and target.get('name') == GUEST_AGENT_CHANNEL:
            return True
    return False


class SnapshotRecord(object):
    """One snapshot as libvirt describes it."""

    def __init__(self, name, parent=None, description=None, state=None, creation_time=None, memory='no',
                 memory_file=None, disks=None, domain_disks_at_snapshot=None, current=False):
        self.name = name
        self.parent = parent
        self.description = description
        self.state = state
        self.creation_time = creation_time
        self.memory = memory
        self.memory_file = memory_file
        self.disks = disks or []   # [{'name', 'snapshot', 'file', 'format'}]
        self.domain_disks = domain_disks_at_snapshot or {}   # target -> DomainDisk of the domain when it was taken
        self.current = current

    @classmethod
    def from_xml(cls, xml, current=False):
        element = parse_xml(xml, 'snapshot definition')
        return cls.from_element(element, current)

    @classmethod
    def from_element(cls, element, current=False):
        if element.tag != 'domainsnapshot':
            raise LibvirtModuleError('a snapshot definition has a <domainsnapshot> root element, found <%s>' % element.tag)
        memory = element.find('memory')
        disks = []
        for disk in element.findall('disks/disk'):
            source = disk.find('source')
            driver = disk.find('driver')
            disks.append({
                'name': disk.get('name'),
                'snapshot': disk.get('snapshot') or 'no',
                'file': None if source is None else (source.get('file') or source.get('dev')),
                'format': None if driver is None else driver.get('type'),
            })
        creation = child_text(element, 'creationTime')
        domain = element.find('domain')
        at_snapshot = {}
        if domain is not None:
            at_snapshot = dict((disk.target, disk) for disk in domain_disks(domain))
        return cls(
            name=child_text(element, 'name'),
            parent=child_text(element, 'parent/name'),
            description=None if element.find('description') is None else (element.find('description').text or ''),
            state=child_text(element, 'state'),
            creation_time=int(creation) if creation and creation.isdigit() else None,
            memory='no' if memory is None else memory.get('snapshot', 'no'),
            memory_file=None if memory is None else memory.get('file'),
            disks=disks,
            domain_disks_at_snapshot=at_snapshot,
            current=current,
        )

    @property
    def external(self):
        """Whether any part of the snapshot (a disk or the memory state) lives in a file of its own."""
        return self.memory == 'external' or any(disk['snapshot'] == 'external' for disk in self.disks)

    @property
    def kind(self):
        modes = set(disk['snapshot'] for disk in self.disks if disk['snapshot'] != 'no')
        if self.memory in ('internal', 'external'):
            modes.add(self.memory)
        if not modes:
            return 'none'
        return modes.pop() if len(modes) == 1 else 'mixed'

    @property
    def disk_only(self):
        return self.memory == 'no'


class DomainSnapshots(object):
    """A domain, its disks and its snapshots, read once."""

    def __init__(self, name, state, disks, snapshots, lib_version, uri, guest_agent=False):
        self.name = name
        self.state = state                   # a DOMAIN_STATE_NAMES entry
        self.disks = disks                   # [DomainDisk] of the running (or, shut off, persistent) definition
        self.snapshots = dict((record.name, record) for record in snapshots)
        self.lib_version = lib_version
        self.uri = uri
        self.guest_agent = guest_agent

    @property
    def active(self):
        return DOMAIN_RUN_STATES.get(self.state, 'shutoff') != 'shutoff'

    @property
    def run_state(self):
        return DOMAIN_RUN_STATES.get(self.state, 'shutoff')

    @property
    def current(self):
        for record in self.snapshots.values():
            if record.current:
                return record.name
        return None

    def disk(self, target):
        for disk in self.disks:
            if disk.target == target:
                return disk
        return None


def read_snapshots(domain, what):
    """SnapshotRecords of every snapshot of a virDomain."""
    records = []
    for snapshot in libvirt_call(what, domain.listAllSnapshots, 0):
        xml = libvirt_call(what, snapshot.getXMLDesc, 0)
        records.append(SnapshotRecord.from_xml(xml, current=bool(libvirt_call(what, snapshot.isCurrent, 0))))
    return records


def read_domain(conn, name, uri):
    """DomainSnapshots of the domain named ``name`` (a LibvirtModuleError when it is not defined)."""
    domain = lookup_domain(conn, name, uri)
    what = 'cannot read domain %s' % _quoted(name)
    state_code = libvirt_call(what, domain.state, 0)[0]
    element = parse_xml(libvirt_call(what, domain.XMLDesc, 0), 'definition of domain %s' % _quoted(name))
    return DomainSnapshots(
        name=name,
        state=DOMAIN_STATE_NAMES[state_code] if 0 <= state_code < len(DOMAIN_STATE_NAMES) else 'nostate',
        disks=domain_disks(element),
        snapshots=read_snapshots(domain, 'cannot read the snapshots of domain %s' % _quoted(name)),
        lib_version=libvirt_call(what, conn.getLibVersion),
        uri=uri,
        guest_agent=has_guest_agent(element),
    )


# --------------------------------------------------------------------------- tree
def children_map(snapshots):
    """{name or None (the roots): [child names in creation order]} of a {name: SnapshotRecord}."""
    tree = {None: []}
    for name in snapshots:
        tree.setdefault(name, [])
    for record in snapshots.values():
        parent = record.parent if record.parent in snapshots else None
        tree[parent].append(record.name)
    for names in tree.values():
        names.sort(key=lambda child: (snapshots[child].creation_time or 0, child))
    return tree


def tree_order(snapshots):
    """[(name, depth)] depth first from the roots, siblings in creation order."""
    tree = children_map(snapshots)
    order = []
    stack = [(name, 0) for name in reversed(tree[None])]
    while stack:
        name, depth = stack.pop()
        order.append((name, depth))
        stack.extend((child, depth + 1) for child in reversed(tree[name]))
    return order


def descendants(snapshots, name):
    """Names of every descendant of ``name`` (depth first)."""
    tree = children_map(snapshots)
    found = []
    stack = list(reversed(tree.get(name, [])))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(reversed(tree[child]))
    return found


def snapshot_info(record, snapshots):
    """What the modules return about a snapshot."""
    tree = children_map(snapshots)
    return {
        'name': record.name,
        'parent': record.parent,
        'children': list(tree.get(record.name, [])),
        'descendants': len(descendants(snapshots, record.name)),
        'creation_time': record.creation_time,
        'creation_date': None if record.creation_time is None else time.strftime(
            '%Y-%m-%dT%H:%M:%SZ', time.gmtime(record.creation_time)),
        'state': record.state,
        'current': record.current,
        'description': record.description,
        'kind': record.kind,
        'external': record.external,
        'disk_only': record.disk_only,
        'memory': {'snapshot': record.memory, 'file': record.memory_file},
        'disks': [dict(disk) for disk in record.disks],
    }


# --------------------------------------------------------------------------- view (the diff)
def _snapshot_line(record):
    parts = [record.state or 'unknown', record.kind]
    if record.memory == 'external':
        parts.append('memory in %s' % record.memory_file)
    elif record.memory == 'internal':
        parts.append('with memory')
    for disk in record.disks:
        if disk['snapshot'] == 'external':
            parts.append('%s -> %s' % (disk['name'], disk['file']))
        elif disk['snapshot'] == 'no':
            parts.append('%s not snapshotted' % disk['name'])
    line = '%s (%s)' % (record.name, ', '.join(parts))
    if record.description:
        line += ': %s' % ' '.join(record.description.split())
    return line


def _external_parts(record):
    """What of a snapshot is in files of its own, for messages."""
    parts = ['memory in %s' % record.memory_file] if record.memory == 'external' else []
    parts.extend('%s overlay %s' % (disk['name'], disk['file']) for disk in record.disks if disk['snapshot'] == 'external')
    return ', '.join(parts)


def domain_view(name, state, current, snapshots):
    """The view compared and shown in the diff: domain state, current snapshot, the tree as text lines."""
    return {
        'domain': name,
        'state': state,
        'current': current,
        'snapshots': ['%s- %s' % ('  ' * depth, _snapshot_line(snapshots[snapshot])) for snapshot, depth in tree_order(snapshots)],
    }


def render_view(view):
    lines = ['domain: %s' % view['domain'], 'state: %s' % view['state'], 'current snapshot: %s' % (view['current'] or '(none)')]
    if 'at_snapshot' in view:
        # A revert's own question: whether the domain is at the snapshot (its disks may differ with nothing else changed).
        lines.append('at snapshot %s' % view['at_snapshot'])
    if view['snapshots']:
        lines.append('snapshots:')
        lines.extend('  ' + line for line in view['snapshots'])
    else:
        lines.append('snapshots: (none)')
    return '\n'.join(lines) + '\n'


# --------------------------------------------------------------------------- request
class SnapshotRequest(object):
    """What the task asks for, checked for options that do not go together."""

    CREATE_OPTIONS = ('description', 'external', 'memory', 'disks')
    CREATE_FLAGS = ('disk_only', 'quiesce', 'live')
    DELETE_FLAGS = ('children', 'children_only', 'metadata_only')
    REVERT_FLAGS = ('revert_always', 'force')

    def __init__(self, params):
        self.domain = params['domain']
        self.name = params['name']
        self.state = params.get('state') or 'present'
        self.uri = params.get('uri')
        if not self.domain:
            raise LibvirtModuleError('domain must not be empty')
        if not self.name:
            raise LibvirtModuleError('name must not be empty')
        if '/' in self.name:
            # libvirt names overlay files after the snapshot: a slash would put them in another directory.
            raise LibvirtModuleError('name %r: a snapshot name cannot contain "/"' % self.name)
        self.description = params.get('description')
        self.external = params.get('external')
        self.disk_only = bool(params.get('disk_only'))
        self.memory = params.get('memory')
        self.disks = params.get('disks') or []
        self.quiesce = bool(params.get('quiesce'))
        self.live = bool(params.get('live'))
        self.children = bool(params.get('children'))
        self.children_only = bool(params.get('children_only'))
        self.metadata_only = bool(params.get('metadata_only'))
        self.domain_state = params.get('domain_state') or 'snapshot'
        self.revert_always = bool(params.get('revert_always'))
        self.force = bool(params.get('force'))

        # Not in the spec: required_if declares what a state needs, not what it refuses.
        if self.state != 'present':
            given = [option for option in self.CREATE_OPTIONS if params.get(option) not in (None, [])]
            given += [option for option in self.CREATE_FLAGS if params.get(option)]
            if given:
                raise LibvirtModuleError('%s: only with state=present (they describe a snapshot to create)' % ', '.join(given))
        if self.state != 'absent':
            given = [option for option in self.DELETE_FLAGS if params.get(option)]
            if given:
                raise LibvirtModuleError('%s: only with state=absent' % ', '.join(given))
        if self.state != 'revert':
            given = [option for option in self.REVERT_FLAGS if params.get(option)]
            if self.domain_state != 'snapshot':
                given.insert(0, 'domain_state')
            if given:
                raise LibvirtModuleError('%s: only with state=revert' % ', '.join(given))
        # Declared mutually_exclusive too, which counts the options given; this checks their values (both true).
        if self.children and self.children_only:
            raise LibvirtModuleError('children and children_only are mutually exclusive')
        for option, path in [('memory', self.memory)] + [('disks[%s].file' % d['name'], d.get('file')) for d in self.disks]:
            if path is not None and not os.path.isabs(path):
                raise LibvirtModuleError('%s: libvirt needs an absolute path, found %r' % (option, path))
        if self.memory is not None:
            if self.external is False:
                raise LibvirtModuleError('memory is the file of an external snapshot\'s memory state: it does not go with external=false')
            # A value (disk_only=true), not the option given: disk_only is a bool with a default.
            if self.disk_only:
                raise LibvirtModuleError('memory and disk_only=true are mutually exclusive (a disk-only snapshot saves no memory)')
            self.external = True
        seen = set()
        for disk in self.disks:
            if disk['name'] in seen:
                raise LibvirtModuleError('disks: disk %s is given more than once' % disk['name'])
            seen.add(disk['name'])
            if disk.get('file') and disk.get('snapshot') not in (None, 'external'):
                raise LibvirtModuleError('disks: disk %s has a file, which only an external snapshot of it uses (snapshot=%s)'
                                         % (disk['name'], disk.get('snapshot')))
            if disk.get('file') and self.external is None:
                self.external = True


# --------------------------------------------------------------------------- plan
def _quoted(name):
    return "'%s'" % name


def derived_overlay(path, snapshot_name):
    """The overlay file libvirt names for an external snapshot of a disk when none is given
    (virDomainSnapshotDefAssignExternalNames): the file's extension replaced by the snapshot's name,
    or the name appended when it has none."""
    directory, base = os.path.split(path)
    if '.' in base:
        base = base[:base.rindex('.')]
    return '%s.%s' % (os.path.join(directory, base), snapshot_name)


def _match_disk(domain, name):
    """The domain disk a ``disks[].name`` designates: its target (vda) or its source path."""
    for disk in domain.disks:
        if disk.target == name:
            return disk
    for disk in domain.disks:
        if disk.source and os.path.normpath(disk.source) == os.path.normpath(name):
            return disk
    return None


def _default_mode(disk, external):
    if _may_leave_out(disk):
        return 'no'
    return 'external' if external else 'internal'


def _may_leave_out(disk):
    """Whether libvirt accepts snapshot='no' for the disk in an internal snapshot (virDomainSnapshotAlignDisks: only
    when the disk's own definition says 'no', which read-only disks imply, or the drive is empty)."""
    return disk.snapshot == 'no' or disk.readonly or not disk.source or disk.device in NO_SNAPSHOT_DEVICES


def plan_disks(request, domain, file_exists=os.path.exists):
    """[{'name', 'snapshot', 'file', 'format'}] for every disk of the domain, in its order: what the snapshot takes."""
    external = bool(request.external)
    chosen = {}
    for given in request.disks:
        disk = _match_disk(domain, given['name'])
        if disk is None:
            raise LibvirtModuleError('disks: domain %s has no disk %s (its disks: %s)' % (
                _quoted(domain.name), given['name'], ', '.join('%s (%s)' % (d.target, d.source or 'empty') for d in domain.disks)
                or 'none'))
        chosen[disk.target] = given
    planned = []
    for disk in domain.disks:
        given = chosen.get(disk.target, {})
        mode = given.get('snapshot') or ('external' if given.get('file') else _default_mode(disk, external))
        entry = {'name': disk.target, 'snapshot': mode, 'file': None, 'format': None}
        if mode == 'no' and not external and not _may_leave_out(disk):
            raise LibvirtModuleError(
                'disk %s of domain %s: libvirt takes an internal snapshot of every writable disk, and leaves one out only '
                'when its definition says so (<disk snapshot="no">); make an external snapshot (external=true) to leave it out'
                % (disk.target, _quoted(domain.name)))
        if mode == 'internal':
            if disk.format != 'qcow2':
                raise LibvirtModuleError(
                    'disk %s of domain %s (%s) is a %s image: internal snapshots need qcow2 disks; make an external snapshot '
                    '(external=true), or mark the disk snapshot="no" in the domain definition%s'
                    % (disk.target, _quoted(domain.name), disk.source, disk.format or 'raw',
                       ' (or leave it out with disks: [{name: %s, snapshot: "no"}])' % disk.target if _may_leave_out(disk) else ''))
        elif mode == 'external':
            overlay = given.get('file')
            if not overlay:
                if disk.type != 'file' or not disk.source:
                    raise LibvirtModuleError(
                        'disk %s of domain %s is a %s disk: libvirt names overlay files only for file disks; give its '
                        'overlay in disks: [{name: %s, file: /path/to/overlay.qcow2}]'
                        % (disk.target, _quoted(domain.name), disk.type, disk.target))
                overlay = derived_overlay(disk.source, request.name)
            if file_exists(overlay):
                raise LibvirtModuleError('the overlay file %s for disk %s exists already: libvirt creates the overlay of an '
                                         'external snapshot; remove it or name another file in disks' % (overlay, disk.target))
            entry['file'] = overlay
            entry['format'] = 'qcow2'
        planned.append(entry)
    overlays = [entry['file'] for entry in planned if entry['file']]
    if len(set(overlays)) != len(overlays):
        raise LibvirtModuleError('two disks would get the same overlay file (%s): name their files in disks' % ', '.join(overlays))
    modes = set(entry['snapshot'] for entry in planned) - {'no'}
    if not modes:
        raise LibvirtModuleError('snapshot %s of domain %s would take no disk: every disk is left out' % (
            _quoted(request.name), _quoted(domain.name)))
    if len(modes) > 1:
        raise LibvirtModuleError('snapshot %s mixes internal and external disk snapshots (%s), which libvirt does not support; '
                                 'make them all external (external=true) or all internal' % (_quoted(request.name), ', '.join(
                                     '%s=%s' % (entry['name'], entry['snapshot']) for entry in planned)))
    return planned


def snapshot_element(name, description, memory, memory_file, disks):
    """The <domainsnapshot> definition given to virDomainSnapshotCreateXML."""
    root = ElementTree.Element('domainsnapshot')
    ElementTree.SubElement(root, 'name').text = name
    if description is not None:
        ElementTree.SubElement(root, 'description').text = description
    memory_element = ElementTree.SubElement(root, 'memory', {'snapshot': memory})
    if memory_file:
        memory_element.set('file', memory_file)
    disks_element = ElementTree.SubElement(root, 'disks')
    for disk in disks:
        disk_element = ElementTree.SubElement(disks_element, 'disk', {'name': disk['name'], 'snapshot': disk['snapshot']})
        if disk['snapshot'] == 'external':
            disk_element.set('type', 'file')
            ElementTree.SubElement(disk_element, 'driver', {'type': disk.get('format') or 'qcow2'})
            ElementTree.SubElement(disk_element, 'source', {'file': disk['file']})
    return root


def _existing_conflicts(request, record, domain):
    """What the task asks of an existing snapshot that a snapshot cannot change."""
    conflicts = []
    if request.external is not None and record.external != request.external:
        conflicts.append('it is %s, the task asks for an %s snapshot' % (
            'external' if record.external else 'internal', 'external' if request.external else 'internal'))
    if request.memory and (record.memory != 'external' or os.path.normpath(record.memory_file or '') != os.path.normpath(request.memory)):
        conflicts.append('its memory state is %s, the task asks for %s' % (
            record.memory_file if record.memory == 'external' else record.memory, request.memory))
    if request.disk_only and not record.disk_only:
        conflicts.append('it holds the memory state (%s), the task asks for a disk-only snapshot' % record.memory)
    recorded = dict((disk['name'], disk) for disk in record.disks)
    for given in request.disks:
        matched = _match_disk(domain, given['name'])
        disk = recorded.get(given['name'] if matched is None else matched.target)
        if disk is None:
            continue
        if given.get('snapshot') and given['snapshot'] != disk['snapshot']:
            conflicts.append('disk %s is snapshotted as %s, the task asks for %s' % (given['name'], disk['snapshot'], given['snapshot']))
        if given.get('file') and os.path.normpath(given['file']) != os.path.normpath(disk['file'] or ''):
            conflicts.append('the overlay of disk %s is %s, the task asks for %s' % (given['name'], disk['file'], given['file']))
    return conflicts


def _plan_present(request, domain, before):
    name = _quoted(request.name)
    snapshots = domain.snapshots
    after = copy.deepcopy(snapshots)
    record = snapshots.get(request.name)
    if record is not None:
        conflicts = _existing_conflicts(request, record, domain)
        if conflicts:
            raise LibvirtModuleError('snapshot %s of domain %s exists and differs from the task in what a snapshot cannot change: '
                                     '%s; remove it first (state=absent) or choose another name'
                                     % (name, _quoted(domain.name), '; '.join(conflicts)))
        actions = []
        if request.description is not None and (record.description or '') != request.description:
            # The new description is an argument of the action (Action's own description is positional only).
            # pylint: disable-next=kwarg-superseded-by-positional-arg
            actions.append(Action('redefine', 'change the description of snapshot %s of domain %s' % (name, _quoted(domain.name)),
                                  description=request.description))
            after[request.name].description = request.description
        return Plan(actions, before, domain_view(domain.name, domain.run_state, domain.current, after))

    external = bool(request.external)
    active = domain.active
    if request.quiesce:
        if not active:
            raise LibvirtModuleError('quiesce: domain %s is shut off; only the file systems of a running guest can be quiesced'
                                     % _quoted(domain.name))
        if not (external and request.disk_only):
            raise LibvirtModuleError('quiesce needs a disk-only external snapshot (external=true, disk_only=true): libvirt '
                                     'quiesces the guest only for disk-only snapshots, and of a running domain those are external')
        if not domain.guest_agent:
            raise LibvirtModuleError('quiesce needs the QEMU guest agent, and domain %s has no guest agent channel (%s) in its '
                                     'definition' % (_quoted(domain.name), GUEST_AGENT_CHANNEL))
    if request.memory and not active:
        raise LibvirtModuleError('memory: domain %s is shut off, it has no memory state to save; leave memory out' % _quoted(domain.name))
    if active and external and not request.disk_only and not request.memory:
        raise LibvirtModuleError('an external snapshot of running domain %s saves its memory state in a file: give that file '
                                 'as memory, or take a disk-only snapshot (disk_only=true)' % _quoted(domain.name))
    if active and not external and request.disk_only:
        raise LibvirtModuleError('disk_only=true: libvirt makes disk-only snapshots of a running domain (%s) only as external '
                                 'snapshots; set external=true, or leave disk_only out for an internal snapshot with memory'
                                 % _quoted(domain.name))
    if request.live and not (active and request.memory):
        raise LibvirtModuleError('live applies to external snapshots with memory (memory) of a running domain')
    disks = plan_disks(request, domain)

    flags = ['VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC']
    if not active:
        memory, memory_file, state = 'no', None, 'shutoff'
        if external:
            flags.append('VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY')
    elif external and request.disk_only:
        memory, memory_file, state = 'no', None, 'disk-snapshot'
        flags.append('VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY')
    elif external:
        memory, memory_file, state = 'external', request.memory, domain.run_state
        if os.path.exists(request.memory):
            raise LibvirtModuleError('memory: %s exists already; the memory state goes to a new file' % request.memory)
    else:
        memory, memory_file, state = 'internal', None, domain.run_state
    if request.quiesce:
        flags.append('VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE')
    if request.live:
        flags.append('VIR_DOMAIN_SNAPSHOT_CREATE_LIVE')

    element = snapshot_element(request.name, request.description, memory, memory_file, disks)
    new = SnapshotRecord(request.name, parent=domain.current, description=request.description, state=state,
                         memory=memory, memory_file=memory_file, disks=disks, current=True,
                         creation_time=max([r.creation_time or 0 for r in snapshots.values()] + [int(time.time())]))
    for other in after.values():
        other.current = False
    after[request.name] = new
    kind = 'external' if external else 'internal'
    detail = []
    if memory == 'external':
        detail.append('memory in %s' % memory_file)
    elif memory == 'internal':
        detail.append('with memory')
    else:
        detail.append('disk-only')
    detail.extend('%s -> %s' % (disk['name'], disk['file']) for disk in disks if disk['snapshot'] == 'external')
    detail.extend('%s left out' % disk['name'] for disk in disks if disk['snapshot'] == 'no')
    text = 'create %s snapshot %s of %s domain %s (%s)' % (kind, name, 'running' if active else 'shut-off', _quoted(domain.name),
                                                           ', '.join(detail))
    files = [('memory: the directory of %s' % memory_file, memory_file)] if memory_file else []
    files.extend(('the directory of the overlay file %s for disk %s' % (disk['file'], disk['name']), disk['file'])
                 for disk in disks if disk['snapshot'] == 'external')
    action = Action('create', text, xml=ElementTree.tostring(element, encoding='unicode'), flags=flags, files=files)
    return Plan([action], before, domain_view(domain.name, domain.run_state, request.name, after))


def revert_target_state(request, record):
    """The run state a revert leaves the domain in."""
    if request.domain_state in ('running', 'paused'):
        return request.domain_state
    if record.state in ('running', 'paused'):
        return record.state
    if record.state in ('blocked', 'shutdown'):
        return 'running'
    if record.state == 'pmsuspended':
        return 'paused'
    return 'shutoff'


def disks_at_snapshot(domain, record, compare):
    """Whether every disk of a shut-off domain still holds what internal snapshot ``record`` holds.

    ``compare(path, name)`` is diskimage.snapshot_compare (injected for the tests); a disk the domain
    no longer uses, or that cannot be read, counts as changed (the revert happens).
    """
    internal = [disk for disk in record.disks if disk['snapshot'] == 'internal']
    if not internal:
        return False
    for disk in internal:
        current = domain.disk(disk['name'])
        then = record.domain_disks.get(disk['name'])
        if current is None or then is None or current.source != then.source or current.type != 'file':
            return False
        try:
            result = compare(current.source, record.name)
        except (ImageError, OSError, ValueError):
            return False
        if not result.get('identical'):
            return False
    return True


def _image_compare(path, name):
    return snapshot_compare(path, name, allow_dirs=[os.path.dirname(path)])


def _plan_revert(request, domain, before, compare):
    name = _quoted(request.name)
    record = domain.snapshots.get(request.name)
    if record is None:
        raise LibvirtModuleError('domain %s has no snapshot %s to revert to (its snapshots: %s)' % (
            _quoted(domain.name), name, ', '.join(sorted(domain.snapshots)) or 'none'))
    if record.external and domain.lib_version < EXTERNAL_REVERT_VERSION:
        raise LibvirtModuleError(unsupported_message(
            'cannot revert domain %s to snapshot %s' % (_quoted(domain.name), name), domain.lib_version, domain.uri,
            'snapshot %s is external (%s) and reverting to external snapshots needs libvirt %s or later'
            % (name, _external_parts(record), version_text(EXTERNAL_REVERT_VERSION))))
    target = revert_target_state(request, record)
    after_snapshots = copy.deepcopy(domain.snapshots)
    for other in after_snapshots.values():
        other.current = other.name == request.name
    after = domain_view(domain.name, target, request.name, after_snapshots)
    after['at_snapshot'] = '%s: yes' % request.name
    if domain.current != request.name:
        reason = 'no, the current snapshot is %s' % (domain.current or 'none')
    elif domain.run_state != target:
        reason = 'no, the domain is %s, the revert leaves it %s' % (domain.run_state, target)
    elif target == 'shutoff' and not disks_at_snapshot(domain, record, compare):
        reason = 'no, the disks no longer hold what the snapshot holds'
    elif request.revert_always:
        reason = 'yes, reverted again (revert_always)'
    else:
        return Plan([], dict(before, at_snapshot=after['at_snapshot']), after)
    before = dict(before, at_snapshot='%s: %s' % (request.name, reason))
    flags = []
    if request.domain_state == 'running':
        flags.append('VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING')
    elif request.domain_state == 'paused':
        flags.append('VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED')
    if request.force:
        flags.append('VIR_DOMAIN_SNAPSHOT_REVERT_FORCE')
    action = Action('revert', 'revert domain %s to snapshot %s (%s -> %s)' % (_quoted(domain.name), name, domain.run_state, target),
                    flags=flags)
    return Plan([action], before, after)


def _plan_absent(request, domain, before):
    name = _quoted(request.name)
    snapshots = domain.snapshots
    record = snapshots.get(request.name)
    if record is None:
        return Plan([], before, before)
    below = descendants(snapshots, request.name)
    if request.children_only:
        removed = below
    elif request.children:
        removed = [request.name] + below
    else:
        removed = [request.name]
    if not removed:
        return Plan([], before, before)
    if not request.metadata_only:
        external = [snapshot for snapshot in removed if snapshots[snapshot].external]
        what = 'cannot delete snapshot %s of domain %s' % (name, _quoted(domain.name))
        hint = 'metadata_only=true removes only libvirt\'s record of it and leaves its files'
        if external and domain.lib_version < EXTERNAL_DELETE_VERSION:
            raise LibvirtModuleError(unsupported_message(what, domain.lib_version, domain.uri, 'deleting external snapshots (%s) needs '
                                                         'libvirt %s or later' % (', '.join(external), version_text(EXTERNAL_DELETE_VERSION)),
                                                         hint))
        if external and (len(removed) > 1 or (request.children_only and below)):
            # qemuSnapshotDeleteValidate refuses children / children_only as soon as one descendant is external.
            raise LibvirtModuleError(unsupported_message(what, domain.lib_version, domain.uri, 'libvirt deletes external snapshots (%s) '
                                                         'one at a time, never with their children' % ', '.join(external),
                                                         'delete the children first, newest first, or ' + hint))
        if record.external and below and not request.children_only:
            raise LibvirtModuleError(unsupported_message(what, domain.lib_version, domain.uri, 'external snapshot %s has children '
                                                         '(%s), and libvirt deletes only external snapshots without children'
                                                         % (name, ', '.join(below)), 'delete the children first, or ' + hint))
        parent = _internal_parent_merged_into(record, snapshots, domain.current)
        if parent is not None:
            raise LibvirtModuleError(unsupported_message(what, domain.lib_version, domain.uri, 'external snapshot %s is the current one and '
                                                         'its parent %s is internal: libvirt merges a current external snapshot '
                                                         'into its parent, and only into an external one' % (name, parent), hint))
    after = copy.deepcopy(snapshots)
    current = domain.current
    if current in removed:
        current = request.name if request.children_only else record.parent
    for snapshot in removed:
        parent = after[snapshot].parent
        for other in after.values():
            if other.parent == snapshot:
                other.parent = parent
    for snapshot in removed:
        del after[snapshot]
    for other in after.values():
        other.current = other.name == current
    if request.children_only:
        scope = 'the %d descendants of snapshot %s (%s)' % (len(removed), name, ', '.join(removed))
    elif request.children:
        scope = 'snapshot %s and its %d descendants' % (name, len(below)) if below else 'snapshot %s' % name
    else:
        scope = 'snapshot %s' % name
    text = 'delete %s of domain %s%s' % (scope, _quoted(domain.name), ' (metadata only: their files stay)' if request.metadata_only else '')
    # The flags libvirt gets: CHILDREN only when there are children (libvirt refuses it on any external snapshot).
    flags = []
    if request.children and below:
        flags.append('VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN')
    if request.children_only:
        flags.append('VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN_ONLY')
    if request.metadata_only:
        flags.append('VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY')
    action = Action('delete', text, removed=removed, flags=flags)
    return Plan([action], before, domain_view(domain.name, domain.run_state, current, after))


def _internal_parent_merged_into(record, snapshots, current):
    """The internal snapshot libvirt would have to merge external snapshot ``record`` into, or None.

    libvirt (qemuSnapshotDeleteExternalPrepareData) merges the overlays of an external snapshot that is the
    current one (or has children, refused before) into the snapshot each disk had before, the nearest ancestor
    that took that disk, and refuses when that ancestor is not external.
    """
    if not record.external or record.name != current:
        return None
    for disk in record.disks:
        if disk['snapshot'] != 'external':
            continue
        parent = snapshots.get(record.parent)
        seen = set()
        while parent is not None and parent.name not in seen:
            seen.add(parent.name)
            if any(other['name'] == disk['name'] and other['snapshot'] != 'no' for other in parent.disks):
                if not parent.external:
                    return parent.name
                break
            parent = snapshots.get(parent.parent)
    return None


def plan_domain_snapshot(request, domain, compare=_image_compare):
    """Compare the domain's snapshots with the request; returns a Plan.  Reads nothing but, for a revert of
    a shut-off domain, the disk images through ``compare``; changes nothing."""
    before = domain_view(domain.name, domain.run_state, domain.current, domain.snapshots)
    if request.state == 'present':
        return _plan_present(request, domain, before)
    if request.state == 'revert':
        return _plan_revert(request, domain, before, compare)
    return _plan_absent(request, domain, before)


# --------------------------------------------------------------------------- apply
def check_plan_files(plan, isdir=os.path.isdir):
    """Refuse, before anything is done (in check mode too), a plan whose new files (overlays, memory state) would go
    to a directory that does not exist: libvirt creates the files, not their directories."""
    for action in plan.actions:
        for what, path in action.args.get('files', ()):
            if not isdir(os.path.dirname(path)):
                raise LibvirtModuleError('%s does not exist: libvirt creates the file, not its directory' % what)


def _flags(names):
    value = 0
    for flag in names:
        value |= getattr(libvirt, flag)
    return value


def apply_plan(conn, plan, request, domain):
    virdomain = lookup_domain(conn, request.domain, domain.uri)
    name = _quoted(request.name)
    version, uri = domain.lib_version, domain.uri
    for action in plan.actions:
        if action.kind == 'create':
            snapshot_call('cannot create snapshot %s of domain %s' % (name, _quoted(request.domain)), version, uri,
                          virdomain.snapshotCreateXML, action.args['xml'], _flags(action.args['flags']))
        elif action.kind == 'redefine':
            what = 'cannot change the description of snapshot %s of domain %s' % (name, _quoted(request.domain))
            snapshot = libvirt_call(what, virdomain.snapshotLookupByName, request.name, 0)
            element = parse_xml(libvirt_call(what, snapshot.getXMLDesc, libvirt.VIR_DOMAIN_SNAPSHOT_XML_SECURE), what)
            description = element.find('description')
            if description is None:
                description = ElementTree.Element('description')
                element.insert(1, description)
            description.text = action.args['description']
            snapshot_call(what, version, uri, virdomain.snapshotCreateXML, ElementTree.tostring(element, encoding='unicode'),
                          libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE)
        elif action.kind == 'revert':
            what = 'cannot revert domain %s to snapshot %s' % (_quoted(request.domain), name)
            snapshot = libvirt_call(what, virdomain.snapshotLookupByName, request.name, 0)
            snapshot_call(what, version, uri, virdomain.revertToSnapshot, snapshot, _flags(action.args['flags']))
        elif action.kind == 'delete':
            what = 'cannot delete snapshot %s of domain %s' % (name, _quoted(request.domain))
            snapshot = libvirt_call(what, virdomain.snapshotLookupByName, request.name, 0)
            snapshot_call(what, version, uri, snapshot.delete, _flags(action.args['flags']),
                          hint='metadata_only=true removes only libvirt\'s record of it and leaves its files')
        else:
            raise LibvirtModuleError('internal error: unknown action %r' % action.kind)


# --------------------------------------------------------------------------- modules
def run_domain_snapshot(conn, params, check_mode):
    """The domain_snapshot module: returns the result dict for exit_json (``diff`` always included)."""
    request = SnapshotRequest(params)
    domain = read_domain(conn, request.domain, request.uri)
    plan = plan_domain_snapshot(request, domain)
    check_plan_files(plan)
    if not check_mode and plan.actions:
        apply_plan(conn, plan, request, domain)
        domain = read_domain(conn, request.domain, request.uri)
    header = 'snapshots of domain %s' % request.domain
    record = domain.snapshots.get(request.name)
    return dict(
        plan.result(),
        snapshot={} if record is None else snapshot_info(record, domain.snapshots),
        current=domain.current,
        domain_state=domain.state,
        lib_version=version_text(domain.lib_version),
        diff=plan.diff(header, render_view),
    )


def run_domain_snapshot_info(conn, params):
    domain = read_domain(conn, params['domain'], params.get('uri'))
    order = [name for name, dummy in tree_order(domain.snapshots)]
    if params.get('name'):
        order = [name for name in order if name == params['name']]
    tree = children_map(domain.snapshots)
    return dict(
        changed=False,
        snapshots=[snapshot_info(domain.snapshots[name], domain.snapshots) for name in order],
        current=domain.current,
        roots=list(tree[None]),
        tree=domain_view(domain.name, domain.run_state, domain.current, domain.snapshots)['snapshots'],
        domain_state=domain.state,
        lib_version=version_text(domain.lib_version),
    )
