# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backend of the storage_pool and storage_pool_info modules.

Private to this collection (the leading underscore): no compatibility promise.

storage_pool reads the pool once (``read_pool_state``), compares it with the request
(``plan_storage_pool``, a pure function returning the actions and the diff views), and
applies the plan only outside check mode (``apply_plan``).  Definitions are compared as
normalised XML (``normalise_pool_element``): what libvirt adds on its own (uuid, sizes,
defaults it fills in, permissions it reads from the target directory) is not a difference,
everything the task asks for is compared.  The diff shows those same normalised views.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import copy
import grp
import os
import pwd
import stat
from xml.etree import ElementTree

from ansible_collections.kvm.storage.plugins.module_utils._file_attributes import int_mode_warning
from ansible_collections.kvm.storage.plugins.module_utils._libvirt import (
    LibvirtModuleError,
    canonical_xml,
    child_text,
    error_is,
    error_message,
    libvirt,
    libvirt_argument_spec,
    libvirt_call,
    parse_xml,
    sanitize_path,
)
from ansible_collections.kvm.storage.plugins.module_utils._plan import Action, Plan

POOL_TYPES = ('dir', 'fs', 'netfs', 'logical', 'disk', 'iscsi', 'rbd')
POOL_STATES = ('present', 'absent', 'active', 'inactive', 'deleted')

# Pool types whose storage is a directory on this host: built by creating it, deleted by removing it.
TARGET_DIRECTORY_TYPES = ('dir', 'fs', 'netfs')
# Pool types libvirt defines without a target path (logical pools default to /dev/<volume group>).
TARGETLESS_TYPES = ('logical', 'rbd')
# Pool types whose storage libvirt can delete (virStoragePoolDelete) and whose existence we can observe.
DELETABLE_TYPES = ('dir', 'fs', 'netfs', 'logical')

# Elements libvirt recomputes every time it reports a pool: never a difference.
VOLATILE_ELEMENTS = ('capacity', 'allocation', 'available')
# What libvirt fills in when a definition leaves it out (storage_conf.c defaults), per pool type:
# the source format, and for logical pools the volume group name (the pool's name).
DEFAULT_SOURCE_FORMAT = {'fs': 'auto', 'netfs': 'auto', 'logical': 'lvm2', 'disk': 'unknown'}
PERMISSION_FIELDS = ('mode', 'owner', 'group', 'label')

# The source keys each pool type takes (the others are refused rather than silently ignored).
SOURCE_KEYS = {
    'dir': (),
    'fs': ('device', 'format'),
    'netfs': ('host', 'port', 'dir', 'format'),
    'logical': ('device', 'name', 'format'),
    'disk': ('device', 'format'),
    'iscsi': ('host', 'port', 'device', 'initiator', 'auth'),
    'rbd': ('host', 'port', 'name', 'auth'),
}
# Source keys a definition of each type cannot do without.
REQUIRED_SOURCE_KEYS = {
    'fs': ('device',),
    'netfs': ('host', 'dir'),
    'disk': ('device',),
    'iscsi': ('host', 'device'),
    'rbd': ('host', 'name'),
}
# libvirt state numbers (virStoragePoolState) in order, spelled as the modules report them.
POOL_STATE_NAMES = ('inactive', 'building', 'active', 'degraded', 'inaccessible')


# --------------------------------------------------------------------------- argument specs
def storage_pool_argument_spec():
    spec = dict(
        name=dict(type='str'),
        type=dict(type='str', choices=list(POOL_TYPES)),
        target=dict(type='path'),
        source=dict(type='dict', options=dict(
            host=dict(type='list', elements='str'),
            port=dict(type='int'),
            dir=dict(type='str'),
            device=dict(type='list', elements='str'),
            name=dict(type='str'),
            format=dict(type='str'),
            initiator=dict(type='str'),
            auth=dict(type='dict', options=dict(
                type=dict(type='str', required=True, choices=['chap', 'ceph']),
                username=dict(type='str', required=True),
                # Names of libvirt secret objects, not the secrets themselves.
                secret_usage=dict(type='str', no_log=False),
                secret_uuid=dict(type='str', no_log=False),
            ), mutually_exclusive=[('secret_usage', 'secret_uuid')], required_one_of=[('secret_usage', 'secret_uuid')]),
        ), required_by={'port': 'host'}),
        xml=dict(type='str'),
        uuid=dict(type='str'),
        mode=dict(type='raw'),
        owner=dict(type='str'),
        group=dict(type='str'),
        state=dict(type='str', default='present', choices=list(POOL_STATES)),
        autostart=dict(type='bool'),
        build=dict(type='bool', default=False),
        refresh=dict(type='bool', default=False),
        restart=dict(type='bool', default=False),
    )
    spec.update(libvirt_argument_spec())
    return spec


STORAGE_POOL_MUTUALLY_EXCLUSIVE = [('xml', name) for name in ('type', 'target', 'source', 'uuid', 'mode', 'owner', 'group')]
STORAGE_POOL_REQUIRED_ONE_OF = [('name', 'xml')]


def storage_pool_info_argument_spec():
    spec = dict(name=dict(type='str'))
    spec.update(libvirt_argument_spec())
    return spec


# --------------------------------------------------------------------------- values
def normalise_mode(value):
    """A permission mode as libvirt writes it (four octal digits) from an int or an octal string."""
    if isinstance(value, bool):
        raise LibvirtModuleError('mode: expected an octal mode such as "0755", found %r' % (value,))
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip()
        try:
            number = int(text, 8)
        except ValueError:
            raise LibvirtModuleError('mode: expected an octal mode such as "0755", found %r' % (value,))
    if not 0 <= number <= 0o7777:
        raise LibvirtModuleError('mode: expected an octal mode between 0000 and 7777, found %r' % (value,))
    return '%04o' % number


def resolve_id(value, what):
    """A numeric uid/gid (as text) from a number or a user/group name on this host."""
    text = str(value).strip()
    if text.lstrip('-').isdigit():
        return str(int(text))
    try:
        if what == 'owner':
            return str(pwd.getpwnam(text).pw_uid)
        return str(grp.getgrnam(text).gr_gid)
    except KeyError:
        raise LibvirtModuleError('%s: no %s named %r on this host' % (what, 'user' if what == 'owner' else 'group', text))


# --------------------------------------------------------------------------- XML: building and normalising
def _sub(parent, tag, text=None, **attributes):
    element = ElementTree.SubElement(parent, tag, attributes)
    if text is not None:
        element.text = text
    return element


def _build_source(pool, pool_type, source):
    """The <source> element from the ``source`` option, keys checked against what the type takes."""
    given = dict((key, value) for key, value in (source or {}).items() if value not in (None, []))
    unknown = sorted(key for key in given if key not in SOURCE_KEYS[pool_type])
    if unknown:
        raise LibvirtModuleError('source.%s does not apply to %s pools (they take: %s)' % (
            ', source.'.join(unknown), pool_type, ', '.join(SOURCE_KEYS[pool_type]) or 'no source'))
    missing = [key for key in REQUIRED_SOURCE_KEYS.get(pool_type, ()) if key not in given]
    if missing:
        raise LibvirtModuleError('%s pools need source.%s' % (pool_type, ', source.'.join(missing)))
    if pool_type in ('fs', 'disk', 'netfs') and len(given.get('device', [])) > 1:
        raise LibvirtModuleError('%s pools take one source.device, found %d' % (pool_type, len(given['device'])))
    if pool_type in ('netfs', 'iscsi') and len(given.get('host', [])) > 1:
        raise LibvirtModuleError('%s pools take one source.host, found %d' % (pool_type, len(given['host'])))
    if not given:
        return
    element = _sub(pool, 'source')
    for host in given.get('host', []):
        attributes = {'name': host}
        if 'port' in given:
            attributes['port'] = str(given['port'])
        _sub(element, 'host', **attributes)
    for device in given.get('device', []):
        _sub(element, 'device', path=device)
    if 'dir' in given:
        _sub(element, 'dir', path=given['dir'])
    if 'name' in given:
        _sub(element, 'name', given['name'])
    if 'format' in given:
        _sub(element, 'format', type=given['format'])
    if 'initiator' in given:
        _sub(_sub(element, 'initiator'), 'iqn', name=given['initiator'])
    if 'auth' in given:
        auth = given['auth']
        auth_element = _sub(element, 'auth', type=auth['type'], username=auth['username'])
        if auth.get('secret_uuid'):
            _sub(auth_element, 'secret', uuid=auth['secret_uuid'])
        else:
            _sub(auth_element, 'secret', usage=auth['secret_usage'])


def build_pool_element(name, pool_type, target=None, source=None, uuid=None, mode=None, owner=None, group=None):
    """The pool definition (an Element) the options describe."""
    if not name:
        raise LibvirtModuleError('name is required')
    pool = ElementTree.Element('pool', {'type': pool_type})
    _sub(pool, 'name', name)
    if uuid:
        _sub(pool, 'uuid', uuid.strip().lower())
    _build_source(pool, pool_type, source)
    permissions = [(tag, value) for tag, value in (('mode', mode), ('owner', owner), ('group', group)) if value is not None]
    if pool_type == 'rbd':
        if target or permissions:
            raise LibvirtModuleError('rbd pools have no target: target, mode, owner and group do not apply')
        return pool
    if not target:
        if pool_type in TARGET_DIRECTORY_TYPES:
            raise LibvirtModuleError('%s pools need target (the directory that holds the volumes)' % pool_type)
        if pool_type not in TARGETLESS_TYPES:
            raise LibvirtModuleError('%s pools need target (where the device nodes of their volumes appear, for example %s)'
                                     % (pool_type, '/dev' if pool_type == 'disk' else '/dev/disk/by-path'))
        if permissions:
            raise LibvirtModuleError('mode, owner and group are permissions of target: give target too')
        return pool
    target_element = _sub(pool, 'target')
    _sub(target_element, 'path', sanitize_path(target))
    if permissions:
        permissions_element = _sub(target_element, 'permissions')
        for tag, value in permissions:
            _sub(permissions_element, tag, normalise_mode(value) if tag == 'mode' else resolve_id(value, tag))
    return pool


def normalise_pool_element(element, reference=None, permissions=True):
    """A normalised copy of a pool definition, for comparison and for the diff.

    ``reference`` is the definition the task asks for (``element`` itself when None): what it does not
    mention and libvirt fills in on its own is dropped (the uuid, permissions read from the target
    directory), defaults libvirt applies are written out, values are spelled as libvirt spells them.
    ``permissions=False`` drops the target permissions (compared on the directory itself instead).
    """
    if element.tag != 'pool':
        raise LibvirtModuleError('a storage pool definition has a <pool> root element, found <%s>' % element.tag)
    if reference is None:
        reference = element
    pool = copy.deepcopy(element)
    for tag in VOLATILE_ELEMENTS:
        for volatile in pool.findall(tag):
            pool.remove(volatile)
    if reference.find('uuid') is None:
        for uuid in pool.findall('uuid'):
            pool.remove(uuid)
    else:
        for uuid in pool.findall('uuid'):
            uuid.text = (uuid.text or '').strip().lower()

    pool_type = pool.get('type')
    source = pool.find('source')
    if source is None:
        source = ElementTree.SubElement(pool, 'source')
    if pool_type in DEFAULT_SOURCE_FORMAT and source.find('format') is None:
        _sub(source, 'format', type=DEFAULT_SOURCE_FORMAT[pool_type])
    if pool_type == 'logical' and child_text(source, 'name') is None:
        for empty in source.findall('name'):
            source.remove(empty)
        _sub(source, 'name', child_text(pool, 'name'))
    for directory in source.findall('dir'):
        if directory.get('path'):
            directory.set('path', sanitize_path(directory.get('path')))
    if not len(source) and not source.attrib and not (source.text or '').strip():
        pool.remove(source)

    target = pool.find('target')
    if pool_type == 'logical' and (target is None or child_text(target, 'path') is None):
        if target is None:
            target = ElementTree.SubElement(pool, 'target')
        for empty in target.findall('path'):
            target.remove(empty)
        _sub(target, 'path', '/dev/' + child_text(source, 'name'))
    if target is not None:
        for path in target.findall('path'):
            path.text = sanitize_path((path.text or '').strip())
        _normalise_permissions(target, reference.find('target/permissions') if permissions else None)
    return pool


def _normalise_permissions(target, requested):
    """Keep only the permission fields the request names (libvirt reads the others from the directory)."""
    for permissions in target.findall('permissions'):
        if requested is None:
            target.remove(permissions)
            continue
        wanted = set(child.tag for child in requested)
        for child in list(permissions):
            if child.tag not in wanted:
                permissions.remove(child)
            elif child.tag == 'mode' and child.text and child.text.strip():
                try:
                    child.text = normalise_mode(child.text)
                except LibvirtModuleError:
                    child.text = child.text.strip()
            elif child.tag in ('owner', 'group') and child.text and child.text.strip().lstrip('-').isdigit():
                child.text = str(int(child.text.strip()))
        if not len(permissions):
            target.remove(permissions)


def normalised_xml(element, reference=None, permissions=True):
    """Canonical text of the normalised definition: the value compared and shown in the diff."""
    return canonical_xml(normalise_pool_element(element, reference, permissions))


def requested_permissions(definition):
    """{'mode': '0755', 'owner': '0', 'group': '0'} as far as the definition gives target permissions."""
    permissions = definition.find('target/permissions')
    if permissions is None:
        return {}
    requested = {}
    for tag in ('mode', 'owner', 'group'):
        value = child_text(permissions, tag)
        if value is not None:
            requested[tag] = normalise_mode(value) if tag == 'mode' else resolve_id(value, tag)
    return requested


def read_directory(path):
    """Permissions of a target directory on this host ({'path', 'mode', 'owner', 'group'}), None when it is missing."""
    if not path or not os.path.isdir(path):
        return None
    status = os.stat(path)
    return {'path': path, 'mode': '%04o' % stat.S_IMODE(status.st_mode), 'owner': str(status.st_uid), 'group': str(status.st_gid)}


def describe_permissions(path, permissions):
    return '%s %s' % (path, ' '.join('%s=%s' % (key, permissions[key]) for key in ('mode', 'owner', 'group') if key in permissions))


# --------------------------------------------------------------------------- request
class StoragePoolRequest(object):
    """What the task asks for: name, state, flags, and the definition (an Element) when one is given."""

    def __init__(self, params):
        self.state = params['state']
        self.autostart = params.get('autostart')
        self.build = params.get('build') or False
        self.refresh = params.get('refresh') or False
        self.restart = params.get('restart') or False
        self.uri = params.get('uri')
        self.definition = None
        name = params.get('name')
        if params.get('xml'):
            self.definition = parse_xml(params['xml'], 'xml')
            if self.definition.tag != 'pool':
                raise LibvirtModuleError('xml: a storage pool definition has a <pool> root element, found <%s>'
                                         % self.definition.tag)
            if self.definition.get('type') not in POOL_TYPES:
                raise LibvirtModuleError('xml: pool type %r is not one of %s' % (self.definition.get('type'), ', '.join(POOL_TYPES)))
            xml_name = child_text(self.definition, 'name')
            if not xml_name:
                raise LibvirtModuleError('xml: the definition has no <name>')
            if name and name != xml_name:
                raise LibvirtModuleError('name is %r but xml defines pool %r' % (name, xml_name))
            name = xml_name
        elif params.get('type') and self.state not in ('absent', 'deleted'):
            self.definition = build_pool_element(name, params['type'], target=params.get('target'), source=params.get('source'),
                                                 uuid=params.get('uuid'), mode=params.get('mode'), owner=params.get('owner'),
                                                 group=params.get('group'))
        elif self.state not in ('absent', 'deleted'):
            given = [option for option in ('target', 'source', 'uuid', 'mode', 'owner', 'group') if params.get(option) is not None]
            if given:
                raise LibvirtModuleError('%s describe a pool definition: give type too' % ', '.join(given))
        # Not only required_one_of (name, xml): an xml without <name> needs name too.
        if not name:
            raise LibvirtModuleError('name is required')
        self.name = name

    @property
    def type(self):
        return None if self.definition is None else self.definition.get('type')

    @property
    def requested_uuid(self):
        return None if self.definition is None else child_text(self.definition, 'uuid')


# --------------------------------------------------------------------------- actual state
class PoolState(object):
    """The pool as libvirt has it, read once."""

    def __init__(self, name, uuid, pool_type, active, persistent, autostart, inactive_xml, live_xml,
                 target_exists=None, storage_exists=None, contents=None):
        self.name = name
        self.uuid = uuid
        self.type = pool_type
        self.active = active
        self.persistent = persistent
        self.autostart = autostart
        self.inactive_xml = inactive_xml
        self.live_xml = live_xml
        self.target_exists = target_exists
        self.storage_exists = storage_exists
        # What the storage holds, when known (read for state=deleted): entries of the target directory, or volumes.
        self.contents = contents

    @property
    def inactive_element(self):
        return parse_xml(self.inactive_xml, 'definition of storage pool %r' % self.name)

    @property
    def live_element(self):
        return parse_xml(self.live_xml, 'live definition of storage pool %r' % self.name)

    @property
    def target(self):
        return child_text(self.inactive_element, 'target/path')


def lookup_pool(conn, name):
    """The virStoragePool named ``name``, or None when there is none."""
    try:
        return conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as exc:
        if error_is(exc, 'VIR_ERR_NO_STORAGE_POOL'):
            return None
        raise LibvirtModuleError('cannot look up storage pool %r: %s' % (name, error_message(exc)))


def _volume_groups(conn):
    """Names of the LVM volume groups libvirt finds on this host."""
    sources = libvirt_call('cannot list LVM volume groups', conn.findStoragePoolSources, 'logical', None, 0)
    return set(child_text(source, 'name') for source in parse_xml(sources, 'LVM sources').findall('source'))


def read_pool_state(conn, name, want_storage=False):
    """PoolState of the pool named ``name`` (None when it does not exist)."""
    pool = lookup_pool(conn, name)
    if pool is None:
        return None
    what = 'cannot read storage pool %r' % name
    persistent = bool(libvirt_call(what, pool.isPersistent))
    live_xml = libvirt_call(what, pool.XMLDesc, 0)
    inactive_xml = libvirt_call(what, pool.XMLDesc, libvirt.VIR_STORAGE_XML_INACTIVE) if persistent else live_xml
    state = PoolState(
        name=name,
        uuid=libvirt_call(what, pool.UUIDString),
        pool_type=parse_xml(inactive_xml, what).get('type'),
        active=bool(libvirt_call(what, pool.isActive)),
        persistent=persistent,
        autostart=bool(libvirt_call(what, pool.autostart)),
        inactive_xml=inactive_xml,
        live_xml=live_xml,
    )
    target = state.target
    if target:
        state.target_exists = os.path.isdir(target)
    if want_storage:
        if state.type in TARGET_DIRECTORY_TYPES:
            state.storage_exists = bool(state.target_exists)
        elif state.type == 'logical':
            volume_group = child_text(normalise_pool_element(state.inactive_element), 'source/name')
            state.storage_exists = volume_group in _volume_groups(conn)
        state.contents = _storage_contents(pool, state, what)
    return state


def _storage_contents(pool, state, what):
    """What deleting the pool's storage would destroy or trip on, as far as it can be seen before anything is done
    (None when it cannot): the entries of a dir pool's directory, of an fs or netfs pool's mount point when it is
    not mounted (mounted, the files are the filesystem's, which the deletion leaves alone), the volumes of an
    active logical pool (its volume group is removed with them)."""
    if not state.storage_exists:
        return []
    if state.type == 'dir' or (state.type in TARGET_DIRECTORY_TYPES and not state.active):
        try:
            return sorted(os.listdir(state.target))
        except OSError as exc:
            raise LibvirtModuleError('cannot read the target directory %s of storage pool %s: %s' % (state.target, _quoted(state.name), exc))
    if state.type == 'logical' and state.active:
        libvirt_call(what, pool.refresh, 0)
        return sorted(libvirt_call(what, pool.listVolumes))
    return None


# --------------------------------------------------------------------------- plan
def pool_plan(actions, before, after, warnings=None, restart_pending=False):
    """A Plan with the field the storage_pool module reports: ``restart_pending``."""
    return Plan(actions, before, after, warnings=warnings, restart_pending=restart_pending)


def pool_view(name, state, reference=None, with_storage=False, permissions=True):
    """The normalised view of a pool compared and shown in the diff."""
    if state is None:
        view = {'name': name, 'state': 'absent'}
        if with_storage:
            view['storage'] = 'unknown'
        return view
    inactive = state.inactive_element
    reference = inactive if reference is None else reference
    view = {
        'name': name,
        'state': 'active' if state.active else 'inactive',
        'persistent': state.persistent,
        'autostart': state.autostart,
        'restart_pending': state.active and (normalised_xml(state.live_element, reference, permissions)
                                             != normalised_xml(inactive, reference, permissions)),
        'xml': normalised_xml(inactive, reference, permissions),
    }
    if with_storage:
        view['storage'] = 'present' if state.storage_exists else 'deleted'
    return view


def render_view(view):
    """The view as text for the diff: one field a line, the definition last and indented."""
    lines = []
    for key in ('name', 'state', 'persistent', 'autostart', 'restart_pending', 'storage', 'directory'):
        if key in view:
            value = view[key]
            lines.append('%s: %s' % (key, str(value).lower() if isinstance(value, bool) else value))
    if 'xml' in view:
        lines.append('xml: |')
        lines.extend('  ' + line for line in view['xml'].splitlines())
    return '\n'.join(lines) + '\n'


def _quoted(name):
    return "'%s'" % name


def _plan_absent(request, state):
    before = pool_view(request.name, state)
    after = {'name': request.name, 'state': 'absent'}
    actions = []
    if state is not None:
        if state.active:
            actions.append(Action('stop', 'stop storage pool %s' % _quoted(request.name)))
        if state.persistent:
            actions.append(Action('undefine', 'undefine storage pool %s' % _quoted(request.name)))
    return pool_plan(actions, before, after)


def _plan_deleted(request, state):
    before = pool_view(request.name, state, with_storage=True)
    if state is None:
        return pool_plan([], before, dict(before), warnings=[
            'storage pool %s is not defined: there is no storage of it to delete' % _quoted(request.name)])
    if state.type not in DELETABLE_TYPES:
        raise LibvirtModuleError('state=deleted: the storage of %s pools cannot be deleted through libvirt (storage pool %s); '
                                 'it works for %s pools' % (state.type, _quoted(request.name), ', '.join(DELETABLE_TYPES)))
    if not state.persistent:
        raise LibvirtModuleError('state=deleted: storage pool %s is transient, stopping it would remove it before its storage '
                                 'could be deleted; define it first (state=present)' % _quoted(request.name))
    if state.storage_exists and state.contents is None and state.type == 'logical':
        # libvirt removes the volume group with vgremove -f, every logical volume in it included.
        raise LibvirtModuleError('state=deleted: storage pool %s is an inactive logical pool: its volumes cannot be listed while '
                                 'it is inactive, and deleting its storage removes volume group %s with every logical volume in '
                                 'it; start it first (state=active) so that the module can see it is empty; nothing was changed'
                                 % (_quoted(request.name), child_text(normalise_pool_element(state.inactive_element),
                                                                      'source/name')))
    if state.storage_exists and state.contents:
        shown = ', '.join(state.contents[:5]) + (', ...' if len(state.contents) > 5 else '')
        raise LibvirtModuleError('state=deleted: the storage of storage pool %s (%s) is not empty: it holds %d entries (%s); the '
                                 'module deletes only empty storage: remove them first (kvm.storage.disk_image with state=absent, '
                                 'or virsh vol-delete); nothing was changed' % (
                                     _quoted(request.name), state.target if state.type in TARGET_DIRECTORY_TYPES else 'its volume group',
                                     len(state.contents), shown))
    actions = []
    if state.active:
        actions.append(Action('stop', 'stop storage pool %s' % _quoted(request.name)))
    if state.storage_exists:
        actions.append(Action('delete', 'delete the storage of %s pool %s (%s)' % (
            state.type, _quoted(request.name), state.target if state.type in TARGET_DIRECTORY_TYPES else 'its volume group')))
    after = dict(before, state='inactive', restart_pending=False, storage='deleted')
    return pool_plan(actions, before, after)


def plan_storage_pool(request, state, directory=None, target_exists=None):
    """Compare the pool (``state``: PoolState, or None when it is not defined) with the request; returns a Plan.

    ``target_exists``: whether the target directory of the requested definition exists (None: not known).  A start or
    restart of a dir, fs or netfs pool whose target directory is missing is refused unless the plan builds it, so that
    a task fails before it changes anything rather than after it defined the pool.

    ``directory`` is ``read_directory()`` of the requested target.  libvirt copies the permissions of an
    existing target directory into the definition when it starts or refreshes the pool, so for pools
    whose target is a directory that exists, the requested permissions are compared with the directory
    itself, not with the XML.  Pure: reads nothing and changes nothing.  Raises LibvirtModuleError for a
    request that cannot be met.
    """
    if request.state == 'absent':
        return _plan_absent(request, state)
    if request.state == 'deleted':
        return _plan_deleted(request, state)

    definition = request.definition
    name = _quoted(request.name)
    wanted_permissions = {} if definition is None else requested_permissions(definition)
    on_directory = bool(wanted_permissions) and directory is not None and definition.get('type') in TARGET_DIRECTORY_TYPES
    before = pool_view(request.name, state, definition, permissions=not on_directory)
    if on_directory:
        before['directory'] = describe_permissions(directory['path'], dict((key, directory[key]) for key in wanted_permissions))
    actions = []
    warnings = []
    redefined = False
    if state is None:
        if definition is None:
            raise LibvirtModuleError('storage pool %s is not defined: give type (and its target and source) or xml to define it'
                                     % name)
        actions.append(Action('define', 'define %s storage pool %s' % (definition.get('type'), name), new=True))
        after = {'name': request.name, 'state': 'inactive', 'persistent': True, 'autostart': False,
                 'restart_pending': False, 'xml': normalised_xml(definition, permissions=not on_directory)}
        was_active = False
    else:
        after = dict(before)
        was_active = state.active
        if definition is not None:
            requested_uuid = request.requested_uuid
            if requested_uuid and requested_uuid != state.uuid.lower():
                raise LibvirtModuleError('storage pool %s exists with uuid %s, the task asks for uuid %s; a pool keeps its uuid '
                                         '(remove it first to define it anew)' % (name, state.uuid, requested_uuid))
            wanted = normalised_xml(definition, permissions=not on_directory)
            if before['xml'] != wanted:
                actions.append(Action('define', 'redefine storage pool %s: its definition differs from the request' % name,
                                      new=False))
                redefined = True
                after['xml'] = wanted
        if not state.persistent and not redefined:
            actions.append(Action('define', 'define transient storage pool %s persistently' % name, new=False))
        after['persistent'] = True

    element = definition if definition is not None else state.inactive_element
    missing = _target_missing(element, state, definition, target_exists)
    if request.build and _needs_build(request, state, definition, missing):
        actions.append(Action('build', 'build storage pool %s%s' % (name, _build_detail(element)), pool_type=element.get('type')))

    if on_directory:
        after['directory'] = describe_permissions(directory['path'], wanted_permissions)
        if after['directory'] != before.get('directory'):
            actions.append(Action('permissions', 'set permissions of target %s' % after['directory'],
                                  path=directory['path'], permissions=wanted_permissions,
                                  previous=dict((key, directory[key]) for key in wanted_permissions)))

    if request.state == 'active' and not was_active:
        actions.append(Action('start', 'start storage pool %s' % name))
        after['state'] = 'active'
        after['restart_pending'] = False
    elif request.state == 'inactive' and was_active:
        actions.append(Action('stop', 'stop storage pool %s' % name))
        after['state'] = 'inactive'
        after['restart_pending'] = False
    elif was_active and redefined and normalised_xml(state.live_element, definition, not on_directory) == after['xml']:
        # The new definition is the one the pool runs with (it undoes a change made behind our back).
        after['restart_pending'] = False
    elif was_active and (redefined or before['restart_pending']):
        if request.restart:
            build = request.build and missing
            actions.append(Action('restart', 'restart storage pool %s to apply its new definition%s' % (
                name, ' (stop it, build it%s, start it)' % _build_detail(element) if build else ''),
                build=build, pool_type=element.get('type')))
            after['restart_pending'] = False
        else:
            after['restart_pending'] = True
            warnings.append('storage pool %s is active and its new definition applies when it restarts; '
                            'set restart=true to restart it now' % name)

    if request.autostart is not None and after['autostart'] != request.autostart:
        actions.append(Action('autostart', '%s autostart of storage pool %s' % ('enable' if request.autostart else 'disable', name),
                              value=request.autostart))
        after['autostart'] = request.autostart

    restarted = any(action.kind in ('start', 'restart') for action in actions)
    if restarted and missing and not any(action.kind == 'build' or action.args.get('build') for action in actions):
        raise LibvirtModuleError('storage pool %s cannot %s: its target directory %s does not exist; create it, or set build=true '
                                 'to have it built; nothing was changed' % (
                                     name, 'start' if 'start' in [action.kind for action in actions] else 'restart',
                                     sanitize_path(child_text(element, 'target/path'))))
    if request.refresh and after['state'] == 'active' and not restarted:
        # A refresh rereads the storage: it changes nothing the task asks for.
        actions.append(Action('refresh', 'refresh storage pool %s' % name, changes=False))
    return pool_plan(actions, before, after, warnings, restart_pending=after.get('restart_pending', False))


def _target_missing(element, state, definition, target_exists):
    """Whether the target directory of the definition the pool starts with (dir, fs, netfs) is known to be missing."""
    if element.get('type') not in TARGET_DIRECTORY_TYPES:
        return False
    if definition is None or (target_exists is None and state is not None
                              and sanitize_path(child_text(definition, 'target/path')) == sanitize_path(state.target)):
        return state is not None and state.target_exists is False
    return target_exists is False


def _needs_build(request, state, definition, missing):
    """Build before the first start: a new definition, or a target directory that is missing (the pool not active)."""
    if state is None:
        return True
    if state.active:
        return False
    return missing


def _build_detail(element):
    pool_type = element.get('type')
    target = child_text(element, 'target/path')
    if pool_type in TARGET_DIRECTORY_TYPES and target:
        if pool_type == 'fs':
            return ' (create %s, make a filesystem on %s unless it has one)' % (target, element.find('source/device').get('path'))
        return ' (create %s)' % target
    return ''


# --------------------------------------------------------------------------- apply
def _definition_with_uuid(definition, state):
    element = copy.deepcopy(definition)
    if state is not None and element.find('uuid') is None:
        uuid = ElementTree.Element('uuid')
        uuid.text = state.uuid
        element.insert(1, uuid)
    return ElementTree.tostring(element, encoding='unicode')


def apply_plan(conn, plan, request, state):
    """Carry out the plan.  Returns notes on what libvirt reported but did not fail on.

    When a step fails, the steps done before it are undone where they can be, in reverse order (a new definition
    undefined, a previous definition restored, a started pool stopped, a stopped one started, a directory the build
    created removed, permissions and autostart set back).  The LibvirtModuleError raised says what failed and what
    was undone; whatever could not be undone is reported as ``changed=True`` with those ``actions``.
    """
    notes = []
    run = _Run(conn, request, state)
    try:
        for action in plan.actions:
            run.do(action, notes)
    except LibvirtModuleError as exc:
        raise run.failure(str(exc))
    return notes


class _Run(object):
    """The steps of one apply_plan, with how to undo each of those done."""

    def __init__(self, conn, request, state):
        self.conn = conn
        self.request = request
        self.state = state
        self.name = _quoted(request.name)
        self.pool = None if state is None else lookup_pool(conn, request.name)
        self.done = []        # [(description, None or (undo description, undo function))], in order
        self.deferred = []    # [(description, function)]: undone last (start a pool again once its definition is restored)

    def _call(self, what, function, *args):
        return libvirt_call('%s storage pool %s' % (what, self.name), function, *args)

    def _build(self, action, notes):
        """Build the pool; returns the undo of the build (None when it cannot be undone)."""
        # NO_OVERWRITE makes a filesystem / PV / label only on a device that has none; the
        # directory-only types refuse the flag.
        flags = 0 if action.args['pool_type'] in ('dir', 'netfs') else libvirt.VIR_STORAGE_POOL_BUILD_NO_OVERWRITE
        xml = self._call('cannot read', self.pool.XMLDesc, 0)
        target = sanitize_path(child_text(parse_xml(xml, 'definition of storage pool %s' % self.name), 'target/path'))
        created = action.args['pool_type'] in TARGET_DIRECTORY_TYPES and bool(target) and not os.path.isdir(target)
        try:
            self.pool.build(flags)
        except libvirt.libvirtError as exc:
            if not error_is(exc, 'VIR_ERR_STORAGE_POOL_BUILT'):
                raise LibvirtModuleError('cannot build storage pool %s: %s' % (self.name, error_message(exc)))
            notes.append('storage pool %s: %s' % (self.name, error_message(exc)))
        if created and os.path.isdir(target) and action.args['pool_type'] != 'fs':
            # An fs pool's build also makes a filesystem on its device when it has none: nothing takes that back, so
            # its build stays reported as done (directory included).
            return ('remove the directory %s the build created' % target, lambda: os.rmdir(target))
        return None

    def do(self, action, notes):
        name, state = self.name, self.state
        pool = self.pool
        undo = None
        if action.kind == 'define':
            if self.request.definition is not None:
                xml = _definition_with_uuid(self.request.definition, state)
            else:
                xml = state.live_xml
            self.pool = pool = self._call('cannot define', self.conn.storagePoolDefineXML, xml, 0)
            if state is None or not state.persistent:
                undo = ('undefine storage pool %s' % name, lambda: self._call('cannot undefine', pool.undefine))
            else:
                undo = ('restore the previous definition of storage pool %s' % name,
                        lambda: self._call('cannot restore the previous definition of', self.conn.storagePoolDefineXML,
                                           state.inactive_xml, 0))
        elif action.kind == 'build':
            undo = self._build(action, notes)
        elif action.kind == 'permissions':
            path, previous = action.args['path'], action.args.get('previous')
            _set_permissions(path, action.args['permissions'])
            if previous:
                undo = ('set the permissions of %s back' % path, lambda: _set_permissions(path, previous))
            # Done from here: a failed refresh sets the permissions back with the other steps.
            self.done.append((action.description, undo))
            if self._call('cannot read', pool.isActive):
                # libvirt reads the directory's permissions into the pool definition on a refresh.
                self._call('cannot refresh', pool.refresh, 0)
            return
        elif action.kind == 'start':
            self._call('cannot start', pool.create, 0)
            undo = ('stop storage pool %s' % name, lambda: self._call('cannot stop', pool.destroy))
        elif action.kind == 'stop':
            self._call('cannot stop', pool.destroy)
            undo = ('start storage pool %s again' % name, lambda: self._call('cannot start', pool.create, 0))
        elif action.kind == 'restart':
            self._restart(action, notes)
            return
        elif action.kind == 'undefine':
            self._call('cannot undefine', pool.undefine)
            undo = ('define storage pool %s again' % name, self._define_again)
        elif action.kind == 'delete':
            self._call('cannot delete the storage of', pool.delete, 0)
        elif action.kind == 'autostart':
            self._call('cannot set autostart of', pool.setAutostart, 1 if action.args['value'] else 0)
            previous = not action.args['value']
            undo = ('%s autostart of storage pool %s again' % ('enable' if previous else 'disable', name),
                    lambda: self._call('cannot set autostart of', pool.setAutostart, 1 if previous else 0))
        elif action.kind == 'refresh':
            self._call('cannot refresh', pool.refresh, 0)
            return
        else:
            raise LibvirtModuleError('internal error: unknown action %r' % action.kind)
        self.done.append((action.description, undo))

    def _restart(self, action, notes):
        """Stop, (build,) start.  Until the start succeeds, a failure leaves the pool stopped: the rollback starts it
        again last, once its previous definition is restored."""
        pool, name = self.pool, self.name
        self._call('cannot stop', pool.destroy)
        steps = len(self.done)
        self.done.append(('stop storage pool %s (to restart it)' % name, None))
        self.deferred.append(('start storage pool %s again' % name, lambda: self._call('cannot start', pool.create, 0)))
        if action.args.get('build'):
            self.done.append(('build storage pool %s' % name, self._build(action, notes)))
        self._call('cannot start', pool.create, 0)
        # Running with its new definition: one step done, which nothing undoes on its own.
        del self.done[steps:]
        self.deferred.pop()
        self.done.append((action.description, None))

    def _define_again(self):
        pool = self._call('cannot define again', self.conn.storagePoolDefineXML, self.state.inactive_xml, 0)
        if self.state.autostart:
            self._call('cannot set autostart of', pool.setAutostart, 1)
        self.pool = pool

    def failure(self, message):
        """The error to raise after a failed step: undo what can be undone, report what stays done."""
        undone, kept, problems = [], [], []
        for description, undo in reversed(self.done):
            if undo is None:
                kept.append(description)
                continue
            try:
                undo[1]()
            except (LibvirtModuleError, OSError) as exc:
                problems.append('cannot %s: %s' % (undo[0], exc))
                kept.append(description)
            else:
                undone.append(undo[0])
        for description, function in self.deferred:
            try:
                function()
            except (LibvirtModuleError, OSError) as exc:
                problems.append('cannot %s: %s' % (description, exc))
            else:
                undone.append(description)
                kept = [step for step in kept if not step.endswith('(to restart it)')]
        kept.reverse()
        if undone:
            message += '; undone: %s' % ', '.join(undone)
        if problems:
            message += '; ' + '; '.join(problems)
        if kept:
            message += '; done before the failure and left so: %s' % ', '.join(kept)
            return LibvirtModuleError(message, changed=True, actions=kept)
        if undone:
            message += '; storage pool %s is as it was before the task' % self.name
        return LibvirtModuleError(message, changed=False, actions=[])


def _set_permissions(path, permissions):
    try:
        if 'owner' in permissions or 'group' in permissions:
            os.chown(path, int(permissions.get('owner', -1)), int(permissions.get('group', -1)))
        if 'mode' in permissions:
            os.chmod(path, int(permissions['mode'], 8))
    except OSError as exc:
        raise LibvirtModuleError('cannot set permissions of target %s: %s' % (path, exc))


# --------------------------------------------------------------------------- reporting
def pool_info(pool):
    """What the modules return about a pool."""
    what = 'cannot read storage pool %r' % pool.name()
    state_code, capacity, allocation, available = libvirt_call(what, pool.info)
    xml = libvirt_call(what, pool.XMLDesc, 0)
    element = parse_xml(xml, what)
    active = bool(libvirt_call(what, pool.isActive))
    info = {
        'name': pool.name(),
        'uuid': libvirt_call(what, pool.UUIDString),
        'type': element.get('type'),
        'state': POOL_STATE_NAMES[state_code] if 0 <= state_code < len(POOL_STATE_NAMES) else 'unknown',
        'autostart': bool(libvirt_call(what, pool.autostart)),
        'persistent': bool(libvirt_call(what, pool.isPersistent)),
        'capacity': capacity,
        'allocation': allocation,
        'available': available,
        'target': child_text(element, 'target/path'),
        'xml': xml,
    }
    info['volumes'] = sorted(libvirt_call(what, pool.listVolumes)) if active else []
    return info


def run_storage_pool(conn, params, check_mode):
    """The storage_pool module: returns the result dict for exit_json (``diff`` always included)."""
    request = StoragePoolRequest(params)
    state = read_pool_state(conn, request.name, want_storage=request.state == 'deleted')
    directory = None
    target_exists = None
    if request.definition is not None:
        target = sanitize_path(child_text(request.definition, 'target/path'))
        directory = read_directory(target)
        target_exists = bool(target) and os.path.isdir(target)
    plan = plan_storage_pool(request, state, directory, target_exists)
    result = dict(plan.result(notes=True), refreshed=False)
    mode_warning = int_mode_warning(params.get('mode'))
    if mode_warning:
        result['notes'].insert(0, mode_warning)
    if not check_mode and plan.actions:
        result['notes'].extend(apply_plan(conn, plan, request, state))
        result['refreshed'] = 'refresh' in plan.kinds()
    result['diff'] = plan.diff('storage pool %s' % request.name, render_view)
    try:
        pool = lookup_pool(conn, request.name)
        result['pool'] = {} if pool is None else pool_info(pool)
    except LibvirtModuleError as exc:
        if check_mode or not plan.changed:
            raise
        # The plan was carried out: the failure to read the result does not hide it.
        raise LibvirtModuleError('%s (after the task made its changes: %s)' % (exc, '; '.join(result['actions'])),
                                 changed=True, actions=result['actions'])
    return result


def run_storage_pool_info(conn, params):
    if params.get('name'):
        pool = lookup_pool(conn, params['name'])
        pools = [] if pool is None else [pool]
    else:
        pools = libvirt_call('cannot list storage pools', conn.listAllStoragePools, 0)
    return dict(changed=False, pools=sorted((pool_info(pool) for pool in pools), key=lambda info: info['name']))
