# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backend of the domain_disk and domain_disk_info modules.

Private to this collection (the leading underscore): no compatibility promise.

domain_disk reads the domain once (``read_domain_state``: its persistent definition and, when it
runs, its live definition), computes for each of the two views the disk the task asks for
(``DiskRequest.wanted_element``: the options applied over the disk found there, or a new disk),
compares normalised disk elements (``normalise_disk``: what libvirt adds on its own is dropped),
and applies the differences outside check mode only (``apply_plan``), live first, then the
persistent definition.  The diff shows the same normalised elements.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import copy
import os
import re
import stat
import time
from urllib.parse import urlparse
from xml.etree import ElementTree

from ansible_collections.kvm.storage.plugins.module_utils._libvirt import (
    LibvirtModuleError,
    canonical_xml,
    child_text,
    error_is,
    error_message,
    libvirt,
    libvirt_argument_spec,
    libvirt_call,
    lookup_domain,
    parse_xml,
    sanitize_path,
)
from ansible_collections.kvm.storage.plugins.module_utils._plan import Action, Plan
from ansible_collections.kvm.storage.plugins.module_utils.diskimage import ImageError
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.probe import probe as probe_image

DISK_TYPES = ('file', 'block', 'volume', 'network')
DEVICES = ('disk', 'cdrom', 'floppy', 'lun')
BUSES = ('virtio', 'scsi', 'sata', 'ide', 'usb', 'fdc')
CACHE_MODES = ('default', 'none', 'writethrough', 'writeback', 'directsync', 'unsafe')
IO_MODES = ('threads', 'native', 'io_uring')
DISCARD_MODES = ('unmap', 'ignore')
DETECT_ZEROES_MODES = ('off', 'on', 'unmap')
NETWORK_PROTOCOLS = ('nbd', 'iscsi', 'rbd', 'ssh', 'http', 'https', 'ftp', 'ftps', 'tftp', 'gluster', 'nfs')
# Removable devices: their source is the medium; no source is an empty drive (ejected).
REMOVABLE_DEVICES = ('cdrom', 'floppy')
# Buses QEMU cannot hot-plug or hot-unplug a disk on (libvirt passes the refusal on after trying).
COLD_PLUG_BUSES = ('ide', 'sata', 'fdc')
# Cache modes without the host's page cache: the only ones libvirt accepts with io=native.
UNCACHED_MODES = ('none', 'directsync')
# Target name prefix of each bus (libvirt's naming: sd is shared by scsi, sata and usb).
TARGET_PREFIX = {'virtio': 'vd', 'scsi': 'sd', 'sata': 'sd', 'usb': 'sd', 'ide': 'hd', 'fdc': 'fd'}
# The bus libvirt gives a target name prefix when no bus is written (virDomainDiskDefAssignAddress).
PREFIX_BUS = {'vd': 'virtio', 'sd': 'scsi', 'hd': 'ide', 'fd': 'fdc'}
# The source element's attribute naming a local file or device, per disk type.
PATH_ATTRIBUTE = {'file': 'file', 'block': 'dev'}
DEFAULT_SECRET_TYPE = {'rbd': 'ceph', 'iscsi': 'iscsi'}
# Ports libvirt writes for network disk hosts that name none (virStorageSourceNetworkDefaultPort; rbd, nfs: none).
DEFAULT_PORTS = {'http': 80, 'https': 443, 'ftp': 21, 'ftps': 990, 'tftp': 69, 'nbd': 10809, 'ssh': 22, 'iscsi': 3260,
                 'gluster': 24007}
SOURCE_KEYS = ('path', 'pool', 'volume', 'mode', 'protocol', 'name', 'host', 'port', 'auth', 'initiator')
AUTH_KEYS = ('username', 'secret_type', 'secret_usage', 'secret_uuid')
# Pool types whose volumes are files or device nodes of this host, readable by the image library.
LOCAL_POOL_TYPES = ('dir', 'fs', 'netfs', 'logical', 'disk')
DETACH_POLL_INTERVAL = 0.5
TARGET_PATTERN = re.compile(r'^(vd|sd|hd|fd|xvd)([a-z]+)$')


# --------------------------------------------------------------------------- argument specs
def domain_disk_argument_spec():
    spec = dict(
        domain=dict(type='str', required=True),
        target=dict(type='str'),
        source=dict(type='raw'),
        type=dict(type='str', choices=list(DISK_TYPES)),
        device=dict(type='str', choices=list(DEVICES)),
        bus=dict(type='str', choices=list(BUSES)),
        format=dict(type='str'),
        cache=dict(type='str', choices=list(CACHE_MODES)),
        io=dict(type='str', choices=list(IO_MODES)),
        discard=dict(type='str', choices=list(DISCARD_MODES)),
        detect_zeroes=dict(type='str', choices=list(DETECT_ZEROES_MODES)),
        readonly=dict(type='bool'),
        shareable=dict(type='bool'),
        serial=dict(type='str'),
        wwn=dict(type='str'),
        boot_order=dict(type='int'),
        replace_source=dict(type='bool', default=False),
        state=dict(type='str', default='present', choices=['present', 'absent']),
        persistent=dict(type='bool', default=True),
        live=dict(type='bool'),
        detach_timeout=dict(type='int', default=30),
    )
    spec.update(libvirt_argument_spec())
    return spec


def domain_disk_info_argument_spec():
    spec = dict(
        domain=dict(type='str', required=True),
        target=dict(type='str'),
    )
    spec.update(libvirt_argument_spec())
    return spec


# --------------------------------------------------------------------------- small helpers
def _sub(parent, tag, text=None, **attributes):
    element = ElementTree.SubElement(parent, tag, dict((key, str(value)) for key, value in attributes.items()))
    if text is not None:
        element.text = text
    return element


def _quoted(name):
    return "'%s'" % name


def is_local_uri(uri):
    """Whether the libvirt daemon behind ``uri`` runs on this host (its files are this host's files)."""
    parsed = urlparse(uri or '')
    return not parsed.netloc


def disk_target(disk):
    target = disk.find('target')
    return None if target is None else target.get('dev')


def disk_bus(disk):
    target = disk.find('target')
    return None if target is None else target.get('bus')


def target_prefix(target):
    match = TARGET_PATTERN.match(target or '')
    return match.group(1) if match else None


def target_index(target):
    """Position of a target name in its prefix's sequence: vda -> 0, vdz -> 25, vdaa -> 26."""
    match = TARGET_PATTERN.match(target or '')
    if not match:
        return None
    index = 0
    for letter in match.group(2):
        index = index * 26 + (ord(letter) - ord('a') + 1)
    return index - 1


def target_name(prefix, index):
    """Inverse of target_index."""
    letters = ''
    index += 1
    while index > 0:
        index, remainder = divmod(index - 1, 26)
        letters = chr(ord('a') + remainder) + letters
    return prefix + letters


def next_free_target(bus, used):
    """The first target name of ``bus``'s prefix not in ``used`` (vdb when vda is taken, sdc after sda, sdb...)."""
    prefix = TARGET_PREFIX[bus]
    taken = set(target_index(name) for name in used if target_prefix(name) == prefix)
    index = 0
    while index in taken:
        index += 1
    if bus == 'ide' and index > 3:
        raise LibvirtModuleError('no free ide target: hda to hdd are all taken (%s); use another bus' % ', '.join(sorted(used)))
    if bus == 'fdc' and index > 1:
        raise LibvirtModuleError('no free floppy target: fda and fdb are both taken')
    return target_name(prefix, index)


# --------------------------------------------------------------------------- source
class Source(object):
    """A disk source from the ``source`` and ``type`` options (or read back from a disk element).

    ``disk_type`` is file, block, volume or network; ``attributes`` are those of <source>;
    ``hosts`` are (name, port) pairs, ``auth`` a dict or None, ``initiator`` an IQN or None.
    """

    def __init__(self, disk_type, attributes, hosts=None, auth=None, initiator=None):
        self.disk_type = disk_type
        self.attributes = attributes
        self.hosts = hosts or []
        self.auth = auth
        self.initiator = initiator

    @property
    def path(self):
        attribute = PATH_ATTRIBUTE.get(self.disk_type)
        return None if attribute is None else self.attributes.get(attribute)

    def describe(self):
        if self.disk_type in PATH_ATTRIBUTE:
            return self.path
        if self.disk_type == 'volume':
            return 'volume %s of pool %s' % (self.attributes.get('volume'), self.attributes.get('pool'))
        hosts = ','.join(name if port is None else '%s:%s' % (name, port) for name, port in self.hosts)
        return '%s://%s/%s' % (self.attributes.get('protocol'), hosts, self.attributes.get('name') or '')

    def element(self):
        source = ElementTree.Element('source', dict(self.attributes))
        for name, port in self.hosts:
            attributes = {'name': name}
            if port is not None:
                attributes['port'] = str(port)
            _sub(source, 'host', **attributes)
        if self.auth:
            auth = _sub(source, 'auth', username=self.auth['username'])
            secret = {'type': self.auth['secret_type']}
            if self.auth.get('secret_uuid'):
                secret['uuid'] = self.auth['secret_uuid']
            else:
                secret['usage'] = self.auth['secret_usage']
            _sub(auth, 'secret', **secret)
        if self.initiator:
            _sub(_sub(source, 'initiator'), 'iqn', name=self.initiator)
        return source


def _parse_host(value, port):
    """A (name, port) pair from 'name', 'name:port' or {'name': ..., 'port': ...}."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(('name', 'port')))
        if unknown or not value.get('name'):
            raise LibvirtModuleError('source.host: each host is a name, "name:port" or a dict with name and port, found %r' % (value,))
        return str(value['name']), value.get('port') if value.get('port') is not None else port
    text = str(value).strip()
    if text.count(':') == 1:
        name, dummy, host_port = text.partition(':')
        if not host_port.isdigit():
            raise LibvirtModuleError('source.host: %r: the port after ":" must be a number' % text)
        return name, int(host_port)
    return text, port


def parse_source(value, disk_type=None, local=True):
    """A Source from the ``source`` option (a path, or a dict) and the ``type`` option.

    Returns None for no source (an empty removable drive).  ``local``: the daemon runs on this host,
    so a path can be checked for being a block device.
    """
    if value is None or value == '' or value == {}:
        if disk_type in ('block', 'volume', 'network'):
            raise LibvirtModuleError('type=%s needs a source' % disk_type)
        return None
    if isinstance(value, str):
        value = {'path': value}
    if not isinstance(value, dict):
        raise LibvirtModuleError('source: expected a path or a dict (pool and volume, or protocol, name and host), found %r' % (value,))
    given = dict((key, item) for key, item in value.items() if item not in (None, '', []))
    unknown = sorted(key for key in given if key not in SOURCE_KEYS)
    if unknown:
        raise LibvirtModuleError('source: unknown key(s) %s; known keys: %s' % (', '.join(unknown), ', '.join(SOURCE_KEYS)))
    if 'path' in given:
        kind = 'path'
    elif 'pool' in given or 'volume' in given:
        kind = 'volume'
    elif 'protocol' in given:
        kind = 'network'
    else:
        raise LibvirtModuleError('source: give a path, or pool and volume, or protocol and name (found keys: %s)'
                                 % ', '.join(sorted(given)))
    others = dict(path=('path',), volume=('pool', 'volume', 'mode'),
                  network=('protocol', 'name', 'host', 'port', 'auth', 'initiator'))[kind]
    misplaced = sorted(key for key in given if key not in others)
    if misplaced:
        raise LibvirtModuleError('source: %s cannot be combined with %s' % (', '.join(misplaced), ', '.join(
            key for key in others if key in given)))

    if kind == 'path':
        path = sanitize_path(str(given['path']))
        if not path.startswith('/'):
            raise LibvirtModuleError('source: %r is not an absolute path' % given['path'])
        if disk_type is None:
            disk_type = 'block' if local and _is_block_device(path) else 'file'
        elif disk_type not in PATH_ATTRIBUTE:
            raise LibvirtModuleError('type=%s does not take a path as source (type file or block does)' % disk_type)
        return Source(disk_type, {PATH_ATTRIBUTE[disk_type]: path})

    if kind == 'volume':
        if disk_type not in (None, 'volume'):
            raise LibvirtModuleError('source with pool and volume is a pool volume: type=volume, not type=%s' % disk_type)
        missing = [key for key in ('pool', 'volume') if key not in given]
        if missing:
            raise LibvirtModuleError('source: a pool volume needs %s' % ' and '.join(missing))
        attributes = {'pool': str(given['pool']), 'volume': str(given['volume'])}
        if 'mode' in given:
            if given['mode'] not in ('host', 'direct'):
                raise LibvirtModuleError('source.mode: expected host or direct (iSCSI pool volumes), found %r' % (given['mode'],))
            attributes['mode'] = given['mode']
        return Source('volume', attributes)

    if disk_type not in (None, 'network'):
        raise LibvirtModuleError('source with protocol is a network disk: type=network, not type=%s' % disk_type)
    protocol = str(given['protocol'])
    if protocol not in NETWORK_PROTOCOLS:
        raise LibvirtModuleError('source.protocol: expected one of %s, found %r' % (', '.join(NETWORK_PROTOCOLS), protocol))
    if 'name' not in given and protocol != 'nbd':
        raise LibvirtModuleError('source: a %s disk needs name (%s)' % (protocol, {
            'rbd': 'pool/image', 'iscsi': 'target IQN/LUN', 'gluster': 'volume/path'}.get(protocol, 'the path on the server')))
    attributes = {'protocol': protocol}
    if 'name' in given:
        attributes['name'] = str(given['name'])
    port = given.get('port')
    hosts_value = given.get('host', [])
    if not isinstance(hosts_value, list):
        hosts_value = [hosts_value]
    hosts = [_parse_host(host, port) for host in hosts_value]
    if not hosts and protocol != 'rbd':
        raise LibvirtModuleError('source: a %s disk needs host' % protocol)
    # Not required_by: source is a path or a dict (type raw), so the spec declares no suboptions for it.
    if port is not None and not hosts:
        raise LibvirtModuleError('source.port requires source.host')
    auth = None
    if 'auth' in given:
        auth = dict(given['auth']) if isinstance(given['auth'], dict) else None
        if auth is None or not auth.get('username'):
            raise LibvirtModuleError('source.auth: expected a dict with username and secret_usage or secret_uuid')
        unknown = sorted(set(key for key, item in auth.items() if item is not None) - set(AUTH_KEYS))
        if unknown:
            raise LibvirtModuleError('source.auth: unknown key(s) %s; known keys: %s' % (', '.join(unknown), ', '.join(AUTH_KEYS)))
        if bool(auth.get('secret_usage')) == bool(auth.get('secret_uuid')):
            raise LibvirtModuleError('source.auth: give one of secret_usage and secret_uuid')
        auth.setdefault('secret_type', DEFAULT_SECRET_TYPE.get(protocol))
        if not auth['secret_type']:
            raise LibvirtModuleError('source.auth: give secret_type (ceph or iscsi) for %s disks' % protocol)
    initiator = given.get('initiator')
    if initiator and protocol != 'iscsi':
        raise LibvirtModuleError('source.initiator applies to iscsi disks only')
    return Source('network', attributes, hosts=hosts, auth=auth, initiator=initiator)


def _is_block_device(path):
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def source_of(disk):
    """The Source of a disk element (None for an empty drive)."""
    disk_type = disk.get('type', 'file')
    source = disk.find('source')
    if source is None:
        return None
    attributes = dict((key, value) for key, value in source.attrib.items() if key not in ('index', 'startupPolicy'))
    if disk_type in PATH_ATTRIBUTE:
        path = attributes.get(PATH_ATTRIBUTE[disk_type])
        if not path:
            return None
        return Source(disk_type, {PATH_ATTRIBUTE[disk_type]: sanitize_path(path)})
    hosts = []
    for host in source.findall('host'):
        port = host.get('port')
        hosts.append((host.get('name'), int(port) if port and port.isdigit() else port))
    auth = None
    auth_element = source.find('auth')
    if auth_element is not None:
        secret = auth_element.find('secret')
        auth = {'username': auth_element.get('username'), 'secret_type': None if secret is None else secret.get('type'),
                'secret_usage': None if secret is None else secret.get('usage'),
                'secret_uuid': None if secret is None else secret.get('uuid')}
    initiator = source.find('initiator/iqn')
    return Source(disk_type, attributes, hosts=hosts, auth=auth, initiator=None if initiator is None else initiator.get('name'))


def source_view(source):
    """The source as the modules return it: a path, or a dict."""
    if source is None:
        return None
    if source.disk_type in PATH_ATTRIBUTE:
        return source.path
    view = dict(source.attributes)
    if source.disk_type == 'network':
        view['host'] = [dict(name=name, port=port) if port is not None else dict(name=name) for name, port in source.hosts]
        if source.auth:
            view['auth'] = dict((key, value) for key, value in source.auth.items() if value)
        if source.initiator:
            view['initiator'] = source.initiator
    return view


# --------------------------------------------------------------------------- normalisation
def normalise_disk(disk):
    """A copy of a disk element without what libvirt adds on its own, for comparison and for the diff.

    Dropped: <address>, <alias>, <backingStore>, the source's index, the target's tray state, the
    driver name qemu (the only one), the driver of an empty removable drive, an empty <source>.
    Written out: cdroms are always read-only; file paths as libvirt stores them.
    """
    normal = copy.deepcopy(disk)
    for tag in ('address', 'alias', 'backingStore', 'mirror'):
        for element in normal.findall(tag):
            normal.remove(element)
    if not normal.get('type'):
        normal.set('type', 'file')
    if not normal.get('device'):
        normal.set('device', 'disk')
    device = normal.get('device')
    disk_type = normal.get('type')
    source = normal.find('source')
    if source is not None:
        for attribute in ('index', 'startupPolicy'):
            source.attrib.pop(attribute, None)
        attribute = PATH_ATTRIBUTE.get(disk_type)
        if attribute and source.get(attribute):
            source.set(attribute, sanitize_path(source.get(attribute)))
        for child in list(source):
            if child.tag == 'seclabel' and not len(child) and not child.attrib:
                source.remove(child)
            elif child.tag == 'host' and disk_type == 'network' and not child.get('port') and child.get('transport') in (None, 'tcp'):
                if source.get('protocol') in DEFAULT_PORTS:
                    child.set('port', str(DEFAULT_PORTS[source.get('protocol')]))
        if not source.attrib and not len(source):
            normal.remove(source)
            source = None
    target = normal.find('target')
    if target is not None:
        target.attrib.pop('tray', None)
    driver = normal.find('driver')
    if driver is not None:
        if driver.get('name') == 'qemu':
            del driver.attrib['name']
        if source is None and device in REMOVABLE_DEVICES:
            driver.attrib.pop('type', None)
        if not driver.attrib and not len(driver):
            normal.remove(driver)
    if device == 'cdrom' and normal.find('readonly') is None:
        _sub(normal, 'readonly')
    for tag in ('serial', 'wwn'):
        for element in normal.findall(tag):
            element.text = (element.text or '').strip()
    return normal


def normalised_xml(disk):
    return canonical_xml(normalise_disk(disk))


def disk_view(disk):
    """What the modules return about a disk: its fields, and its normalised XML."""
    driver = disk.find('driver')
    driver = {} if driver is None else driver.attrib
    boot = disk.find('boot')
    source = source_of(disk)
    device = disk.get('device', 'disk')
    view = {
        'target': disk_target(disk),
        'bus': disk_bus(disk),
        'device': device,
        'type': disk.get('type', 'file'),
        'source': source_view(source),
        'format': driver.get('type') if source is not None or device not in REMOVABLE_DEVICES else None,
        'cache': driver.get('cache'),
        'io': driver.get('io'),
        'discard': driver.get('discard'),
        'detect_zeroes': driver.get('detect_zeroes'),
        'readonly': disk.find('readonly') is not None or device == 'cdrom',
        'shareable': disk.find('shareable') is not None,
        'serial': child_text(disk, 'serial'),
        'wwn': child_text(disk, 'wwn'),
        'boot_order': int(boot.get('order')) if boot is not None and (boot.get('order') or '').isdigit() else None,
        'xml': normalised_xml(disk),
    }
    return view


# --------------------------------------------------------------------------- format detection
def detect_format(source, conn, local):
    """(format, warning) of the image behind ``source`` as the library detects it, or as libvirt reports a
    pool volume's format when the library cannot read it; (None, None) when nothing can tell (network)."""
    if source is None or source.disk_type == 'network':
        return None, None
    if source.disk_type == 'volume':
        return _volume_format(source, conn, local)
    path = source.path
    if not local:
        return None, None
    if not os.path.exists(path):
        raise LibvirtModuleError('source %s does not exist' % path)
    if source.disk_type == 'block' and not _is_block_device(path):
        raise LibvirtModuleError('type=block: source %s is not a block device' % path)
    if source.disk_type == 'file' and not os.path.isfile(path):
        raise LibvirtModuleError('type=file: source %s is not a regular file%s' % (
            path, ' (it is a block device: use type=block)' if _is_block_device(path) else ''))
    return _probe(path)


def _probe(path):
    try:
        result = probe_image(path)
    except ImageError as exc:
        raise LibvirtModuleError('cannot detect the format of %s: %s' % (path, exc))
    except OSError as exc:
        raise LibvirtModuleError('cannot read %s to detect its format: %s' % (path, exc))
    return result.format, result.warning


def lookup_volume(conn, pool_name, volume_name):
    """(pool, volume) objects of a pool volume; a clear error when either is missing."""
    try:
        pool = conn.storagePoolLookupByName(pool_name)
    except libvirt.libvirtError as exc:
        if error_is(exc, 'VIR_ERR_NO_STORAGE_POOL'):
            raise LibvirtModuleError('source: storage pool %s does not exist' % _quoted(pool_name))
        raise LibvirtModuleError('cannot look up storage pool %s: %s' % (_quoted(pool_name), error_message(exc)))
    if not libvirt_call('cannot read storage pool %s' % _quoted(pool_name), pool.isActive):
        raise LibvirtModuleError('source: storage pool %s is not active; start it first' % _quoted(pool_name))
    try:
        volume = pool.storageVolLookupByName(volume_name)
    except libvirt.libvirtError as exc:
        if error_is(exc, 'VIR_ERR_NO_STORAGE_VOL'):
            raise LibvirtModuleError('source: storage pool %s has no volume %s' % (_quoted(pool_name), _quoted(volume_name)))
        raise LibvirtModuleError('cannot look up volume %s of storage pool %s: %s'
                                 % (_quoted(volume_name), _quoted(pool_name), error_message(exc)))
    return pool, volume


def _volume_format(source, conn, local):
    pool_name, volume_name = source.attributes['pool'], source.attributes['volume']
    pool, volume = lookup_volume(conn, pool_name, volume_name)
    what = 'cannot read volume %s of storage pool %s' % (_quoted(volume_name), _quoted(pool_name))
    pool_type = parse_xml(libvirt_call(what, pool.XMLDesc, 0), what).get('type')
    path = libvirt_call(what, volume.path)
    if local and pool_type in LOCAL_POOL_TYPES and path and os.path.exists(path):
        return _probe(path)
    volume_element = parse_xml(libvirt_call(what, volume.XMLDesc, 0), what)
    fmt = volume_element.find('target/format')
    if fmt is None or fmt.get('type') in (None, 'none', 'unknown'):
        return None, None
    return fmt.get('type'), None


def choose_format(given, detected, source_text, current=None):
    """The driver type to use: the detected format; a given one must agree with it.

    ``current`` is the format of the same source in the disk found (None when new or another source):
    a disk attached as raw whose content now reads as another format is refused, never switched
    (a guest can write any header into its raw disk).
    """
    if detected is None:
        return given or current
    if given and given != detected:
        raise LibvirtModuleError('format=%s, but %s is a %s image (as the image library reads it); attaching it as %s would '
                                 'corrupt it or expose host files: fix the format option' % (given, source_text, detected, given))
    if current == 'raw' and detected != 'raw':
        raise LibvirtModuleError('%s is attached as raw but its content now reads as a %s image (a guest may have written that '
                                 'header into its raw disk); refusing to change its format: check the image' % (source_text, detected))
    return detected


# --------------------------------------------------------------------------- domain state
class DomainState(object):
    """The domain as libvirt has it, read once: persistent and live definitions (Elements or None)."""

    def __init__(self, name, active, persistent, config, live):
        self.name = name
        self.active = active
        self.persistent = persistent
        self.config = config
        self.live = live

    def disks(self, view):
        definition = self.config if view == 'persistent' else self.live
        if definition is None:
            return []
        return definition.findall('devices/disk')

    def machine(self):
        definition = self.config if self.config is not None else self.live
        element = None if definition is None else definition.find('os/type')
        return '' if element is None else (element.get('machine') or '')


def read_domain_state(domain):
    name = domain.name()
    what = 'cannot read domain %s' % _quoted(name)
    active = bool(libvirt_call(what, domain.isActive))
    persistent = bool(libvirt_call(what, domain.isPersistent))
    config = None
    live = None
    if persistent:
        config = parse_xml(libvirt_call(what, domain.XMLDesc, libvirt.VIR_DOMAIN_XML_INACTIVE), what)
    if active:
        live = parse_xml(libvirt_call(what, domain.XMLDesc, 0), what)
    return DomainState(name, active, persistent, config, live)


# --------------------------------------------------------------------------- request
class DiskRequest(object):
    """What the task asks for, validated; ``views`` are the definitions to manage (persistent, live)."""

    def __init__(self, params, state, local=True):
        self.domain = params['domain']
        self.state = params['state']
        self.target = params.get('target') or None
        self.params = params
        self.local = local
        if self.target is not None and target_prefix(self.target) is None:
            raise LibvirtModuleError('target: %r is not a disk target name such as vdb, sda, hdc or fda' % self.target)
        if params.get('detach_timeout') is not None and params['detach_timeout'] < 0:
            raise LibvirtModuleError('detach_timeout must be 0 or more seconds, found %d' % params['detach_timeout'])
        live = params.get('live')
        if live is None:
            live = state.active
        elif live and not state.active:
            raise LibvirtModuleError('live=true, but domain %s is not running' % _quoted(self.domain))
        persistent = params.get('persistent', True)
        if persistent and not state.persistent:
            raise LibvirtModuleError('domain %s is transient (it has no persistent definition): set persistent=false' % _quoted(self.domain))
        self.views = [view for view, wanted in (('live', live), ('persistent', persistent)) if wanted]
        if not self.views:
            raise LibvirtModuleError('persistent=false and live=false: nothing to manage (domain %s is %s)' % (
                _quoted(self.domain), 'running' if state.active else 'not running'))
        self.source_given = 'source' in params and params['source'] is not None
        self.source = parse_source(params.get('source'), params.get('type'), local) if self.source_given else None
        if not self.source_given and params.get('type'):
            if params['type'] != 'file':
                raise LibvirtModuleError('type=%s needs a source' % params['type'])
        if self.state == 'present' and params.get('format') and self.source_given and self.source is None:
            raise LibvirtModuleError('format is the format of the source: an empty drive has none')
        if self.target is None and self.source is None:
            raise LibvirtModuleError('give target, or source to find the disk by (an empty drive has no source: give its target)')
        device = params.get('device')
        if device in REMOVABLE_DEVICES and self.source is not None and self.source.disk_type == 'network' and device == 'floppy':
            raise LibvirtModuleError('a floppy drive takes a file or block source')


# --------------------------------------------------------------------------- matching
def find_disk(disks, target=None, source=None, conn=None, domain=None):
    """The disk element of ``disks`` with ``target``, else the one whose source is ``source``; None when none."""
    if target is not None:
        for disk in disks:
            if disk_target(disk) == target:
                return disk
        return None
    key = source_key(source, conn)
    found = [disk for disk in disks if source_key(source_of(disk), conn) == key]
    if len(found) > 1:
        raise LibvirtModuleError('domain %s has %d disks with source %s (%s): give target' % (
            _quoted(domain), len(found), source.describe(), ', '.join(disk_target(disk) for disk in found)))
    return found[0] if found else None


def source_key(source, conn=None):
    """What identifies the storage behind a source, for matching and conflict checks: local paths resolved,
    pool volumes resolved to their path when libvirt knows it."""
    if source is None:
        return None
    if source.disk_type in PATH_ATTRIBUTE:
        return ('path', os.path.realpath(source.path))
    if source.disk_type == 'volume':
        if conn is not None:
            try:
                dummy, volume = lookup_volume(conn, source.attributes['pool'], source.attributes['volume'])
                path = volume.path()
            except (LibvirtModuleError, libvirt.libvirtError):
                path = None
            if path:
                return ('path', os.path.realpath(path))
        return ('volume', source.attributes['pool'], source.attributes['volume'])
    return ('network', source.attributes.get('protocol'), source.attributes.get('name'),
            tuple(sorted((str(name), str(port)) for name, port in source.hosts)))


# --------------------------------------------------------------------------- building the wanted disk
def default_bus(device, target, machine):
    if target is not None:
        prefix = target_prefix(target)
        if prefix in PREFIX_BUS:
            return PREFIX_BUS[prefix]
    if device == 'lun':
        return 'scsi'
    if device == 'floppy':
        return 'fdc'
    if device == 'cdrom':
        return 'sata' if 'q35' in machine else 'ide'
    return 'virtio'


def _set_flag(disk, tag, value):
    """Add or remove an empty flag element (<readonly/>, <shareable/>)."""
    if value is None:
        return
    present = disk.findall(tag)
    if value and not present:
        _sub(disk, tag)
    elif not value:
        for element in present:
            disk.remove(element)


def _set_text(disk, tag, value):
    if value is None:
        return
    for element in disk.findall(tag):
        disk.remove(element)
    if value != '':
        _sub(disk, tag, value)


def wanted_disk(request, existing, target, fmt, new_bus):
    """The disk element the task asks for: the options applied over ``existing`` (a copy without what
    libvirt computes), or a new disk with ``target``.  ``fmt`` is the driver type to write (None: none)."""
    params = request.params
    if existing is not None:
        disk = copy.deepcopy(existing)
        for tag in ('alias', 'backingStore', 'mirror'):
            for element in disk.findall(tag):
                disk.remove(element)
        source = disk.find('source')
        if source is not None:
            source.attrib.pop('index', None)
        target_element = disk.find('target')
        target_element.attrib.pop('tray', None)
    else:
        disk = ElementTree.Element('disk', {'type': 'file', 'device': params.get('device') or 'disk'})
        target_element = _sub(disk, 'target', dev=target)
    device = params.get('device') or disk.get('device', 'disk')
    disk.set('device', device)
    bus = params.get('bus') or (disk_bus(existing) if existing is not None else None) or new_bus
    if bus != target_element.get('bus'):
        target_element.set('bus', bus)
        for address in disk.findall('address'):
            disk.remove(address)
    if request.source_given:
        # A source given replaces the old one (source "" empties a removable drive); no source keeps it.
        for element in disk.findall('source'):
            disk.remove(element)
        if request.source is not None:
            disk.set('type', request.source.disk_type)
            disk.insert(0, request.source.element())
        else:
            disk.set('type', 'file')
    driver = disk.find('driver')
    if driver is None:
        driver = ElementTree.Element('driver')
        disk.insert(0, driver)
    driver.set('name', 'qemu')
    if fmt:
        driver.set('type', fmt)
    elif disk.find('source') is None:
        driver.attrib.pop('type', None)
    for option in ('cache', 'io', 'discard', 'detect_zeroes'):
        if params.get(option) is not None:
            driver.set(option, params[option])
    _set_flag(disk, 'readonly', params.get('readonly'))
    _set_flag(disk, 'shareable', params.get('shareable'))
    _set_text(disk, 'serial', params.get('serial'))
    _set_text(disk, 'wwn', params.get('wwn'))
    if params.get('boot_order') is not None:
        for element in disk.findall('boot'):
            disk.remove(element)
        if params['boot_order'] > 0:
            _sub(disk, 'boot', order=params['boot_order'])
    return disk


# --------------------------------------------------------------------------- plan
def disk_action(kind, view, description, element=None, old=None):
    """One step: kind attach | update | replace | detach, in view live | persistent, with the wanted disk
    ``element`` and the ``old`` one it replaces (None when there is none)."""
    return Action(kind, description, view=view, element=element, old=old)


def disk_plan(actions, before, after, target, warnings):
    """A Plan with the field the domain_disk module reports: ``target``."""
    return Plan(actions, before, after, warnings=warnings, target=target)


# Changing these makes another device: in the persistent definition the disk is replaced (detach + attach).
def _identity(disk):
    return (disk.get('device', 'disk'), disk_bus(disk))


def plan_domain_disk(request, state, conn=None):
    """Compare the domain's disks with the request; returns a Plan.  Reads image headers (format detection)
    and libvirt (pool volumes), changes nothing."""
    name = _quoted(request.domain)
    warnings = []
    found = dict((view, find_disk(state.disks(view), request.target, request.source, conn, request.domain)) for view in request.views)
    before = dict((view, normalised_xml(found[view]) if found[view] is not None else None) for view in request.views)
    actions = []
    if request.state == 'absent':
        after = dict((view, None) for view in request.views)
        for view in request.views:
            if found[view] is not None:
                if view == 'live':
                    check_hot_plug(found[view], 'hot-unplug', request.domain)
                actions.append(disk_action('detach', view, 'detach disk %s from the %s of domain %s' % (
                    disk_target(found[view]), _view_name(view), name), old=found[view]))
        targets = [disk_target(disk) for disk in found.values() if disk is not None]
        return disk_plan(actions, before, after, targets[0] if targets else request.target, warnings)

    target = request.target
    if target is None:
        targets = sorted(set(disk_target(disk) for disk in found.values() if disk is not None))
        if len(targets) > 1:
            raise LibvirtModuleError('source %s is disk %s in the persistent definition of domain %s and %s in its live '
                                     'definition: give target' % (request.source.describe(), disk_target(found['persistent']),
                                                                  name, disk_target(found['live'])))
        target = targets[0] if targets else None
    # The bus of a new disk: given, or the one of the target name given, or the device's usual one.
    new_bus = request.params.get('bus') or default_bus(request.params.get('device') or 'disk', request.target, state.machine())
    if target is None:
        used = set(disk_target(disk) for view in ('persistent', 'live') for disk in state.disks(view))
        target = next_free_target(new_bus, used)
    elif request.params.get('bus') and target_prefix(target) in PREFIX_BUS:
        prefix = target_prefix(target)
        if TARGET_PREFIX[request.params['bus']] != prefix:
            raise LibvirtModuleError('target %s does not fit bus %s (its targets are named %sX)' % (
                target, request.params['bus'], TARGET_PREFIX[request.params['bus']]))

    after = {}
    fmt_cache = {}
    for view in request.views:
        existing = found[view]
        # A source not given is kept (a removable drive keeps its medium); source "" empties a removable drive.
        source = request.source if request.source_given else (source_of(existing) if existing is not None else None)
        device = request.params.get('device') or (existing.get('device', 'disk') if existing is not None else 'disk')
        if source is None and device not in REMOVABLE_DEVICES:
            if existing is None:
                raise LibvirtModuleError('disk %s is not in the %s of domain %s: give source to attach it' % (target, _view_name(view), name))
            raise LibvirtModuleError('a %s needs a source (only cdrom and floppy drives can be empty)' % device)
        old_source = None if existing is None else source_of(existing)
        swapped = (old_source is not None and source is not None and source_key(old_source, conn) != source_key(source, conn)
                   and not (existing.get('device', 'disk') in REMOVABLE_DEVICES and device in REMOVABLE_DEVICES))
        if swapped and not request.params.get('replace_source'):
            raise LibvirtModuleError(
                'target %s of domain %s is disk %s in the %s; refusing to put %s in its place: set replace_source=true to '
                'replace the image the guest sees as %s, or give another target (or none: a new disk gets the next free one)'
                % (target, name, old_source.describe(), _view_name(view), source.describe(), target))
        if swapped and view == 'live':
            raise LibvirtModuleError('the source of disk %s of running domain %s cannot change live (libvirt changes the source '
                                     'of cdrom and floppy drives only): set live=false to change the persistent definition, '
                                     'and restart the domain' % (target, name))
        key = None if source is None else source.describe()
        if key not in fmt_cache:
            fmt_cache[key] = detect_format(source, conn, request.local)
            if fmt_cache[key][1]:
                warnings.append(fmt_cache[key][1])
        detected = fmt_cache[key][0]
        current = None
        if existing is not None and source is not None and source_key(source_of(existing)) == source_key(source):
            current_driver = existing.find('driver')
            current = None if current_driver is None else current_driver.get('type')
        if source is not None and detected is None and not request.params.get('format') and current is None:
            raise LibvirtModuleError('give format for %s: the image library cannot read it%s' % (
                source.describe(), '' if source.disk_type == 'network' else ' (the libvirt daemon is not on this host)'))
        fmt = None if source is None else choose_format(request.params.get('format'), detected, source.describe(), current)
        wanted = wanted_disk(request, existing, target, fmt, new_bus)
        after[view] = normalised_xml(wanted)
        check_wanted_disk(request, state, view, existing, wanted)
        if existing is None:
            if view == 'live':
                check_hot_plug(wanted, 'hot-plug', request.domain)
            actions.append(disk_action('attach', view, 'attach %s %s as %s to the %s of domain %s' % (
                device, source.describe() if source is not None else '(empty)', target, _view_name(view), name), element=wanted))
        elif after[view] != before[view]:
            if _identity(existing) != _identity(wanted):
                if view == 'live':
                    raise LibvirtModuleError('disk %s of running domain %s is a %s on bus %s; it cannot become a %s on bus %s '
                                             'while the domain runs: set live=false to change the persistent definition' % (
                                                 target, name, existing.get('device', 'disk'), disk_bus(existing),
                                                 wanted.get('device'), disk_bus(wanted)))
                actions.append(disk_action('replace', view, 'replace disk %s in the %s of domain %s (a %s on bus %s now)' % (
                    target, _view_name(view), name, wanted.get('device'), disk_bus(wanted)), element=wanted, old=existing))
            else:
                if view == 'live':
                    check_live_update(existing, wanted, request.domain)
                actions.append(disk_action('update', view, _update_description(existing, wanted, source, old_source, swapped, view, name),
                                           element=wanted, old=existing))
    return disk_plan(actions, before, after, target, warnings)


def _update_description(existing, wanted, source, old_source, swapped, view, name):
    """What an update does, naming a media change (an eject above all) and a replaced source."""
    target = disk_target(wanted)
    where = 'in the %s of domain %s' % (_view_name(view), name)
    device = wanted.get('device')
    if swapped:
        what = 'replace the source of disk %s (%s) by %s' % (target, old_source.describe(), source.describe())
    elif device in REMOVABLE_DEVICES and source_key(source) != source_key(old_source):
        what = ('eject the medium of %s %s' if source is None else 'insert ' + source.describe() + ' into %s %s') % (device, target)
    else:
        return 'update disk %s %s' % (target, where)
    if _without_source(normalised_xml(existing)) != _without_source(normalised_xml(wanted)):
        what += ' and update its other options'
    return '%s %s' % (what, where)


def check_wanted_disk(request, state, view, existing, wanted):
    """Refuse up front (check mode too) a disk libvirt would refuse in that definition, for reasons known here."""
    name = _quoted(request.domain)
    target = disk_target(wanted)
    driver = wanted.find('driver')
    driver = {} if driver is None else driver.attrib
    if driver.get('io') == 'native' and driver.get('cache') not in UNCACHED_MODES:
        def origin(option):
            return 'given' if request.params.get(option) is not None else 'kept'
        raise LibvirtModuleError('io=native needs cache=none or cache=directsync, but disk %s would have io=native (%s) with cache=%s '
                                 '(%s) in the %s of domain %s; libvirt refuses that combination: give cache=none or '
                                 'cache=directsync, or another io' % (target, origin('io'), driver.get('cache') or 'default',
                                                                      origin('cache'), _view_name(view), name))
    if child_text(wanted, 'wwn') and disk_bus(wanted) not in ('ide', 'scsi'):
        raise LibvirtModuleError('wwn: libvirt gives a world wide name only to disks on the ide and scsi buses, and disk %s would be '
                                 'on bus %s in the %s of domain %s: give another bus, or wwn="" to remove it'
                                 % (target, disk_bus(wanted), _view_name(view), name))
    boot = wanted.find('boot')
    old_boot = None if existing is None else existing.find('boot')
    if boot is None or (old_boot is not None and old_boot.get('order') == boot.get('order')):
        return
    definition = state.config if view == 'persistent' else state.live
    os_boot = definition.find('os/boot')
    if os_boot is not None:
        raise LibvirtModuleError("boot_order=%s: the %s of domain %s boots by <os><boot dev='%s'/></os> (libvirt adds it to a "
                                 "domain defined without any boot order), and libvirt refuses per-device boot orders with it: "
                                 "remove it from <os> and give the boot device a boot order instead, or leave boot_order out"
                                 % (boot.get('order'), _view_name(view), name, os_boot.get('dev')))
    devices = definition.find('devices')
    for device in () if devices is None else devices:
        if device is existing:
            continue
        for other in device.iter('boot'):
            if other.get('order') == boot.get('order'):
                what = device.tag if device.tag != 'disk' else 'disk %s' % disk_target(device)
                raise LibvirtModuleError('boot_order=%s: boot order %s is already used by %s in the %s of domain %s; '
                                         'libvirt refuses two devices with one boot order' % (
                                             boot.get('order'), boot.get('order'), what, _view_name(view), name))


def check_hot_plug(disk, what, domain):
    """Refuse a live attach or detach QEMU cannot make (an ide, sata or fdc bus; a cdrom or floppy outside scsi and usb)."""
    device = disk.get('device', 'disk')
    bus = disk_bus(disk)
    if bus in COLD_PLUG_BUSES or (device in REMOVABLE_DEVICES and bus not in ('scsi', 'usb')):
        raise LibvirtModuleError('QEMU cannot %s a %s on bus %s, and domain %s is running: set live=false to change the '
                                 'persistent definition only (the change comes with the next start), or shut the domain off '
                                 'first' % (what, device, bus, _quoted(domain)))


# Fields of a disk libvirt cannot modify in a running domain (qemuDomainDiskChangeSupported), as the task names them.
def _live_fields(disk):
    driver = disk.find('driver')
    driver = {} if driver is None else driver.attrib
    boot = disk.find('boot')
    return dict(cache=driver.get('cache'), io=driver.get('io'), discard=driver.get('discard'),
                readonly=disk.find('readonly') is not None, shareable=disk.find('shareable') is not None,
                serial=child_text(disk, 'serial'), wwn=child_text(disk, 'wwn'),
                boot_order=None if boot is None else boot.get('order'))


def check_live_update(existing, wanted, domain):
    old, new = _live_fields(normalise_disk(existing)), _live_fields(normalise_disk(wanted))
    changed = [field for field in ('cache', 'io', 'discard', 'readonly', 'shareable', 'serial', 'wwn', 'boot_order')
               if old[field] != new[field]]
    if changed:
        raise LibvirtModuleError('cannot change %s of disk %s of running domain %s live: libvirt cannot modify %s in a running '
                                 'domain; set live=false to change the persistent definition, and restart the domain'
                                 % (', '.join(changed), disk_target(wanted), _quoted(domain), 'it' if len(changed) == 1 else 'them'))


def _without_source(xml):
    disk = normalise_disk(parse_xml(xml))
    for element in disk.findall('source'):
        disk.remove(element)
    disk.set('type', 'file')
    driver = disk.find('driver')
    if driver is not None:
        driver.attrib.pop('type', None)
        if not driver.attrib:
            disk.remove(driver)
    return canonical_xml(disk)


def _view_name(view):
    return 'live definition' if view == 'live' else 'persistent definition'


def check_conflicts(conn, request, plan, domain):
    """Refuse a plan that would attach storage used read-write by another running domain (unless both share it)."""
    wanted = [action.element for action in plan.actions if action.kind in ('attach', 'update', 'replace')]
    wanted = [element for element in wanted if source_of(element) is not None]
    if not wanted:
        return
    our_uuid = libvirt_call('cannot read domain %s' % _quoted(request.domain), domain.UUIDString)
    others = libvirt_call('cannot list the running domains', conn.listAllDomains, libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    keys = dict((source_key(source_of(element), conn), element) for element in wanted)
    for other in others:
        if other.UUIDString() == our_uuid:
            continue
        try:
            other_xml = other.XMLDesc(0)
        except libvirt.libvirtError:
            continue  # stopped or gone since it was listed
        for disk in parse_xml(other_xml, 'live definition of domain %s' % _quoted(other.name())).findall('devices/disk'):
            key = source_key(source_of(disk), conn)
            if key not in keys:
                continue
            ours = keys[key]
            if disk.find('readonly') is not None or disk.get('device') == 'cdrom':
                continue
            if disk.find('shareable') is not None and ours.find('shareable') is not None:
                continue
            raise LibvirtModuleError('%s is attached read-write to running domain %s as %s; refusing to attach it to domain %s too '
                                     'unless both disks are shareable (shareable=true here and in %s)' % (
                                         source_of(disk).describe(), _quoted(other.name()), disk_target(disk), _quoted(request.domain),
                                         _quoted(other.name())))


# --------------------------------------------------------------------------- apply
def _flag(view):
    return libvirt.VIR_DOMAIN_AFFECT_LIVE if view == 'live' else libvirt.VIR_DOMAIN_AFFECT_CONFIG


def _xml(element):
    return ElementTree.tostring(element, encoding='unicode')


def _reusable(element):
    """A copy of a disk element read from libvirt that libvirt accepts back (no alias, backing chain, source index)."""
    disk = copy.deepcopy(element)
    for tag in ('alias', 'backingStore', 'mirror'):
        for child in disk.findall(tag):
            disk.remove(child)
    for source in disk.findall('source'):
        source.attrib.pop('index', None)
    return disk


def _without_address(element):
    disk = copy.deepcopy(element)
    for address in disk.findall('address'):
        disk.remove(address)
    return disk


def _attach(domain, what, element, view):
    libvirt_call(what, domain.attachDeviceFlags, _xml(element), _flag(view))


def _detach(domain, what, element, view, request):
    libvirt_call(what, domain.detachDeviceFlags, _xml(element), _flag(view))
    if view == 'live':
        timeout = request.params.get('detach_timeout')
        wait_for_removal(domain, disk_target(element), 30 if timeout is None else timeout, _quoted(request.domain))


def _update(domain, what, element, view):
    flags = _flag(view)
    if view == 'live' and element.get('device') in REMOVABLE_DEVICES:
        # Open the tray even when the guest (or its firmware) has locked it, as a user's eject does.
        flags |= libvirt.VIR_DOMAIN_DEVICE_MODIFY_FORCE
    libvirt_call(what, domain.updateDeviceFlags, _xml(element), flags)


class _PartlyDone(LibvirtModuleError):
    """An action that failed half-way and left a change behind (a replace whose old disk could not come back);
    ``done`` says what stays done."""

    def __init__(self, message, done):
        super(_PartlyDone, self).__init__(message)
        self.done = done


def apply_action(domain, action, request):
    what = 'cannot %s' % action.description
    if action.kind == 'attach':
        _attach(domain, what, action.element, action.view)
    elif action.kind == 'update':
        _update(domain, what, action.element, action.view)
    elif action.kind == 'replace':
        _detach(domain, what, _reusable(action.old), action.view, request)
        try:
            _attach(domain, what, _without_address(action.element), action.view)
        except LibvirtModuleError as exc:
            try:
                _attach(domain, what, _reusable(action.old), action.view)
            except LibvirtModuleError as undo:
                raise _PartlyDone('%s; putting the old disk back failed too: %s' % (exc, undo),
                                  'detach disk %s from the %s of domain %s (its replacement could not be attached)'
                                  % (disk_target(action.old), _view_name(action.view), _quoted(request.domain)))
            raise
    elif action.kind == 'detach':
        _detach(domain, what, _reusable(action.old), action.view, request)
    else:
        raise LibvirtModuleError('internal error: unknown action %r' % action.kind)


def undo_action(domain, action, request):
    """Put back what a done action changed."""
    what = 'cannot undo "%s"' % action.description
    if action.kind == 'attach':
        _detach(domain, what, _without_address(action.element), action.view, request)
    elif action.kind == 'update':
        _update(domain, what, _reusable(action.old), action.view)
    elif action.kind == 'replace':
        _detach(domain, what, _without_address(action.element), action.view, request)
        _attach(domain, what, _reusable(action.old), action.view)
    elif action.kind == 'detach':
        _attach(domain, what, _reusable(action.old), action.view)


def apply_plan(domain, plan, request):
    """Carry out the plan, live changes first (the likelier to fail) so that a failure leaves the persistent definition as it was.

    When a step fails after others succeeded, those are undone, latest first; what cannot be undone is reported
    in the error (``changed=True`` and the ``actions`` done), never hidden behind ``changed: false``.
    """
    done = []
    for action in sorted(plan.actions, key=lambda action: 0 if action.view == 'live' else 1):
        try:
            apply_action(domain, action, request)
        except LibvirtModuleError as exc:
            partly = [exc.done] if isinstance(exc, _PartlyDone) else []
            if not done and not partly:
                raise
            left, undo_errors = list(partly), []
            for earlier in reversed(done):
                try:
                    undo_action(domain, earlier, request)
                except LibvirtModuleError as undo:
                    left.insert(0, earlier.description)
                    undo_errors.append(str(undo))
            if not left:
                raise LibvirtModuleError('%s; what was done before (%s) was undone: domain %s is as it was' % (
                    exc, '; '.join(earlier.description for earlier in done), _quoted(request.domain)))
            raise LibvirtModuleError(
                '%s; done and not undone: %s%s' % (exc, '; '.join(left), ''.join('; %s' % error for error in undo_errors)),
                changed=True, actions=left)
        done.append(action)


def wait_for_removal(domain, target, timeout, name, clock=time.monotonic, sleep=time.sleep):
    """Poll the live definition until disk ``target`` is gone: libvirt returns from a live detach before the
    guest has released the device (a hot-unplug the guest OS must acknowledge)."""
    deadline = clock() + timeout
    while True:
        try:
            if not domain.isActive():
                return
            live = parse_xml(domain.XMLDesc(0), 'live definition of domain %s' % name)
        except libvirt.libvirtError as exc:
            if error_is(exc, 'VIR_ERR_NO_DOMAIN', 'VIR_ERR_OPERATION_INVALID'):
                return
            raise LibvirtModuleError('cannot read domain %s while waiting for disk %s to go: %s' % (name, target, error_message(exc)))
        if all(disk_target(disk) != target for disk in live.findall('devices/disk')):
            return
        if clock() >= deadline:
            raise LibvirtModuleError(
                'disk %s of running domain %s was not released by the guest within detach_timeout=%d seconds: libvirt asked for the '
                'hot-unplug, but the guest OS did not acknowledge it (no OS running, or it ignores or refuses the unplug), so the '
                'disk is still attached live and the persistent definition was left unchanged. The unplug request stays pending: '
                'run the task again later, raise detach_timeout, or set live=false and restart the domain' % (target, name, timeout))
        sleep(DETACH_POLL_INTERVAL)


# --------------------------------------------------------------------------- reporting
def render_view(views):
    """The diff text: each managed definition's normalised disk, or 'absent'."""
    lines = []
    for view in ('persistent', 'live'):
        if view not in views:
            continue
        xml = views[view]
        if xml is None:
            lines.append('%s: absent' % view)
        else:
            lines.append('%s: |' % view)
            lines.extend('  ' + line for line in xml.splitlines())
    return '\n'.join(lines) + '\n'


def run_domain_disk(conn, params, check_mode):
    """The domain_disk module: returns the result dict for exit_json (``diff`` always included)."""
    local = is_local_uri(params.get('uri'))
    domain = lookup_domain(conn, params['domain'])
    state = read_domain_state(domain)
    request = DiskRequest(params, state, local)
    plan = plan_domain_disk(request, state, conn)
    if request.state == 'present' and plan.actions:
        check_conflicts(conn, request, plan, domain)
    result = plan.result(notes=True)
    if not check_mode and plan.actions:
        apply_plan(domain, plan, request)
    header = 'disk %s of domain %s' % (plan.target, request.domain)
    result['diff'] = plan.diff(header, render_view)
    if check_mode or not plan.actions:
        final = state
    else:
        try:
            final = read_domain_state(domain)
        except LibvirtModuleError as exc:
            # The plan was carried out: the failure to read the result does not hide it.
            raise LibvirtModuleError('%s (after the task made its changes: %s)' % (exc, '; '.join(result['actions'])),
                                     changed=True, actions=result['actions'])
    disks = {}
    for view in ('persistent', 'live'):
        found = None
        if plan.target is not None:
            found = find_disk(final.disks(view), target=plan.target)
        disks[view] = None if found is None else disk_view(found)
    if check_mode and plan.actions:
        # What the disk would be: the views computed by the plan.
        for view in request.views:
            disks[view] = None if plan.after[view] is None else disk_view(parse_xml(plan.after[view]))
    main_view = 'persistent' if 'persistent' in request.views else 'live'
    result['disk'] = disks[main_view] or {}
    result['live_disk'] = disks['live'] or {}
    return result


def run_domain_disk_info(conn, params):
    domain = lookup_domain(conn, params['domain'])
    state = read_domain_state(domain)

    def views(view):
        disks = [disk_view(disk) for disk in state.disks(view)]
        if params.get('target'):
            disks = [disk for disk in disks if disk['target'] == params['target']]
        return disks

    persistent = views('persistent') if state.persistent else views('live')
    return dict(changed=False, domain=dict(name=state.name, active=state.active, persistent=state.persistent),
                disks=persistent, live_disks=views('live'))
