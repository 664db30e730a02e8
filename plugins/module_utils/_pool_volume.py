# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""disk_image with ``pool`` + ``volume``: an image that is a volume of a libvirt storage pool.

Private to this collection (the leading underscore): no compatibility promise.

- File-backed pools (dir, fs, netfs): the volume is the file ``<pool target>/<volume>``; disk_image does its
  usual work on that path (``_disk_image.run_disk_image``), then the pool is refreshed when something changed.
- Other pools (logical, disk, iscsi, ...): libvirt's volume API.  A volume is created with
  storageVolCreateXML, grown with virStorageVolResize, deleted with virStorageVolDelete, and ``src`` is read
  through the image library (any format it reads) and uploaded as raw data through a virStream, holes and
  zeroes sent as holes when libvirt takes sparse streams.  Memory stays bounded: one chunk at a time.

The volume-API path reads the volume once (``read_volume``), plans with a pure function (``plan_volume``)
and acts only outside check mode (``apply_volume_plan``); the diff's before/after are the views compared.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import socket
import time
from xml.etree import ElementTree

from ansible.module_utils.six.moves.urllib.parse import urlparse

from ansible_collections.kvm.storage.plugins.module_utils._disk_image import (
    DiskImageError,
    align_size,
    check_option_constraints,
    check_src_passphrase,
    member_selector,
    parse_size,
    run_disk_image,
)
from ansible_collections.kvm.storage.plugins.module_utils._libvirt import (
    LibvirtConnection,
    LibvirtModuleError,
    child_text,
    error_is,
    error_message,
    libvirt,
    libvirt_call,
    parse_xml,
)
from ansible_collections.kvm.storage.plugins.module_utils._plan import Action, Plan
from ansible_collections.kvm.storage.plugins.module_utils.diskimage import (
    ImageError,
    info as image_info,
    open_image,
)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.base import DATA

# Pools whose volumes are files in the pool's target directory.
FILE_POOL_TYPES = ('dir', 'fs', 'netfs')
# Bytes read from the source and sent to libvirt at a time.
UPLOAD_CHUNK = 4 << 20
_ZERO_CHUNK = bytes(UPLOAD_CHUNK)

# Options of disk_image that the volume API path carries out; the others only apply to image files.
VOLUME_API_OPTIONS = ('state', 'format', 'size', 'src', 'src_format', 'src_member', 'src_snapshot', 'src_passphrase',
                      'force', 'allow_dirs')
# Options with a default value that the volume API path accepts only at their default.
_DEFAULTS = {'shrink': False, 'compress': False, 'commit': False, 'repair': 'none', 'options': {}}
# File attributes (ansible.builtin.files) that libvirt's volume API does not set.
_FILE_ATTRIBUTES = ('mode', 'owner', 'group', 'seuser', 'serole', 'setype', 'selevel', 'attributes')


def check_volume_name(name):
    """A volume name is one file name: a file pool's volume must stay inside the pool's directory."""
    if not isinstance(name, str) or not name or name in ('.', '..') or '/' in name or '\0' in name:
        raise DiskImageError('volume: expected a volume name (one file name, no "/"), found %r' % (name,))
    return name


# --------------------------------------------------------------------------- the pool
class PoolTarget(object):
    """The pool a task names: its libvirt object, type and target directory (read once)."""

    def __init__(self, pool, name, pool_type, target_path):
        self.pool = pool
        self.name = name
        self.type = pool_type
        self.target_path = target_path

    @property
    def file_backed(self):
        return self.type in FILE_POOL_TYPES

    def volume_path(self, volume):
        """Where a file pool keeps ``volume``."""
        return os.path.join(self.target_path, volume)


def open_pool(conn, name):
    """The active pool ``name``; DiskImageError when it does not exist or is not active."""
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as exc:
        if error_is(exc, 'VIR_ERR_NO_STORAGE_POOL'):
            raise DiskImageError('storage pool %r does not exist (define it with kvm.storage.storage_pool)' % name)
        raise LibvirtModuleError('cannot look up storage pool %r: %s' % (name, error_message(exc)))
    what = 'cannot read storage pool %r' % name
    if not libvirt_call(what, pool.isActive):
        raise DiskImageError('storage pool %r is not active: its volumes cannot be managed (start it, for example '
                             'with kvm.storage.storage_pool state=active)' % name)
    element = parse_xml(libvirt_call(what, pool.XMLDesc, 0), 'storage pool %r' % name)
    return PoolTarget(pool, name, element.get('type'), child_text(element, 'target/path'))


def _short_name(hostname):
    return (hostname or '').split('.')[0].lower()


def is_local_connection(conn, uri):
    """Whether the libvirt host of ``uri`` is this host: no host in the URI, a loopback name, or libvirt's host
    name equal to ours.  A file pool of another host is not reachable at its target path here."""
    host = urlparse(uri).hostname
    if not host or host in ('localhost', '127.0.0.1', '::1'):
        return True
    remote = libvirt_call('cannot read the host name of %s' % uri, conn.getHostname)
    return _short_name(remote) == _short_name(socket.gethostname())


def refresh_pool(target):
    libvirt_call('cannot refresh storage pool %r' % target.name, target.pool.refresh, 0)


def lookup_volume(target, name):
    """The virStorageVol ``name`` of the pool, or None."""
    try:
        return target.pool.storageVolLookupByName(name)
    except libvirt.libvirtError as exc:
        if error_is(exc, 'VIR_ERR_NO_STORAGE_VOL'):
            return None
        raise LibvirtModuleError('cannot look up volume %r of storage pool %r: %s'
                                 % (name, target.name, error_message(exc)))


def describe_volume(target, volume):
    """What libvirt says of a volume: name, pool, path, key, type, format, capacity, allocation (bytes)."""
    what = 'cannot read volume %r of storage pool %r' % (volume.name(), target.name)
    element = parse_xml(libvirt_call(what, volume.XMLDesc, 0), what)
    format_element = element.find('target/format')
    capacity = element.find('capacity')
    allocation = element.find('allocation')
    return {
        'name': volume.name(),
        'pool': target.name,
        'path': child_text(element, 'target/path'),
        'key': child_text(element, 'key'),
        'type': element.get('type'),
        'format': None if format_element is None else format_element.get('type'),
        'capacity': _bytes(capacity),
        'allocation': _bytes(allocation),
    }


_UNITS = {'b': 1, 'bytes': 1, 'k': 1 << 10, 'kib': 1 << 10, 'm': 1 << 20, 'mib': 1 << 20, 'g': 1 << 30,
          'gib': 1 << 30, 't': 1 << 40, 'tib': 1 << 40, 'kb': 1000, 'mb': 1000 ** 2, 'gb': 1000 ** 3, 'tb': 1000 ** 4}


def _bytes(element):
    """A libvirt scaled integer (<capacity unit='bytes'>...) in bytes; None when absent."""
    if element is None or element.text is None:
        return None
    return int(element.text.strip()) * _UNITS.get((element.get('unit') or 'bytes').lower(), 1)


# --------------------------------------------------------------------------- the volume API path
class VolumeRequest(object):
    """What the task asks of a volume in a pool managed through libvirt's volume API."""

    def __init__(self, params, pool_kind):
        self.pool = params['pool']
        self.volume = check_volume_name(params['volume'])
        self.state = params.get('state') or 'present'
        self.format = params.get('format')
        self.size = None if params.get('size') is None else align_size(parse_size(params['size']))
        self.src = params.get('src')
        self.src_format = params.get('src_format')
        self.src_member = member_selector(params.get('src_member'))
        self.src_snapshot = params.get('src_snapshot')
        self.src_passphrase = params.get('src_passphrase')
        self.force = bool(params.get('force'))
        self.allow_dirs = list(params.get('allow_dirs') or []) or None
        # The task names src: the operator's word (diskimage.policy), accepted when an image names it.
        self.trusted_files = [os.path.abspath(self.src)] if self.src else None
        self._validate(params, pool_kind)

    def _validate(self, params, pool_kind):
        check_option_constraints(params)
        unsupported = [name for name in ('backing_file', 'backing_format', 'preallocation', 'snapshots', 'rebase',
                                         'revert_to', 'encryption_passphrase') + _FILE_ATTRIBUTES
                       if params.get(name) is not None]
        unsupported.extend(name for name, default in sorted(_DEFAULTS.items())
                           if params.get(name) not in (None, default))
        if unsupported:
            raise DiskImageError('%s: not supported for volumes of %s (managed through libvirt\'s volume API, '
                                 'which supports %s)' % (', '.join(sorted(unsupported)), pool_kind,
                                                         ', '.join(VOLUME_API_OPTIONS)))
        if self.state != 'present':
            return
        if self.format not in (None, 'raw'):
            raise DiskImageError('format: volumes of %s hold raw data here; format must be raw, found %r (an '
                                 'image is converted to raw on its way in)' % (pool_kind, self.format))

    def source_arguments(self):
        """Keywords of the library's open_image for ``src``."""
        arguments = {}
        if self.src_member is not None:
            arguments['member'] = self.src_member
        if self.src_passphrase is not None:
            arguments['key_secret'] = self.src_passphrase
        return arguments


def volume_view(request, described):
    """The normalised view of the volume compared and shown in the diff."""
    if described is None:
        return {'pool': request.pool, 'volume': request.volume, 'state': 'absent'}
    return {'pool': request.pool, 'volume': request.volume, 'state': 'present', 'capacity': described['capacity']}


def read_source(request):
    """info of ``src`` as the upload will read it (snapshot selected); the passphrase checked."""
    if request.src is None:
        return None
    member = {} if request.src_member is None else {'member': request.src_member}
    src_info = image_info(request.src, fmt=request.src_format, allow_dirs=request.allow_dirs,
                          trusted_files=request.trusted_files, **member)
    check_src_passphrase(request, src_info)
    if request.src_snapshot is not None:
        with open_image(request.src, fmt=src_info['format'], allow_dirs=request.allow_dirs,
                        trusted_files=request.trusted_files, **request.source_arguments()) as source:
            source.driver.select_snapshot(request.src_snapshot)
            src_info = dict(src_info, **{'virtual-size': source.driver.virtual_size})
    return src_info


def plan_volume(request, described, src_info=None):
    """Compare the volume (``described``: describe_volume's dict, None when absent) with the request.

    A volume is created with the requested capacity (``size``, else the virtual size of ``src``); ``src`` is
    uploaded into a volume this task creates.  An existing volume whose capacity is at least the requested one
    is taken as it is: its content is not compared (as for an image file converted from ``src``).  A smaller
    one is grown (without ``src``), or deleted, created and uploaded again with ``force`` (with ``src``).
    """
    before = volume_view(request, described)
    name = '%s/%s' % (request.pool, request.volume)
    if request.state == 'absent':
        if described is None:
            return Plan([], before, dict(before))
        return Plan([Action('delete', 'delete volume %s (%s)' % (name, described['path']))],
                    before, volume_view(request, None))
    src_size = None if src_info is None else align_size(src_info['virtual-size'])
    if request.size is not None and src_size is not None and request.size < src_size:
        raise DiskImageError('size %d is smaller than the virtual size of src %s (%d bytes)'
                             % (request.size, request.src, src_size))
    capacity = request.size if request.size is not None else src_size
    if capacity is None:
        if described is None:
            raise DiskImageError('size is required to create volume %s (or give src)' % name)
        # Neither size nor src: an existing volume is what the task asks for.
        capacity = described['capacity']
    actions = []
    recreate = described is None
    if described is not None and described['capacity'] < capacity:
        if request.src is None:
            actions.append(Action('resize', 'grow volume %s from %d to %d bytes'
                                  % (name, described['capacity'], capacity), capacity=capacity))
        elif not request.force:
            raise DiskImageError('volume %s exists with a capacity of %d bytes, smaller than the %d bytes of src %s; '
                                 'set force=true to delete it and upload src again, which discards its content'
                                 % (name, described['capacity'], capacity, request.src))
        else:
            actions.append(Action('delete', 'delete volume %s (%d bytes, too small)'
                                  % (name, described['capacity'])))
            recreate = True
    after = dict(before, state='present', capacity=max(capacity, described['capacity'] if described else 0))
    if recreate:
        after['capacity'] = capacity
        actions.append(Action('create', 'create volume %s of %d bytes' % (name, capacity), capacity=capacity))
        if request.src is not None:
            actions.append(Action('upload', 'upload %s%s (%s%s) into volume %s as raw data' % (
                request.src, '' if request.src_member is None else ' member %r' % (request.src_member,),
                src_info['format'], '' if request.src_snapshot is None else ', snapshot %r' % request.src_snapshot,
                name), src_format=src_info['format']))
    return Plan(actions, before, after)


def volume_xml(name, capacity, allocation=None):
    """The definition of a new volume: a name, a capacity and optionally an allocation; the pool gives the rest
    (raw data, its format)."""
    volume = ElementTree.Element('volume')
    ElementTree.SubElement(volume, 'name').text = name
    ElementTree.SubElement(volume, 'capacity', unit='bytes').text = str(capacity)
    if allocation is not None:
        ElementTree.SubElement(volume, 'allocation', unit='bytes').text = str(allocation)
    return ElementTree.tostring(volume, encoding='unicode')


def _sparse_flag():
    """libvirt's flag for sparse uploads (libvirt 3.4+), or 0 when this libvirt-python lacks it."""
    return getattr(libvirt, 'VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM', 0)


def upload_source(conn, volume, request, src_format, capacity):
    """Stream ``src`` read through the image library into ``volume`` as raw data, then zeroes up to
    ``capacity``.  Ranges that read as zeroes are sent as holes when libvirt takes sparse streams (it writes
    zeroes for them on block devices), else as zero bytes.  Returns the statistics of the upload."""
    what = 'cannot upload %s into volume %r of storage pool %r' % (request.src, request.volume, request.pool)
    sparse = _sparse_flag()
    stats = {'bytes_read': 0, 'bytes_sent': 0, 'holes_sent': 0}
    started = time.time()
    with open_image(request.src, fmt=src_format, allow_dirs=request.allow_dirs,
                    trusted_files=request.trusted_files, **request.source_arguments()) as source:
        if request.src_snapshot is not None:
            source.driver.select_snapshot(request.src_snapshot)
        stream = libvirt_call(what, conn.newStream, 0)
        try:
            libvirt_call(what, volume.upload, stream, 0, capacity, sparse)

            def send_zeroes(length):
                while length > 0:
                    if sparse:
                        libvirt_call(what, stream.sendHole, length, 0)
                        stats['holes_sent'] += length
                        return
                    count = min(length, UPLOAD_CHUNK)
                    _send(stream, _ZERO_CHUNK[:count], what)
                    stats['bytes_sent'] += count
                    length -= count

            pending_zeroes = 0
            for extent in source.block_status():
                if extent.kind != DATA:
                    pending_zeroes += extent.length
                    continue
                offset, end = extent.start, extent.start + extent.length
                while offset < end:
                    count = min(UPLOAD_CHUNK, end - offset)
                    chunk = source.read(offset, count)
                    stats['bytes_read'] += count
                    offset += count
                    if chunk == _ZERO_CHUNK[:count]:
                        pending_zeroes += count
                        continue
                    send_zeroes(pending_zeroes)
                    pending_zeroes = 0
                    _send(stream, chunk, what)
                    stats['bytes_sent'] += count
            send_zeroes(pending_zeroes + capacity - source.virtual_size)
            libvirt_call(what, stream.finish)
        except BaseException:
            try:
                stream.abort()
            except Exception:  # pylint: disable=broad-except
                pass  # the first error is the one to report
            raise
    stats['duration'] = round(time.time() - started, 3)
    return stats


def _send(stream, data, what):
    """Send all of ``data`` (virStream.send may take less than it is given)."""
    while data:
        sent = libvirt_call(what, stream.send, data)
        if sent is None or sent <= 0:
            raise LibvirtModuleError('%s: the stream took no data' % what)
        data = data[sent:]


def apply_volume_plan(conn, target, plan, request):
    """Carry out the plan; returns (described volume or None, upload statistics or None).

    A step that fails after others succeeded raises DiskImageError with ``changed`` and the ``actions`` that stay
    done (a volume deleted before, a volume created that could not be removed again), never ``changed: false``."""
    name = '%s/%s' % (request.pool, request.volume)
    volume = lookup_volume(target, request.volume)
    upload_stats = None
    done = []
    for action in plan.actions:
        try:
            if action.kind == 'delete':
                libvirt_call('cannot delete volume %s' % name, volume.delete, 0)
                volume = None
            elif action.kind == 'create':
                # A file stays sparse (the upload's holes stay holes); other pools allocate the whole volume (a
                # logical pool would otherwise make a thin snapshot volume).
                volume = libvirt_call('cannot create volume %s' % name, target.pool.createXML,
                                      volume_xml(request.volume, action.args['capacity'],
                                                 0 if target.file_backed else None), 0)
            elif action.kind == 'resize':
                libvirt_call('cannot grow volume %s' % name, volume.resize, action.args['capacity'], 0)
            elif action.kind == 'upload':
                try:
                    capacity = describe_volume(target, volume)['capacity']
                    upload_stats = upload_source(conn, volume, request, action.args['src_format'], capacity)
                except BaseException as exc:
                    # A volume this task created and could not fill is removed: no half-uploaded volume stays.
                    try:
                        volume.delete(0)
                    except libvirt.libvirtError as undo:
                        if not isinstance(exc, Exception):
                            raise
                        raise _VolumeStepFailed('%s; cannot remove the volume it created (%s), which stays with what '
                                                'was uploaded so far: delete it (virsh vol-delete) before running the task '
                                                'again, which takes a volume of the requested capacity as it is'
                                                % (exc, error_message(undo)))
                    done = [item for item in done if item.kind != 'create']
                    raise
        except (LibvirtModuleError, DiskImageError, ImageError, OSError) as exc:
            if not done:
                raise
            raise DiskImageError('%s; done before the failure: %s' % (exc, '; '.join(item.description for item in done)),
                                 result={'changed': True, 'actions': [item.description for item in done]})
        done.append(action)
    try:
        return (None if volume is None else describe_volume(target, volume)), upload_stats
    except LibvirtModuleError as exc:
        raise _after_changes(exc, [action.description for action in done])


def _after_changes(exc, actions):
    """The error for a failure to read the result once the task made its changes: they are reported, not hidden."""
    return DiskImageError('%s (after the task made its changes: %s)' % (exc, '; '.join(actions)),
                          result={'changed': True, 'actions': actions})


class _VolumeStepFailed(DiskImageError):
    """An upload that failed and left the volume it created (it could not be removed)."""


def run_volume_api(conn, target, module, pool_kind):
    """disk_image on a volume of a pool managed through libvirt's volume API."""
    request = VolumeRequest(module.params, pool_kind)
    volume = lookup_volume(target, request.volume)
    described = None if volume is None else describe_volume(target, volume)
    src_info = read_source(request) if request.state == 'present' else None
    plan = plan_volume(request, described, src_info)
    result = plan.result()
    if not module.check_mode and plan.changed:
        started = time.time()
        described, upload_stats = apply_volume_plan(conn, target, plan, request)
        result['stats'] = {'duration': round(time.time() - started, 3)}
        if upload_stats is not None:
            result['upload'] = upload_stats
    result['volume'] = described or {}
    result['path'] = (described or {}).get('path')
    if module._diff:
        result['diff'] = plan.diff()
    return result


# --------------------------------------------------------------------------- entry point
def run_pool_volume(module):
    """disk_image with pool + volume: returns the result dict for exit_json."""
    params = module.params
    name = check_volume_name(params['volume'])
    with LibvirtConnection(params['uri']) as conn:
        target = open_pool(conn, params['pool'])
        if not target.file_backed:
            return run_volume_api(conn, target, module, 'a %s pool' % target.type)
        if not is_local_connection(conn, params['uri']):
            # The pool's directory is on the libvirt host, not here: only libvirt can write there.
            remote_kind = 'a %s pool on the remote host of %s' % (target.type, params['uri'])
            return run_volume_api(conn, target, module, remote_kind)
        if not target.target_path or not os.path.isdir(target.target_path):
            raise DiskImageError('storage pool %r: its target directory %r is not a directory on this host'
                                 % (target.name, target.target_path))
        params['path'] = target.volume_path(name)
        try:
            result = run_disk_image(module)
        except DiskImageError as exc:
            if exc.result.get('changed'):
                # A step failed after others changed the file: libvirt learns about it as after a success.
                try:
                    refresh_pool(target)
                except LibvirtModuleError as refresh_error:
                    exc.args = ('%s; %s' % (exc, refresh_error),)
            raise
        try:
            if result['changed'] and not module.check_mode:
                # libvirt learns about the new, changed or removed file.
                refresh_pool(target)
            volume = lookup_volume(target, name)
            if volume is None and os.path.isfile(params['path']):
                # A file libvirt has not seen yet (made behind its back): a refresh only rereads the directory.
                refresh_pool(target)
                volume = lookup_volume(target, name)
            result['volume'] = {} if volume is None else describe_volume(target, volume)
        except LibvirtModuleError as exc:
            if not result['changed'] or module.check_mode:
                raise
            raise _after_changes(exc, result['actions'])
        result['path'] = params['path']
        return result
