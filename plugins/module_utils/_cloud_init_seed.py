# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The logic of kvm.storage.cloud_init_seed: a cloud-init NoCloud seed image (ISO 9660 or FAT) at a path.

The requested seed is built in memory (deterministic: the same request gives the same bytes), compared with the file
at the path, and written only on a difference: under a temporary name in the same directory, flushed, renamed into
place. The file at the path is read back with this collection's own readers, for the diff and to refuse replacing or
removing a file that is not a seed.

Private to this collection (the leading underscore): no compatibility promise.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import errno
import hashlib
import os
import re
import stat
import tempfile

from ansible_collections.kvm.storage.plugins.module_utils import _seed_fat
from ansible_collections.kvm.storage.plugins.module_utils import _seed_iso9660
from ansible_collections.kvm.storage.plugins.module_utils import _seed_yaml
from ansible_collections.kvm.storage.plugins.module_utils._file_attributes import (
    FileAttributeError,
    check_file_attributes,
    set_file_attributes,
    unknown_in_check_mode,
)
from ansible_collections.kvm.storage.plugins.module_utils._plan import Action, Plan

FORMATS = ('iso9660', 'vfat')
# the NoCloud file names, in the order of the options
SEED_FILES = (('user-data', 'user_data'), ('meta-data', 'meta_data'), ('network-config', 'network_config'),
              ('vendor-data', 'vendor_data'))
CLOUD_CONFIG = '#cloud-config'
DEFAULT_USER_DATA = CLOUD_CONFIG + '\n'
MAX_SEED_BYTES = 64 * 1024 * 1024
_LABEL = re.compile(r'^[A-Za-z0-9_]{1,11}$')


class CloudInitSeedError(Exception):
    """A refused request or a failure, with a message meant for the user; ``result``: more keys of the failed task."""

    def __init__(self, message, **result):
        super(CloudInitSeedError, self).__init__(message)
        self.result = result


def cloud_init_seed_argument_spec():
    return dict(
        path=dict(type='path', required=True),
        format=dict(type='str', default='iso9660', choices=list(FORMATS)),
        label=dict(type='str', default='cidata'),
        user_data=dict(type='raw'),
        meta_data=dict(type='raw'),
        network_config=dict(type='raw'),
        vendor_data=dict(type='raw'),
        state=dict(type='str', default='present', choices=['present', 'absent']),
        force=dict(type='bool', default=False),
    )


def default_instance_id(path):
    """``iid-`` and the first 16 hex digits of the SHA-256 of the seed's absolute path: stable for a seed, distinct
    between seeds."""
    return 'iid-' + hashlib.sha256(os.path.abspath(path).encode('utf-8', 'surrogateescape')).hexdigest()[:16]


def document(option, value, header=None):
    """The bytes of one seed file from an option's value: a string as it is (UTF-8), a dictionary as YAML."""
    if isinstance(value, str):
        return value.encode('utf-8', 'surrogateescape')
    if isinstance(value, dict):
        try:
            return _seed_yaml.dump(value, header).encode('utf-8')
        except _seed_yaml.YAMLEmitError as exc:
            raise CloudInitSeedError('%s: %s' % (option, exc))
    raise CloudInitSeedError('%s: expected a string or a dictionary, found %s' % (option, type(value).__name__))


def requested_files(params):
    """The seed's files (name -> bytes) the options ask for."""
    files = {}
    for name, option in SEED_FILES:
        value = params.get(option)
        if value is None:
            if option == 'user_data':
                value = DEFAULT_USER_DATA
            elif option == 'meta_data':
                value = {'instance-id': default_instance_id(params['path'])}
            else:
                continue
        header = CLOUD_CONFIG if option in ('user_data', 'vendor_data') else None
        files[name] = document(option, value, header)
    total = sum(len(data) for data in files.values())
    if total > MAX_SEED_BYTES:
        raise CloudInitSeedError('the seed files hold %d bytes; a seed holds at most %d' % (total, MAX_SEED_BYTES))
    return files


def seed_label(label, fmt):
    """The label written: upper case (an ISO 9660 volume identifier is made of d-characters, and a FAT label of
    short-name characters); cloud-init finds a NoCloud seed by its label in either case."""
    if not _LABEL.match(label or ''):
        raise CloudInitSeedError('label: expected 1 to 11 of the characters A-Z a-z 0-9 _, found %r' % (label,))
    del fmt
    return label.upper()


def build(fmt, label, files):
    """The image bytes of a seed."""
    if fmt == 'vfat':
        return _seed_fat.build_image(files, label)
    return _seed_iso9660.build_image(files, label)


def read_seed(image):
    """``(format, label, files)`` of an image this module reads as a seed, or ``(None, reason)``: an ISO 9660 or
    FAT file system whose root directory holds only files with NoCloud names (user-data, meta-data,
    network-config, vendor-data)."""
    reasons = []
    for fmt, reader, error in (('iso9660', _seed_iso9660.read_image, _seed_iso9660.ISO9660Error),
                               ('vfat', _seed_fat.read_image, _seed_fat.FATError)):
        try:
            label, files = reader(image)
        except error as exc:
            reasons.append('%s: %s' % (fmt, exc))
            continue
        others = sorted(set(files) - set(name for name, _option in SEED_FILES))
        if others:
            return None, 'a %s file system holding other files than a seed (%s)' % (fmt, ', '.join(others))
        return (fmt, label, files), None
    return None, 'neither an ISO 9660 nor a FAT file system (%s)' % '; '.join(reasons)


class Existing(object):
    """What is at the path: ``exists``, ``image`` (bytes), ``seed`` (format, label, files) or ``not_seed`` (why)."""

    def __init__(self, path):
        self.path = path
        self.exists = False
        self.image = None
        self.seed = None
        self.not_seed = None
        self.stat = None
        try:
            self.stat = os.stat(path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise CloudInitSeedError('%s: cannot read it: %s' % (path, exc.strerror))
            return
        self.exists = True
        if stat.S_ISDIR(self.stat.st_mode):
            raise CloudInitSeedError('%s is a directory; path names the seed image file' % path)
        if not stat.S_ISREG(self.stat.st_mode):
            raise CloudInitSeedError('%s is not a regular file (a device, FIFO or socket); path names the seed image '
                                     'file, which is replaced by renaming' % path)
        if self.stat.st_size > MAX_SEED_BYTES * 2:
            self.not_seed = '%d bytes, larger than a seed' % self.stat.st_size
            return
        with open(path, 'rb') as handle:
            self.image = handle.read()
        self.seed, self.not_seed = read_seed(self.image)


def _text(data):
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError:
        return '(binary: %d bytes, sha256 %s)\n' % (len(data), hashlib.sha256(data).hexdigest())


def _summary(fmt, label, files):
    return 'format: %s\nlabel: %s\nfiles: %s\n' % (fmt, label, ', '.join(sorted(files)))


def seed_diff(path, before, after):
    """Ansible's diff: a list of before/after pairs, the seed's summary (format, label, files) first, then one per
    file that differs (its text). ``before``/``after``: (format, label, files) or None."""
    empty = ('', '', {})
    old, new = before or empty, after or empty
    diffs = [dict(before_header='%s (seed)' % path, after_header='%s (seed)' % path,
                  before=_summary(*old) if before else '', after=_summary(*new) if after else '')]
    for name in sorted(set(old[2]) | set(new[2])):
        if old[2].get(name) != new[2].get(name):
            header = '%s:%s' % (path, name)
            diffs.append(dict(before_header=header, after_header=header,
                              before=_text(old[2][name]) if name in old[2] else '',
                              after=_text(new[2][name]) if name in new[2] else ''))
    return diffs


def file_report(files):
    return dict((name, dict(sha256=hashlib.sha256(data).hexdigest(), size=len(data))) for name, data in files.items())


def _refuse_not_seed(existing, doing):
    raise CloudInitSeedError(
        '%s exists and is not a seed this module writes (%s); refusing to %s it: set force=true to %s it anyway'
        % (existing.path, existing.not_seed, doing, doing))


def plan_seed(existing, fmt, image=None, after=None, force=False):
    """The plan from the file at the path (``existing``) to the requested seed: ``image`` (its bytes) and ``after``
    ((format, label, files)), or None for state=absent.  The views are those of ``seed_diff``."""
    path, before = existing.path, existing.seed
    if image is None:
        if not existing.exists:
            return Plan([], before, None)
        if existing.seed is None and not force:
            _refuse_not_seed(existing, 'remove')
        return Plan([Action('remove', 'remove %s' % path)], before, None)
    if existing.exists and existing.image == image:
        return Plan([], before, after)
    if existing.exists and existing.seed is None and not force:
        _refuse_not_seed(existing, 'replace')
    kind = 'replace' if existing.exists else 'write'
    return Plan([Action(kind, '%s %s seed %s' % (kind, fmt, path), image=image)], before, after)


def refuse_in_use(path):
    """Refuse to replace or remove the seed at ``path`` while another process holds it (a running guest's CD-ROM or
    disk, qemu-io, qemu-nbd): a test open for writing with QEMU's locks (docs/security.md rule 8), which writes
    nothing; the running domains holding it are named where libvirt can tell."""
    # imported here: only a task replacing or removing a seed needs them
    from ansible_collections.kvm.storage.plugins.module_utils._libvirt import holders_text
    from ansible_collections.kvm.storage.plugins.module_utils.diskimage._io import ImageFile
    from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
        ImageError, ImageInUseError, ReadOnlyImageError)
    try:
        try:
            ImageFile(path, writable=True).close()
        except ReadOnlyImageError:
            # a read-only file in a writable directory is still replaced by renaming: test for writers only
            ImageFile(path).close()
    except ImageInUseError as exc:
        raise CloudInitSeedError('%s%s; cloud_init_seed does not replace or remove a seed in use: shut the guest down '
                                 '(or let the other process finish) and run the task again'
                                 % (exc.reason, holders_text(path)))
    except ImageError:
        # not openable (gone meanwhile...): the rename or unlink itself reports what is wrong
        pass


def write_atomically(path, image, previous):
    """Write ``image`` under a temporary name in ``path``'s directory, flush it, rename it to ``path``; the new file
    keeps ``previous``'s (an os.stat_result or None) mode and, where allowed, owner."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix='.%s.' % os.path.basename(path), suffix='.tmp', dir=directory)
    try:
        with os.fdopen(handle, 'wb') as stream:
            stream.write(image)
            stream.flush()
            os.fsync(stream.fileno())
        if previous is not None:
            os.chmod(temporary, stat.S_IMODE(previous.st_mode))
            try:
                os.chown(temporary, previous.st_uid, previous.st_gid)
            except OSError:
                pass
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)
        os.rename(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


def run_cloud_init_seed(module):
    """Plan and (unless check mode) apply; returns the module's result."""
    params = module.params
    path = params['path']
    check_mode = module.check_mode
    fmt = params['format']
    warnings = []
    try:
        warnings.extend(check_file_attributes(params, check_mode))
    except FileAttributeError as exc:
        raise CloudInitSeedError(str(exc))
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise CloudInitSeedError('%s: the directory %s does not exist; create it first' % (path, directory))
    existing = Existing(path)
    result = dict(path=path, format=fmt)

    if params['state'] == 'absent':
        plan = plan_seed(existing, fmt, force=params['force'])
        result.update(plan.result(), label=None, files={})
        if plan.changed:
            refuse_in_use(path)
            if module._diff:
                result['diff'] = seed_diff(path, plan.before, plan.after)
            if not check_mode:
                os.unlink(path)
        return _finish(module, result, warnings)

    label = seed_label(params['label'], fmt)
    files = requested_files(params)
    try:
        image = build(fmt, label, files)
    except (_seed_iso9660.ISO9660Error, _seed_fat.FATError) as exc:
        raise CloudInitSeedError('%s: %s' % (path, exc))
    plan = plan_seed(existing, fmt, image, (fmt, label, files), params['force'])
    result.update(plan.result(), label=label, files=file_report(files))
    content_changed = plan.changed
    if content_changed:
        if existing.exists:
            refuse_in_use(path)
        if module._diff:
            result['diff'] = seed_diff(path, plan.before, plan.after)
        if not check_mode:
            write_atomically(path, image, existing.stat if existing.exists else None)
    if check_mode and not existing.exists:
        return _finish(module, result, warnings)
    unknown = unknown_in_check_mode(params, check_mode)
    file_args = module.load_file_common_arguments(params)
    file_args['path'] = path
    for option in unknown:
        file_args[option] = None
    try:
        if set_file_attributes(module, file_args, False):
            result['changed'] = True
            if not content_changed:
                result['actions'].append('set attributes of %s' % path)
    except FileAttributeError as exc:
        # with what the task had done: a seed written before the attributes failed is a change
        raise CloudInitSeedError(str(exc), **result)
    return _finish(module, result, warnings)


def _finish(module, result, warnings):
    for warning in warnings:
        module.warn(warning)
    return result
