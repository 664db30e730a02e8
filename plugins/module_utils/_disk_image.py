# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backend of the disk_image and disk_image_info modules.

Private to this collection (the leading underscore): no compatibility promise.

disk_image reads the actual state once (``read_state``), compares it with the
request (``plan_disk_image``, a pure function that returns the actions and the
diff views), and applies the plan only outside check mode (``apply_plan``).
The diff's ``before``/``after`` are the same normalised views the comparison
uses (``image_view``).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import binascii
import os
import shutil
import tempfile
import time

from ansible.module_utils.common.validation import check_mutually_exclusive, check_required_by, check_required_if

from ansible_collections.kvm.storage.plugins.module_utils._file_attributes import (
    FileAttributeError,
    check_file_attributes,
    set_file_attributes,
    unknown_in_check_mode,
)
from ansible_collections.kvm.storage.plugins.module_utils._plan import Action, Plan
from ansible_collections.kvm.storage.plugins.module_utils import diskimage
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.errors import (
    ImageError,
    ImageInUseError,
    InvalidOptionError,
    ReadOnlyImageError,
    UnsupportedFeature,
    UnsupportedOperation,
)
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats import driver_class
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.base import Driver
from ansible_collections.kvm.storage.plugins.module_utils.diskimage.policy import has_protocol, resolve_reference


# The image library's functions, each imported when first called: a task imports only the operations it
# runs (Ansible runs a module from a zip file and compiles every module it imports on every task).
_library = diskimage.deferred


image_amend = _library('amend')
ova_disks = _library('ova_disks')
image_check = _library('check')
image_commit = _library('commit')
image_compare_detail = _library('compare_detail')
image_convert = _library('convert')
convert_options = _library('ConvertOptions')
image_create = _library('create')
image_info = _library('info')
image_map = _library('map')
image_measure = _library('measure')
normalize_options = _library('normalize_options')
open_image = _library('open_image')
library_parse_size = _library('parse_size')
image_rebase = _library('rebase')
image_resize = _library('resize')
snapshot_apply = _library('snapshot_apply')
snapshot_compare = _library('snapshot_compare')
snapshot_create = _library('snapshot_create')
snapshot_delete = _library('snapshot_delete')

# qemu-img rounds every virtual size up to whole 512-byte sectors.
SECTOR_SIZE = 512


# Creation options that ``info()`` reports back, so that an existing image can be compared with them.
COMPARABLE_OPTIONS = ('cluster_size', 'compat', 'lazy_refcounts', 'refcount_bits', 'compression_type',
                      'extended_l2', 'data_file', 'data_file_raw')
# LUKS creation options that info() reports back (format-specific data, same names); iter-time applies at creation.
LUKS_COMPARABLE_OPTIONS = ('cipher-alg', 'cipher-mode', 'ivgen-alg', 'ivgen-hash-alg', 'hash-alg')
# Creation options compared per format (the others apply at creation only: the image does not record them, or
# records them where neither qemu-img info nor this module reads them back).  qcow2: COMPARABLE_OPTIONS;
# vmdk: subformat (the descriptor's createType); vdi: static; vpc, vhdx: subformat (fixed or dynamic);
# vhdx: block_size; qed: cluster_size.
FORMAT_COMPARABLE_OPTIONS = {
    'qcow2': COMPARABLE_OPTIONS,
    'vmdk': ('subformat',),
    'vdi': ('static',),
    'vpc': ('subformat',),
    'vhdx': ('subformat', 'block_size'),
    'qed': ('cluster_size',),
    'luks': LUKS_COMPARABLE_OPTIONS,
}
# Options an existing image can change in place (qemu-img amend) instead of being recreated.
AMENDABLE_OPTIONS = ('compat', 'lazy_refcounts', 'refcount_bits')
PREALLOCATION_MODES = ('off', 'metadata', 'falloc', 'full')
REPAIR_MODES = ('none', 'leaks', 'all')
_COMPAT_ALIASES = {'v2': '0.10', 'v3': '1.1', '0.10': '0.10', '1.1': '1.1'}


class DiskImageError(Exception):
    """A request the module refuses (as opposed to an ImageError from the library).  ``result``: what
    the task did before it failed (changed, actions, ...), returned with the failure."""

    def __init__(self, message, result=None):
        super(DiskImageError, self).__init__(message)
        self.result = result or {}


# --------------------------------------------------------------------------- argument specs
def policy_argument_spec(force_share=False):
    """Options of the path policy (doc fragment kvm.storage.image_policy)."""
    spec = dict(allow_dirs=dict(type='list', elements='path', default=[]))
    if force_share:
        spec['force_share'] = dict(type='bool', default=False)
    return spec


def disk_image_argument_spec():
    spec = dict(
        path=dict(type='path'),
        pool=dict(type='str'),
        volume=dict(type='str'),
        state=dict(type='str', default='present', choices=['present', 'absent']),
        format=dict(type='str'),
        size=dict(type='raw'),
        shrink=dict(type='bool', default=False),
        src=dict(type='path'),
        src_format=dict(type='str'),
        src_member=dict(type='raw'),
        src_snapshot=dict(type='str'),
        revert_to=dict(type='str'),
        backing_file=dict(type='str'),
        backing_format=dict(type='str'),
        options=dict(type='dict', default={}),
        compress=dict(type='bool', default=False),
        force=dict(type='bool', default=False),
        preallocation=dict(type='str', choices=list(PREALLOCATION_MODES)),
        snapshots=dict(type='list', elements='dict', options=dict(
            name=dict(type='str', required=True),
            state=dict(type='str', default='present', choices=['present', 'absent']),
        )),
        rebase=dict(type='str', choices=['safe', 'unsafe']),
        commit=dict(type='bool', default=False),
        repair=dict(type='str', default='none', choices=list(REPAIR_MODES)),
        encryption_passphrase=dict(type='str', no_log=True),
        src_passphrase=dict(type='str', no_log=True),
    )
    spec.update(policy_argument_spec())
    # the pool backend's connection option; _libvirt is imported here, not by disk_image_info
    from ansible_collections.kvm.storage.plugins.module_utils._libvirt import libvirt_argument_spec
    spec.update(libvirt_argument_spec())
    return spec


# Constraints between disk_image's options, declared with its argument spec: the module passes them to
# AnsibleModule, which checks them before the task runs, whatever the state.  A request built without AnsibleModule
# (DiskImageRequest, the volume API's VolumeRequest) checks the same declarations with Ansible's own checks.
DISK_IMAGE_OPTION_MUTUALLY_EXCLUSIVE = [('rebase', 'src'), ('revert_to', 'src')]
DISK_IMAGE_REQUIRED_IF = [('compress', True, ('src',))]
DISK_IMAGE_REQUIRED_BY = dict(
    src_format='src',
    src_member='src',
    src_snapshot='src',
    src_passphrase='src',
    backing_format='backing_file',
    rebase='backing_file',
)
# An image file (path) or a storage pool's volume (pool and volume, the _pool_volume backend).
DISK_IMAGE_MUTUALLY_EXCLUSIVE = [('path', 'pool'), ('path', 'volume')] + DISK_IMAGE_OPTION_MUTUALLY_EXCLUSIVE
DISK_IMAGE_REQUIRED_TOGETHER = [('pool', 'volume')]
DISK_IMAGE_REQUIRED_ONE_OF = [('path', 'pool')]


def check_option_constraints(params):
    """The checks AnsibleModule makes of the declared constraints (in its order and wording), for a request built
    without it: an option counts as given when its value is not None."""
    given = dict((name, value) for name, value in params.items() if value is not None)
    try:
        check_mutually_exclusive(DISK_IMAGE_OPTION_MUTUALLY_EXCLUSIVE, given)
        check_required_if(DISK_IMAGE_REQUIRED_IF, given)
        check_required_by(DISK_IMAGE_REQUIRED_BY, given)
    except TypeError as exc:
        raise DiskImageError(str(exc))


def disk_image_info_argument_spec():
    spec = dict(
        path=dict(type='raw', required=True),
        member=dict(type='raw'),
        backing_chain=dict(type='bool', default=False),
        check=dict(type='bool', default=False),
        map=dict(type='bool', default=False),
        measure=dict(type='dict', options=dict(
            out_format=dict(type='str', default='qcow2'),
            options=dict(type='dict', default={}),
        )),
        compare=dict(type='dict', options=dict(
            path=dict(type='path', required=True),
            format=dict(type='str'),
            member=dict(type='raw'),
            strict=dict(type='bool', default=False),
        )),
    )
    spec.update(policy_argument_spec(force_share=True))
    return spec


# --------------------------------------------------------------------------- value normalisation
def parse_size(value, what='size'):
    """Bytes from an int or a qemu-img size string (``10G``, ``1.5G``; suffixes are powers of 1024)."""
    if isinstance(value, float) and value == int(value):
        value = int(value)
    if isinstance(value, str) and value.strip().startswith(('+', '-')):
        # The library reads '+10G' as 10G (qemu-img create does too); a sign here would be lost, so it is refused.
        raise InvalidOptionError('%s %r: a relative size (with a sign) is not accepted here; give the size itself'
                                 % (what, value))
    return library_parse_size(value, what)


def relative_size(value):
    """The signed number of bytes of a relative size ('+10G', '-512M'), or None for an absolute one."""
    if not isinstance(value, str) or not value.strip().startswith(('+', '-')):
        return None
    text = value.strip()
    amount = parse_size(text[1:].lstrip(), 'size')
    return -amount if text.startswith('-') else amount


def align_size(size):
    """Virtual size as images record it: rounded up to whole sectors."""
    return -(-size // SECTOR_SIZE) * SECTOR_SIZE


def normalise_options(options):
    """The ``options`` dict with values typed as the library takes them and as ``info()`` reports them."""
    normalised = normalize_options(options)
    if 'compat' in normalised:
        normalised['compat'] = _COMPAT_ALIASES.get(normalised['compat'], normalised['compat'])
    return normalised


def option_spelling(value):
    """An option value as qemu-img spells it (on/off for booleans), for actions and messages."""
    if isinstance(value, bool):
        return 'on' if value else 'off'
    return str(value)


def comparable_options(fmt):
    """Names of the creation options compared with an existing image of format ``fmt``."""
    return FORMAT_COMPARABLE_OPTIONS.get(fmt, ())


def member_selector(value, what='src_member'):
    """A disk inside an OVA or Vagrant box: an int (index into its disk list) or a member name; None for none."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == '':
        raise DiskImageError('%s: expected a member name or an index, found %r' % (what, value))
    if isinstance(value, int) and value < 0:
        raise DiskImageError('%s: an index must not be negative, found %d' % (what, value))
    return value


def expected_virtual_size(fmt, size, options=None):
    """The virtual size an image of format ``fmt`` gets when created with ``size`` bytes: whole sectors, and
    for vpc (VHD) the next size its CHS geometry represents unless ``force_size`` is set, as qemu-img does."""
    if fmt == 'vpc':
        force_size = (options or {}).get('force_size', False)
        from ansible_collections.kvm.storage.plugins.module_utils.diskimage.formats.vpc import rounded_size
        return rounded_size(size, force_size in (True, 'on'))[0]
    return align_size(size)


def can_resize(fmt):
    """Whether images of format ``fmt`` can change their virtual size in place (qemu-img resize)."""
    try:
        cls = driver_class(fmt)
    except ImageError:
        return False
    return getattr(cls, 'resize', None) is not getattr(Driver, 'resize')


def read_layout_options(path, info_dict, allow_dirs=None, trusted_files=None):
    """Creation options recorded in the image that info() does not report: vdi ``static`` (image type),
    vpc ``subformat`` (disk type), vhdx ``subformat`` (fixed images leave their blocks allocated)."""
    fmt = info_dict.get('format')
    try:
        cls = driver_class(fmt)
    except ImageError:
        return {}
    if cls.creation_options is Driver.creation_options:
        return {}   # the format records none: no need to open the image again
    with open_image(path, fmt=fmt, allow_dirs=allow_dirs, force_share=True, trusted_files=trusted_files) as image:
        return image.driver.creation_options()


def image_options(info_dict, layout=None):
    """The comparable creation options an image reports, spelled as ``options`` spells them; ``layout``
    adds what read_layout_options read from the image."""
    fmt = info_dict.get('format')
    options = dict(layout or {})
    if fmt == 'vmdk':
        create_type = ((info_dict.get('format-specific') or {}).get('data') or {}).get('create-type')
        if create_type:
            options['subformat'] = create_type
        return options
    if fmt == 'vhdx' and info_dict.get('cluster-size') is not None:
        options['block_size'] = info_dict['cluster-size']
        return options
    if fmt == 'luks':
        specific = (info_dict.get('format-specific') or {}).get('data') or {}
        options.update((name, specific[name]) for name in LUKS_COMPARABLE_OPTIONS if specific.get(name) is not None)
        return options
    if fmt not in ('qcow2', 'qed'):
        return options
    if info_dict.get('cluster-size') is not None:
        options['cluster_size'] = info_dict['cluster-size']
    specific = (info_dict.get('format-specific') or {}).get('data') or {}
    for name in COMPARABLE_OPTIONS:
        key = name.replace('_', '-')
        if key in specific:
            options[name] = specific[key]
    if info_dict.get('format') == 'qcow2' and options.get('compat') == '0.10':
        # Version 2 images have no lazy refcounts, and qemu-img does not report the option for them.
        options.setdefault('lazy_refcounts', False)
    return options


def image_view(path, info_dict, layout=None):
    """The normalised view of an image used both for comparison and for the diff."""
    if info_dict is None:
        return {'path': path, 'state': 'absent'}
    return {
        'path': path,
        'state': 'present',
        'format': info_dict.get('format'),
        'virtual_size': info_dict.get('virtual-size'),
        'backing_file': info_dict.get('backing-filename'),
        'backing_format': info_dict.get('backing-filename-format'),
        'options': image_options(info_dict, layout),
        'snapshots': [snapshot.get('name') for snapshot in info_dict.get('snapshots') or []],
    }


def has_internal_snapshots(fmt):
    """Whether images of format ``fmt`` can hold internal snapshots (their driver implements them)."""
    try:
        cls = driver_class(fmt)
    except ImageError:
        return False
    return getattr(cls, 'snapshot_create', None) is not getattr(Driver, 'snapshot_create')


def _count(result, key):
    return int(result.get(key) or 0)


# --------------------------------------------------------------------------- request and plan
class DiskImageRequest(object):
    """What the task asks for, validated and normalised (sizes in bytes, options normalised)."""

    # The libvirt connection of the task (option uri): asked, besides qemu:///system, which running domain holds an
    # image found in use.
    uri = None

    def __init__(self, path, state='present', fmt=None, size=None, shrink=False, src=None, src_format=None,
                 backing_file=None, backing_format=None, options=None, compress=False, force=False, allow_dirs=None,
                 preallocation=None, snapshots=None, rebase=None, commit=False, repair=None, src_snapshot=None,
                 revert_to=None, src_member=None, encryption_passphrase=None, src_passphrase=None):
        self.path = path
        self.state = state
        self.format = fmt
        # A signed size ('+10G', '-1G') is relative to the virtual size of the existing image (qemu-img resize).
        self.size_delta = relative_size(size)
        self.size_text = size if self.size_delta is not None else None
        self.size = None if size is None or self.size_delta is not None else parse_size(size)
        self.shrink = shrink
        self.src = src
        self.src_format = src_format
        self.src_member = member_selector(src_member)
        self.backing_file = backing_file
        self.backing_format = backing_format
        self.options = normalise_options(options)
        self.compress = compress
        self.force = force
        self.allow_dirs = list(allow_dirs or []) or None
        self.preallocation = preallocation
        self.snapshots = self._normalise_snapshots(snapshots)
        self.rebase = rebase
        self.commit = bool(commit)
        self.repair = None if repair in (None, 'none') else repair
        self.src_snapshot = src_snapshot
        self.revert_to = revert_to
        # Passphrases are kept out of every view, action and message (the module marks them no_log too).
        self.encryption_passphrase = encryption_passphrase
        self.src_passphrase = src_passphrase
        self._validate()

    @staticmethod
    def _normalise_snapshots(snapshots):
        """[(name, state)] in the order given; a name listed twice must ask for the same state."""
        wanted = []
        states = {}
        for entry in snapshots or []:
            if isinstance(entry, str):
                entry = {'name': entry}
            if not isinstance(entry, dict) or not isinstance(entry.get('name'), str) or not entry['name']:
                raise DiskImageError('snapshots: each entry needs a non-empty name, found %r' % (entry,))
            name, state = entry['name'], entry.get('state') or 'present'
            if state not in ('present', 'absent'):
                raise DiskImageError('snapshots: state of %r must be present or absent, found %r' % (name, state))
            if name in states:
                if states[name] != state:
                    raise DiskImageError('snapshots: %r is listed both present and absent' % name)
                continue
            states[name] = state
            wanted.append((name, state))
        return wanted

    @property
    def trusted_files(self):
        """The files the task names (path, src, backing_file): the operator's word, accepted wherever they are
        when an image names them (diskimage.policy); a relative backing_file is resolved as the image resolves it."""
        names = [self.path, self.src]
        if self.backing_file and not has_protocol(self.backing_file):
            names.append(os.path.join(os.path.dirname(os.path.abspath(self.path)), self.backing_file))
        return [os.path.abspath(name) for name in names if name]

    @property
    def backing_name(self):
        """The backing file the image should have: None for none (backing_file '' with rebase) or unspecified."""
        return self.backing_file or None

    def expected_size(self, size):
        """The virtual size a new image of ``size`` bytes gets in the requested format."""
        return expected_virtual_size(self.format, size, self.options)

    @property
    def wants_no_backing(self):
        return self.backing_file == ''

    @classmethod
    def from_params(cls, params):
        names = ('path', 'state', 'size', 'shrink', 'src', 'src_format', 'backing_file', 'backing_format',
                 'options', 'compress', 'force', 'allow_dirs', 'preallocation', 'snapshots', 'rebase', 'commit',
                 'repair', 'src_snapshot', 'revert_to', 'src_member', 'encryption_passphrase', 'src_passphrase')
        request = cls(fmt=params.get('format'), **dict((name, params.get(name)) for name in names))
        request.uri = params.get('uri')
        return request

    def _validate(self):
        check_option_constraints(dict(
            src=self.src, src_format=self.src_format, src_member=self.src_member, src_snapshot=self.src_snapshot,
            src_passphrase=self.src_passphrase, backing_file=self.backing_file, backing_format=self.backing_format,
            rebase=self.rebase, revert_to=self.revert_to, compress=self.compress))
        if self.state != 'present':
            return
        # Not required_if: a volume of a pool managed through libvirt's volume API takes no format (it is raw).
        if not self.format:
            raise DiskImageError('format is required with state=present')
        if 'key-secret' in self.options:
            raise DiskImageError('options.key-secret: give the passphrase of the image in encryption_passphrase')
        # Not required_if: only a task that writes the image needs the passphrase (state=absent removes it).
        if self.format == 'luks' and self.encryption_passphrase is None:
            raise DiskImageError('%s is an encrypted LUKS image (format luks): its passphrase is required in '
                                 'encryption_passphrase' % self.path)
        if self.encryption_passphrase is not None and self.format != 'luks':
            raise DiskImageError('encryption_passphrase applies to luks images, format is %s (the passphrase of an '
                                 'encrypted src goes in src_passphrase)' % self.format)
        if self.encryption_passphrase == '':
            raise DiskImageError('encryption_passphrase must not be empty')
        if self.size_delta is not None and self.src:
            raise DiskImageError('size %s is a relative size, which resizes an existing image: with src give the '
                                 'virtual size of the converted image, or leave size unset' % self.size_text)
        if self.size_delta is not None and self.revert_to is not None:
            raise DiskImageError('size %s is a relative size: it cannot be combined with revert_to (give the '
                                 'virtual size the image should have after the revert)' % self.size_text)
        if self.backing_file == '' and not self.rebase:
            raise DiskImageError('backing_file must not be empty (an empty backing_file removes the backing file '
                                 'of an existing image only with rebase)')
        # Not required_by: an empty backing_file counts as given there.
        if self.backing_file == '' and self.backing_format:
            raise DiskImageError('backing_format requires a backing file (backing_file is empty)')
        # Not mutually_exclusive: it counts commit=false given with src too (commit is a bool).
        if self.commit and self.src:
            raise DiskImageError('commit applies to an existing overlay: it cannot be combined with src')
        if self.preallocation is not None:
            if self.preallocation not in PREALLOCATION_MODES:
                raise DiskImageError('preallocation must be one of %s, found %r'
                                     % (', '.join(PREALLOCATION_MODES), self.preallocation))
            if self.options.get('preallocation', self.preallocation) != self.preallocation:
                raise DiskImageError('preallocation is %r but options.preallocation is %r'
                                     % (self.preallocation, self.options['preallocation']))
            if self.preallocation != 'off' or 'preallocation' in self.options:
                self.options['preallocation'] = self.preallocation
        elif isinstance(self.options.get('preallocation'), str):
            self.preallocation = self.options['preallocation']
        if self.repair not in (None, 'leaks', 'all'):
            raise DiskImageError('repair must be one of none, leaks, all, found %r' % (self.repair,))
        if self.snapshots and not has_internal_snapshots(self.format):
            raise DiskImageError('snapshots: %s images have no internal snapshots' % self.format)
        if self.revert_to is not None:
            if not self.revert_to:
                raise DiskImageError('revert_to must name a snapshot')
            if not has_internal_snapshots(self.format):
                raise DiskImageError('revert_to: %s images have no internal snapshots' % self.format)
            if (self.revert_to, 'absent') in self.snapshots:
                raise DiskImageError('revert_to: snapshot %r is also listed absent in snapshots' % self.revert_to)
        for name in ('backing_file', 'backing_fmt'):
            if name in self.options:
                raise DiskImageError('options.%s: use the backing_file and backing_format options' % name)
        if self.src and os.path.abspath(self.src) == os.path.abspath(self.path):
            raise DiskImageError('src and path are the same file: %s' % self.path)


def replaces_file(plan):
    """Whether the plan writes a new file at path (so its attributes are not predictable in check mode)."""
    return any(action.kind in ('create', 'convert') for action in plan.actions)


def _same_size(a, b):
    return a is not None and b is not None and align_size(a) == align_size(b)


def _size_matches(request, current, size):
    """Whether an image of ``current`` bytes is what creating one of ``size`` bytes gives in the requested
    format (a vpc image of ``size`` is rounded up to its CHS geometry)."""
    return _same_size(current, size) or (current is not None and size is not None
                                         and current == request.expected_size(size))


def _image_differences(request, before, src_info):
    """Differences between the image and the request: list of (field, actual, requested)."""
    differences = []
    if before['format'] != request.format:
        differences.append(('format', before['format'], request.format))
    if request.backing_file is not None:
        if before['backing_file'] != request.backing_name:
            differences.append(('backing_file', before['backing_file'], request.backing_name))
        if before['backing_format'] != request.backing_format:
            differences.append(('backing_format', before['backing_format'], request.backing_format))
    if before['format'] == request.format:
        compared = comparable_options(request.format)
        for name in sorted(request.options):
            if name in compared and name in before['options'] and before['options'][name] != request.options[name]:
                differences.append(('options.%s' % name, before['options'][name], request.options[name]))
    if (src_info is not None and request.size is None
            and not _size_matches(request, before['virtual_size'], src_info['virtual-size'])):
        differences.append(('virtual_size', before['virtual_size'], request.expected_size(src_info['virtual-size'])))
    return differences


def _resolvable_in_place(request, difference):
    """Whether a difference is resolved without recreating: by a rebase or by amending an option."""
    field = difference[0]
    if field in ('backing_file', 'backing_format'):
        return request.rebase is not None
    return field.startswith('options.') and field[len('options.'):] in AMENDABLE_OPTIONS


def _describe_differences(differences):
    def spelled(value):
        return option_spelling(value) if isinstance(value, bool) else repr(value)
    return ', '.join('%s is %s, requested %s' % (field, spelled(actual), spelled(requested))
                     for field, actual, requested in differences)


def _plan_repair(request, facts, before, after):
    """The repair action (or None) from the check result read before planning."""
    check_result = facts.get('check')
    if request.repair is None or check_result is None:
        return None
    leaks, corruptions = _count(check_result, 'leaks'), _count(check_result, 'corruptions')
    before['consistency'] = {'leaks': leaks, 'corruptions': corruptions}
    if corruptions and request.repair != 'all':
        raise DiskImageError('%s has %d corruptions, which repair=leaks does not fix; set repair=all to rebuild '
                             'its metadata' % (request.path, corruptions))
    after['consistency'] = {'leaks': 0, 'corruptions': 0}
    if not leaks and not corruptions:
        return None
    found = []
    if leaks:
        found.append('%d leaked clusters' % leaks)
    if corruptions:
        found.append('%d corruptions' % corruptions)
    return Action('repair', 'repair %s of %s image %s' % (' and '.join(found), before['format'], request.path),
                  mode=request.repair)


def _plan_snapshots(request, names_before, after):
    """Delete the snapshots that must be absent (every one of that name), then create the missing ones."""
    actions = []
    names = list(names_before)
    for name, state in request.snapshots:
        if state == 'absent':
            actions.extend(Action('snapshot_delete', 'delete snapshot %r of %s' % (name, request.path), name=name)
                           for existing in names if existing == name)
            names = [existing for existing in names if existing != name]
    for name, state in request.snapshots:
        if state == 'present' and name not in names:
            actions.append(Action('snapshot_create', 'create snapshot %r of %s' % (name, request.path), name=name))
            names.append(name)
    after['snapshots'] = names
    return actions


def plan_disk_image(request, current_info, src_info=None, backing_info=None, facts=None):
    """Compare the actual image (``current_info``: info dict or None when there is no file) with the request.

    ``src_info`` is the info of ``request.src``, ``backing_info`` that of the requested backing file
    (``request.backing_format`` already filled in); ``facts`` what else read_state read for the request
    (``check``: the check result when repair is requested, ``uncommitted``: bytes the top layer holds when
    commit is requested, ``revert``: snapshot_compare's result when revert_to is requested).  Returns a Plan;
    raises DiskImageError when the request cannot be met without a flag the task did not set (force, shrink,
    rebase, repair=all).
    """
    facts = facts or {}
    before = image_view(request.path, current_info, facts.get('layout'))
    if request.state == 'absent':
        if current_info is None:
            return Plan([], before, dict(before))
        extents = extent_files(request.path, current_info)
        action = Action('remove', 'remove %s image %s%s' % (
            before['format'] or 'unreadable', request.path,
            ' and its extent files %s' % ', '.join(extents) if extents else ''), extents=extents)
        return Plan([action], before, {'path': request.path, 'state': 'absent'})

    differences = []
    recreate = current_info is None
    in_place = []
    if current_info is not None:
        differences = _image_differences(request, before, src_info)
        blocking = [difference for difference in differences if not _resolvable_in_place(request, difference)]
        if blocking and not request.force:
            raise DiskImageError('%s exists and differs from the request (%s); set force=true to recreate it, '
                                 'which discards its content%s' % (
                                     request.path, _describe_differences(blocking),
                                     '' if request.rebase or not any(d[0].startswith('backing') for d in blocking)
                                     else ', or rebase=safe to change its backing file and keep its content'))
        recreate = bool(blocking)
        if not recreate:
            in_place = differences

    actions = []
    after = None
    if not recreate:
        after = dict(before, options=dict(before['options']), snapshots=list(before['snapshots']))
        repair = _plan_repair(request, facts, before, after)
        if repair is not None:
            actions.append(repair)

    if request.revert_to is not None and recreate:
        raise DiskImageError('revert_to: %s %s, so it has no snapshot %r to revert to' % (
            request.path, 'does not exist' if current_info is None else 'is recreated', request.revert_to))
    replacing = '' if current_info is None else ', replacing the existing %s image' % before['format']
    # Extent files of the image replaced (multi-file vmdk), removed unless the new image takes them over.
    old_extents = dict(old_extents=extent_files(request.path, current_info)) if current_info else {}
    if not old_extents.get('old_extents'):
        old_extents = {}
    if recreate and request.size_delta is not None:
        raise DiskImageError('size %s is a relative size: it resizes an existing image, and %s %s; give the '
                             'virtual size of the new image (for example %s)' % (
                                 request.size_text, request.path,
                                 'does not exist' if current_info is None else 'is recreated (force)',
                                 request.size_text.strip().lstrip('+-')))
    if recreate:
        after = {'path': request.path, 'state': 'present', 'format': request.format,
                 'backing_file': request.backing_name, 'backing_format': request.backing_format,
                 'options': facts.get('created_options') or dict(
                     (name, value) for name, value in request.options.items()
                     if name in comparable_options(request.format)),
                 'snapshots': []}
        if request.src is not None:
            actions.append(Action(
                'convert', 'convert %s%s (%s)%s to %s image %s%s%s' % (
                    request.src, '' if request.src_member is None else ' member %r' % (request.src_member,),
                    src_info['format'],
                    '' if request.src_snapshot is None else ' snapshot %r' % request.src_snapshot,
                    request.format, request.path,
                    ' compressed' if request.compress else '', replacing),
                src=request.src, src_format=src_info['format'], **old_extents))
            current_size = src_info['virtual-size']
        else:
            size = request.size
            if size is None and request.backing_name is None and current_info is not None:
                size = before['virtual_size']
            if size is None and request.backing_name is None:
                raise DiskImageError('size is required to create %s (or give backing_file or src)' % request.path)
            created_size = size if size is not None else backing_info['virtual-size']
            actions.append(Action(
                'create', 'create %s image %s of %d bytes%s%s%s' % (
                    request.format, request.path, request.expected_size(created_size),
                    '' if request.backing_name is None else ' backed by %s (%s)' % (request.backing_name,
                                                                                    request.backing_format),
                    '' if request.preallocation in (None, 'off') else ' with preallocation=%s' % request.preallocation,
                    replacing),
                size=size, **old_extents))
            current_size = created_size
        current_size = request.expected_size(current_size)
        after['virtual_size'] = current_size
    else:
        current_size = before['virtual_size']
        revert = facts.get('revert')
        if request.revert_to is not None and revert is not None:
            if request.size is None:
                matches = revert['identical']
            else:
                # Reverted and then resized to size: the snapshot's content up to size, zeroes past its end.
                matches = (_same_size(current_size, request.size) and revert['identical-prefix']
                           and revert['zero-beyond'])
            before['content_matches_snapshot'] = matches
            after['content_matches_snapshot'] = True
            if not matches:
                actions.append(Action('revert', 'revert %s to snapshot %r%s' % (
                    request.path, request.revert_to,
                    '' if revert['snapshot-size'] == current_size else
                    ' (virtual size %d to %d bytes)' % (current_size, revert['snapshot-size'])),
                    name=request.revert_to))
                current_size = after['virtual_size'] = revert['snapshot-size']
        if request.commit:
            uncommitted = facts.get('uncommitted')
            if uncommitted is None:
                raise DiskImageError('commit: %s has no backing file to commit into' % request.path)
            before['uncommitted_bytes'] = uncommitted
            after['uncommitted_bytes'] = 0
            if uncommitted:
                actions.append(Action('commit', 'commit %d bytes of %s into its backing file %s' % (
                    uncommitted, request.path, before['backing_file']), backing_file=before['backing_file']))
        amended = dict((difference[0][len('options.'):], difference[2]) for difference in in_place
                       if difference[0].startswith('options.'))
        if amended:
            changes = ', '.join('%s %s -> %s' % (name, option_spelling(before['options'][name]), option_spelling(value))
                                for name, value in sorted(amended.items()))
            actions.append(Action('amend', 'amend options of %s image %s: %s' % (before['format'], request.path, changes),
                                  options=amended))
            after['options'].update(amended)
        if any(difference[0].startswith('backing') for difference in in_place):
            if request.wants_no_backing:
                description = 'remove the backing file %s of %s%s' % (
                    before['backing_file'], request.path,
                    ' (unsafe: its data is not copied into the image)' if request.rebase == 'unsafe'
                    else ', copying its data into the image')
            else:
                description = '%srebase %s from %s onto %s (%s)' % (
                    'unsafe ' if request.rebase == 'unsafe' else '', request.path, before['backing_file'],
                    request.backing_name, request.backing_format)
            actions.append(Action('rebase', description, backing_file=request.backing_name,
                                  backing_format=request.backing_format, unsafe=request.rebase == 'unsafe'))
            after['backing_file'] = request.backing_name
            after['backing_format'] = request.backing_format

    requested_size = request.size
    if request.size_delta is not None:
        requested_size = current_size + request.size_delta
        if requested_size <= 0:
            # qemu-img resize refuses it the same way.
            raise DiskImageError('size %s: %s has a virtual size of %d bytes; the new size must be positive, '
                                 'found %d' % (request.size_text, request.path, current_size, requested_size))
    if requested_size is not None and not _size_matches(request, current_size, requested_size):
        new_size = align_size(requested_size)
        if not can_resize(request.format):
            # Refused before anything is written, in check mode too (qemu-img resize refuses these formats).
            raise DiskImageError('%s images cannot be resized (qemu-img cannot resize them either): %s %s %d bytes, '
                                 'size requests %d; %s' % (
                                     request.format, request.path,
                                     'would be converted with a virtual size of' if recreate else
                                     'has a virtual size of', current_size, new_size,
                                     'leave size unset to keep the size of src' if recreate else
                                     'convert it to a format that can be resized (raw, qcow2, qed)'))
        if new_size < current_size and not request.shrink:
            raise DiskImageError('refusing to shrink %s from %d to %d bytes, which discards data at its end; '
                                 'set shrink=true to allow it' % (request.path, current_size, new_size))
        growing = new_size > current_size
        if growing and request.preallocation in ('falloc', 'full') and facts.get('free_space') is not None \
                and new_size - current_size > facts['free_space']:
            # Known before anything is written, in check mode too (a failed grow would be taken back anyway).
            raise DiskImageError('no space left on the file system holding %s to grow it from %d to %d bytes with '
                                 'preallocation=%s: that needs at least %d bytes, %d are free; nothing was changed'
                                 % (request.path, current_size, new_size, request.preallocation,
                                    new_size - current_size, facts['free_space']))
        actions.append(Action('resize', '%s %s image %s from %d to %d bytes%s%s' % (
            'grow' if growing else 'shrink', request.format, request.path, current_size, new_size,
            ' with preallocation=%s' % request.preallocation
            if growing and request.preallocation not in (None, 'off') else '',
            '' if request.size_delta is None else ' (size %s)' % request.size_text),
            size=new_size, shrink=new_size < current_size,
            preallocation=request.preallocation if growing else None))
        after['virtual_size'] = new_size
    actions.extend(_plan_snapshots(request, after['snapshots'], after))
    return Plan(actions, before, after, differences)


# --------------------------------------------------------------------------- reading and applying
def free_space(path):
    """Bytes this process may still allocate on the file system holding ``path`` (root may use the blocks
    reserved for it); None when unknown."""
    try:
        stats = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return None
    return (stats.f_bfree if os.geteuid() == 0 else stats.f_bavail) * stats.f_frsize


def read_state(request):
    """Read once what the plan needs: (current_info, src_info, backing_info, facts); fills request.backing_format.

    ``facts`` holds what only some requests need: ``check`` (repair requested: the check result, None for a
    format without checks), ``uncommitted`` (commit requested: bytes the image's own layer holds, None
    when it has no backing file), ``revert`` (revert_to requested: how the disk compares with the snapshot) and
    ``free_space`` (preallocation falloc or full: bytes free on the file system, None when unknown).
    """
    current_info = None
    if os.path.lexists(request.path):
        if not os.path.isfile(request.path):
            raise DiskImageError('%s exists and is not a regular file' % request.path)
        try:
            current_info = image_info(request.path, allow_dirs=request.allow_dirs, trusted_files=request.trusted_files)
            if request.state == 'present' and request.format == 'vpc' and current_info.get('format') == 'raw':
                # A fixed VHD is probed as raw (its footer is at the end, as qemu-img probes it too): read it as
                # the vpc image the task names when it is one.
                current_info = _info_as_vpc(request, current_info)
        except ImageInUseError:
            raise
        except ImageError:
            if request.state == 'present':
                raise
            # An image that cannot be read (corrupt, missing backing file) can still be removed.
            current_info = {'filename': request.path}
    if request.state != 'present':
        return current_info, None, None, {}
    if current_info is None and not os.path.isdir(os.path.dirname(os.path.abspath(request.path))):
        # Refused in check mode too, as the real run would be.
        raise DiskImageError('cannot create %s: directory %s does not exist'
                             % (request.path, os.path.dirname(os.path.abspath(request.path))))
    src_info = None
    if request.src is not None:
        src_info = image_info(request.src, fmt=request.src_format, allow_dirs=request.allow_dirs,
                              trusted_files=request.trusted_files,
                              **_member_argument('member', request.src_member))
        if request.src_snapshot is not None:
            # Refused in check mode too: the snapshot must exist (looked up by name, else by ID, as convert does).
            listed = src_info.get('snapshots') or []
            if not any(request.src_snapshot in (snapshot.get('name'), snapshot.get('id')) for snapshot in listed):
                raise DiskImageError('src_snapshot: %s has no snapshot named %r (snapshots: %s)' % (
                    request.src, request.src_snapshot,
                    ', '.join(repr(snapshot.get('name')) for snapshot in listed) or 'none'))
            # The snapshot must be readable; the conversion keeps the current virtual size (qemu-img convert -l).
            with open_image(request.src, fmt=src_info['format'], allow_dirs=request.allow_dirs,
                            trusted_files=request.trusted_files,
                            **dict(_member_argument('member', request.src_member),
                                   **_secret_argument(request.src_passphrase))) as source:
                source.driver.select_snapshot(request.src_snapshot)
                src_info = dict(src_info, **{'virtual-size': source.driver.virtual_size})
        check_src_passphrase(request, src_info)
    backing_info = None
    if request.backing_name is not None:
        # Resolved exactly as the image will resolve it: the policy decides before anything is opened.
        backing_path = resolve_reference(os.path.abspath(request.path), request.backing_file,
                                         allow_dirs=request.allow_dirs,
                                         trusted_files=request.trusted_files, kind='backing file')
        backing_info = image_info(backing_path, fmt=request.backing_format, allow_dirs=request.allow_dirs,
                                  trusted_files=request.trusted_files)
        if request.backing_format is None:
            # Never leave the backing format to be probed later: record the detected one (docs/security.md rule 2).
            request.backing_format = backing_info['format']
    facts = {}
    if current_info is not None and current_info.get('format') == request.format:
        if is_encrypted(current_info):
            # The image is kept: the passphrase the task gives must be its own.
            verify_passphrase(request.path, request.format, request.encryption_passphrase, 'encryption_passphrase',
                              request.allow_dirs, trusted_files=request.trusted_files)
        facts['layout'] = read_layout_options(request.path, current_info, request.allow_dirs, request.trusted_files)
        if request.repair is not None:
            try:
                facts['check'] = image_check(request.path, fmt=request.format, allow_dirs=request.allow_dirs,
                                             trusted_files=request.trusted_files)
            except (UnsupportedOperation, UnsupportedFeature):
                facts['check'] = None
        if request.commit:
            facts['uncommitted'] = uncommitted_bytes(request.path, current_info, request.allow_dirs,
                                                     request.trusted_files)
        if request.revert_to is not None:
            facts['revert'] = snapshot_compare(request.path, request.revert_to, fmt=request.format,
                                               allow_dirs=request.allow_dirs, trusted_files=request.trusted_files)
        if request.preallocation in ('falloc', 'full'):
            facts['free_space'] = free_space(request.path)
    if current_info is not None and request.force:
        # A recreation's diff shows the options the new image reports, its defaults included, as the image's do.
        facts['created_options'] = created_image_options(request, request.size or (src_info or {}).get(
            'virtual-size') or (backing_info or {}).get('virtual-size') or current_info.get('virtual-size'))
    return current_info, src_info, backing_info, facts


# Options left out of the scratch image (they allocate space, or name other files); the request's value is shown.
_SCRATCH_SKIPPED_OPTIONS = ('preallocation', 'subformat', 'static', 'data_file', 'data_file_raw', 'key-secret')


def created_image_options(request, virtual_size):
    """The options (image_options) a new image made for ``request`` reports, its defaults included: read from a
    sparse scratch image created the same way in a private temporary directory.  None when it cannot be made."""
    options = dict((name, value) for name, value in request.options.items() if name not in _SCRATCH_SKIPPED_OPTIONS)
    if request.format == 'luks':
        # The key derivation's cost changes no reported option.
        options.update({'iter-time': 1, 'key-secret': 'scratch'})
    scratch_dir = tempfile.mkdtemp(prefix='kvmstorage-scratch-')
    try:
        scratch = os.path.join(scratch_dir, 'image')
        image_create(scratch, request.format, size=virtual_size or SECTOR_SIZE, options=options or None)
        scratch_info = image_info(scratch)
        predicted = image_options(scratch_info, read_layout_options(scratch, scratch_info))
    except (ImageError, OSError, ValueError):
        return None
    finally:
        shutil.rmtree(scratch_dir, ignore_errors=True)
    predicted.update((name, value) for name, value in request.options.items()
                     if name in comparable_options(request.format))
    return predicted


def _info_as_vpc(request, probed_info):
    """info() of ``request.path`` read as vpc when it is a VHD, else ``probed_info`` (its probed raw info)."""
    try:
        return image_info(request.path, fmt='vpc', allow_dirs=request.allow_dirs, trusted_files=request.trusted_files)
    except ImageInUseError:
        raise
    except ImageError:
        return probed_info


def _member_argument(name, member):
    """The member keyword for the library, only when a member is selected."""
    return {} if member is None else {name: member}


def uncommitted_bytes(path, current_info, allow_dirs=None, trusted_files=None):
    """Bytes of the guest view the image's own layer holds (data or zeroes: what a commit writes into the
    backing file), from its allocation map; None when the image has no backing file."""
    if not current_info.get('backing-filename'):
        return None
    return sum(entry['length'] for entry in image_map(path, fmt=current_info['format'], allow_dirs=allow_dirs,
                                                      trusted_files=trusted_files)
               if entry.get('depth') == 0 and entry.get('present'))


def _creation_options(request):
    """The library's creation options of a new image: ``options`` plus the passphrase of a LUKS image (the
    library's ``key-secret`` option carries the passphrase itself)."""
    options = dict(request.options)
    if request.encryption_passphrase is not None:
        options['key-secret'] = request.encryption_passphrase
    return options


def _backing_options(request):
    options = _creation_options(request)
    if request.backing_name is not None:
        options['backing_file'] = request.backing_name
        options['backing_fmt'] = request.backing_format
    return options


def _secret_argument(secret):
    """The library's key_secret keyword, only when a passphrase is given."""
    return {} if secret is None else {'key_secret': secret}


def is_encrypted(info_dict):
    """Whether an image (its info dict) is encrypted: its data cannot be read without a passphrase."""
    return bool(info_dict) and (info_dict.get('format') == 'luks' or bool(info_dict.get('encrypted')))


def verify_passphrase(path, fmt, passphrase, option, allow_dirs=None, member=None, trusted_files=None):
    """Unlock an encrypted image with ``passphrase`` (read-only), so that a wrong passphrase fails before anything
    is written, in check mode too; the error names ``option``, never the passphrase."""
    try:
        with open_image(path, fmt=fmt, allow_dirs=allow_dirs, key_secret=passphrase, trusted_files=trusted_files,
                        **_member_argument('member', member)):
            pass
    except (ImageInUseError, UnsupportedFeature):
        # In use by a guest, or the 'cryptography' package missing: the library's message says it.
        raise
    except ImageError as exc:
        raise DiskImageError('cannot unlock %s with %s: %s' % (path, option, exc))


def check_src_passphrase(request, src_info):
    """An encrypted ``src`` needs ``src_passphrase``, and it must unlock the image (checked before any write)."""
    if not is_encrypted(src_info):
        return
    if request.src_passphrase is None:
        raise DiskImageError('src %s is an encrypted %s image: its passphrase is required in src_passphrase'
                             % (request.src, src_info['format']))
    verify_passphrase(request.src, src_info['format'], request.src_passphrase, 'src_passphrase',
                      request.allow_dirs, request.src_member, request.trusted_files)


# vmdk subformats that keep the data in extent files beside the descriptor.
MULTI_FILE_VMDK = ('monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat')


def extent_files(path, info_dict):
    """The files besides ``path`` holding the image's data (extents of a multi-file vmdk), only those in the
    directory of ``path``: a descriptor never makes the module delete files elsewhere."""
    if not info_dict or info_dict.get('format') != 'vmdk':
        return []
    directory = os.path.dirname(os.path.abspath(path))
    files = []
    for extent in ((info_dict.get('format-specific') or {}).get('data') or {}).get('extents') or []:
        name = extent.get('filename') if isinstance(extent, dict) else None
        if not isinstance(name, str):
            continue
        name = os.path.abspath(name)
        if (name != os.path.abspath(path) and os.path.dirname(name) == directory and name not in files
                and os.path.isfile(name)):
            files.append(name)
    return files


def _multi_file_target(request):
    return request.format == 'vmdk' and request.options.get('subformat') in MULTI_FILE_VMDK


def _build_replacement_files(request, action):
    """Build a multi-file image in a hidden directory beside ``path`` (its extent files get the names they will
    have), then move its files into place, the descriptor last.  Returns (statistics, paths moved)."""
    directory = os.path.dirname(os.path.abspath(request.path))
    staging = staging_path(request.path)
    os.mkdir(staging, 0o700)
    moved = []
    try:
        main = os.path.join(staging, os.path.basename(request.path))
        stats = _build(request, action, main)
        for name in sorted(os.listdir(staging)):
            if name != os.path.basename(request.path):
                os.rename(os.path.join(staging, name), os.path.join(directory, name))
                moved.append(os.path.join(directory, name))
        os.rename(main, os.path.abspath(request.path))
        moved.append(os.path.abspath(request.path))
    except Exception as exc:  # pylint: disable=broad-except
        if not moved:
            raise
        # Extent files already moved into place (over the old image's extents of the same names) stay: say so.
        error = DiskImageError('%s; the files moved into place before the failure stay: %s' % (exc, ', '.join(moved)))
        error.image_changed = True
        raise error
    finally:
        for name in os.listdir(staging):
            os.unlink(os.path.join(staging, name))
        os.rmdir(staging)
    return stats, moved


def hold_for_replacement(path):
    """The image at ``path`` opened for writing with QEMU's locks (docs/security.md rule 8) and nothing written, to
    be closed once its replacement took its place: meanwhile another task, qemu-img or a guest starting finds it in
    use, as it would an image changed in place, and a holder that came after the plan was made refuses the
    replacement (ImageInUseError).  A file this process may not open for writing is held for reading (other writers
    still conflict)."""
    from ansible_collections.kvm.storage.plugins.module_utils.diskimage._io import ImageFile
    try:
        return ImageFile(path, writable=True)
    except ReadOnlyImageError:
        return ImageFile(path)


def staging_path(path):
    """A hidden name beside ``path`` for a replacement image: the library never overwrites, so a replacement
    is built there (itself under the library's temporary name) and renamed over ``path`` in one step."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, '.%s.%s.replacement' % (name, binascii.hexlify(os.urandom(3)).decode('ascii')))


def _build(request, action, target):
    """Create or convert into ``target``; returns the conversion statistics ({} for a creation)."""
    if action.kind == 'create':
        image_create(target, request.format, size=action.args['size'], backing_file=request.backing_name,
                     backing_fmt=request.backing_format, options=_creation_options(request) or None,
                     allow_dirs=request.allow_dirs, trusted_files=request.trusted_files)
        return {}
    started = time.time()
    settings = convert_options(src_fmt=action.args['src_format'], create_options=_backing_options(request) or None,
                               compress=request.compress, allow_dirs=request.allow_dirs,
                               trusted_files=request.trusted_files, snapshot=request.src_snapshot,
                               src_member=request.src_member, key_secret=request.src_passphrase)
    outcome = image_convert(request.src, target, request.format, settings)
    stats = {'duration': round(time.time() - started, 3), 'bytes_written': os.stat(target).st_blocks * 512}
    if isinstance(outcome, dict):
        stats.update((key, outcome[key]) for key in ('bytes_read', 'bytes_written', 'compressed_clusters') if key in outcome)
        if isinstance(outcome.get('duration'), (int, float)):
            stats['duration'] = round(outcome['duration'], 3)
    return stats


def _allocated(path):
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


def _run_in_place(action, request):
    """One action on the existing image; returns what the library returned (a dict or None)."""
    kind, args = action.kind, action.args
    if kind == 'resize':
        extra = _secret_argument(request.encryption_passphrase)
        if args.get('preallocation') not in (None, 'off'):
            extra['preallocation'] = args['preallocation']
        return image_resize(request.path, args['size'], fmt=request.format, shrink=args['shrink'],
                            allow_dirs=request.allow_dirs, trusted_files=request.trusted_files, **extra)
    if kind == 'repair':
        return image_check(request.path, fmt=request.format, repair=args['mode'], allow_dirs=request.allow_dirs,
                           trusted_files=request.trusted_files)
    if kind == 'revert':
        return snapshot_apply(request.path, args['name'], fmt=request.format, allow_dirs=request.allow_dirs,
                              trusted_files=request.trusted_files)
    if kind == 'snapshot_create':
        return snapshot_create(request.path, args['name'], fmt=request.format, allow_dirs=request.allow_dirs,
                               trusted_files=request.trusted_files)
    if kind == 'snapshot_delete':
        return snapshot_delete(request.path, args['name'], fmt=request.format, allow_dirs=request.allow_dirs,
                               trusted_files=request.trusted_files)
    if kind == 'commit':
        return image_commit(request.path, fmt=request.format, allow_dirs=request.allow_dirs,
                            trusted_files=request.trusted_files)
    if kind == 'rebase':
        return image_rebase(request.path, args['backing_file'], backing_fmt=args['backing_format'],
                            unsafe=args['unsafe'], fmt=request.format, allow_dirs=request.allow_dirs,
                            trusted_files=request.trusted_files)
    if kind == 'amend':
        return image_amend(request.path, args['options'], fmt=request.format, allow_dirs=request.allow_dirs,
                           trusted_files=request.trusted_files)
    raise DiskImageError('internal error: unknown action %r' % kind)


def apply_plan(plan, request, done=None):
    """Carry out the plan.  Returns the run's statistics: ``duration`` (seconds) and ``bytes_written`` in
    total, ``conversion`` (statistics of a conversion), ``repair`` (the check result after a repair) and
    ``operations`` (one entry per action: kind, duration, bytes_written).  ``done`` (a list) receives each
    action once it is carried out, so that a caller knows what a later failure leaves done."""
    outcome = {'operations': []}
    for action in plan.actions:
        started = time.time()
        allocated_before = _allocated(request.path)
        written = None
        if action.kind == 'remove':
            os.unlink(request.path)
            left = [name for name in action.args.get('extents') or [] if os.path.isfile(name)]
            try:
                while left:
                    os.unlink(left[0])
                    del left[0]
            except OSError as exc:
                # The image is gone already (its descriptor): what stays is said, and the task changed something.
                error = DiskImageError('%s: removed, but not its extent files %s: %s'
                                       % (request.path, ', '.join(left), exc.strerror or exc))
                error.image_changed = True
                raise error
            written = 0
        elif action.kind in ('create', 'convert'):
            replaced_extents = action.args.get('old_extents') or []
            moved = []
            if not os.path.lexists(request.path):
                stats = _build(request, action, request.path)
            elif _multi_file_target(request):
                stats, moved = _build_replacement_files(request, action)
            else:
                staging = staging_path(request.path)
                held = hold_for_replacement(request.path)
                try:
                    stats = _build(request, action, staging)
                    os.rename(staging, request.path)
                finally:
                    held.close()
                    if os.path.lexists(staging):
                        os.unlink(staging)
            # The extent files of the replaced image that the new one did not take over.
            left = [name for name in replaced_extents if name not in moved and os.path.isfile(name)]
            try:
                while left:
                    os.unlink(left[0])
                    del left[0]
            except OSError as exc:
                error = DiskImageError('%s: replaced by the new image, but the extent files %s of the old one could not be '
                                       'removed: %s' % (request.path, ', '.join(left), exc.strerror or exc))
                error.image_changed = True
                raise error
            if stats:
                outcome['conversion'] = stats
                written = stats.get('bytes_written')
            else:
                written = _allocated(request.path)
        else:
            result = _run_in_place(action, request)
            if action.kind == 'repair' and isinstance(result, dict):
                outcome['repair'] = result
                if _count(result, 'corruptions') or _count(result, 'check-errors'):
                    # qemu-img check -r exits 2 here: nothing more is done on a still damaged image
                    outcome['unrepaired'] = action
            elif isinstance(result, dict) and isinstance(result.get('bytes_written'), int):
                written = result['bytes_written']
        if written is None:
            # Operations that do not count their writes: what the image file grew by.
            written = max(0, _allocated(request.path) - allocated_before)
        outcome['operations'].append({'kind': action.kind, 'duration': round(time.time() - started, 3),
                                      'bytes_written': written})
        if done is not None:
            done.append(action)
        if 'unrepaired' in outcome:
            break
    outcome['duration'] = round(sum(operation['duration'] for operation in outcome['operations']), 3)
    outcome['bytes_written'] = sum(operation['bytes_written'] for operation in outcome['operations'])
    return outcome


def repaired_something(repair_result):
    """Whether a repair fixed anything (qemu-img check -r: leaks-fixed, corruptions-fixed)."""
    return bool(_count(repair_result, 'leaks-fixed') or _count(repair_result, 'corruptions-fixed'))


def _plural(count, noun):
    return '%d %s%s' % (count, noun, '' if count == 1 else 's')


def unrepaired_message(path, mode, repair_result):
    """Why a task fails when its repair left damage (the check after the repair still finds it)."""
    fixed = [_plural(_count(repair_result, key), noun) for key, noun in
             (('leaks-fixed', 'leaked cluster'), ('corruptions-fixed', 'corruption')) if _count(repair_result, key)]
    left = [_plural(_count(repair_result, key), noun) for key, noun in
            (('corruptions', 'corruption'), ('check-errors', 'check error'), ('leaks', 'leaked cluster'))
            if _count(repair_result, key)]
    findings = [message for message in repair_result.get('messages') or [] if message.startswith('ERROR')][:3]
    return '%s: repair=%s %s, but %s remain%s after the repair (qemu-img check -r fails the same way)%s; ' \
           'the damage needs more than a metadata repair: copy out what is readable (qemu-img convert) or ' \
           'restore the image from a backup' % (
               path, mode, 'fixed ' + ' and '.join(fixed) if fixed else 'fixed nothing', ' and '.join(left),
               '' if len(left) > 1 or not left[0].startswith('1 ') else 's',
               ' (%s)' % '; '.join(findings) if findings else '')


def run_disk_image(module):
    """The disk_image module: returns the result dict for exit_json.

    Raises ImageError (library) or DiskImageError (request); the module turns both into fail_json.
    """
    request = DiskImageRequest.from_params(module.params)
    if request.state == 'present':
        # File attributes are checked before anything changes (a bad mode must not fail after a conversion).
        try:
            for warning in check_file_attributes(module.params, module.check_mode):
                module.warn(warning)
        except FileAttributeError as exc:
            raise DiskImageError(str(exc))
    try:
        state = read_state(request)
    except ImageInUseError as exc:
        raise DiskImageError(in_use_message(exc, request.uri))
    current_info = state[0]
    plan = plan_disk_image(request, *state)
    check_chains_open(request, plan, current_info, state[1])
    done = []
    try:
        return _carry_out(module, request, plan, current_info, done)
    except (ImageError, DiskImageError, FileAttributeError, OSError, IOError) as exc:
        if isinstance(exc, DiskImageError) and exc.result:
            raise
        raise failure_after(request, plan, current_info, done, exc)


# Actions that open the existing image with its backing chain (a safe rebase too; an unsafe one opens the header).
_CHAIN_ACTIONS = ('resize', 'repair', 'revert', 'snapshot_create', 'snapshot_delete', 'commit', 'amend')


def check_chains_open(request, plan, current_info, src_info):
    """Open read-only the backing chains the plan's actions will open (the image's, a conversion's source's), so
    that the path policy or a missing backing file refuses the task before anything changes, in check mode as for
    real.  Only chains with a backing file: the top layers were read already."""
    kinds = [action.kind for action in plan.actions if action.kind != 'rebase' or not action.args.get('unsafe')]
    opened = []
    if current_info and current_info.get('backing-filename') and any(
            kind in _CHAIN_ACTIONS + ('rebase',) for kind in kinds):
        opened.append((request.path, current_info.get('format'), {}))
    if src_info and src_info.get('backing-filename') and 'convert' in kinds:
        opened.append((request.src, src_info.get('format'), _member_argument('member', request.src_member)))
    for path, fmt, extra in opened:
        with open_image(path, fmt=fmt, allow_dirs=request.allow_dirs, trusted_files=request.trusted_files,
                        force_share=True, **extra):
            pass


def in_use_message(exc, uri=None):
    """disk_image's words for an image in use (ImageInUseError): the library's advice names its own force_share,
    which disk_image does not have; the running domains holding the image, where libvirt (qemu:///system and
    ``uri``) can tell."""
    from ansible_collections.kvm.storage.plugins.module_utils._libvirt import DEFAULT_URI, holders_text
    holders = holders_text(exc.path, (DEFAULT_URI, uri)) if exc.path else ''
    return ('%s%s; disk_image does not open images in use: shut the guest down (or let the other process finish) and '
            'run the task again%s' % (exc.reason, holders, '; kvm.storage.disk_image_info (option force_share) can '
                                                           'read it meanwhile' if exc.read_only_look else ''))


def _failure_text(exc, uri=None):
    return in_use_message(exc, uri) if isinstance(exc, ImageInUseError) else str(exc)


def failure_after(request, plan, current_info, done, exc):
    """The error to raise when a step failed: ``exc`` itself when nothing was done yet; when ``done`` (the actions
    carried out) created a new image, that image is removed again and the task changed nothing; otherwise the
    error carries ``changed`` and the actions done, which the module reports with the failure (with the failed step
    itself when the library says it changed the image and could not take that back: ``image_changed``)."""
    remaining = [action for action in plan.actions if action not in done]
    # A step that failed half-way and could not be taken back (a grow whose undo failed) changed the image too.
    partly = ['%s (failed half-way, not taken back)' % remaining[0].description] \
        if remaining and getattr(exc, 'image_changed', False) else []
    if not done and not partly:
        if isinstance(exc, (FileAttributeError, ImageInUseError)):
            return DiskImageError(_failure_text(exc, request.uri))
        return exc
    if not done:
        return DiskImageError(_failure_text(exc, request.uri), result={'changed': True, 'actions': partly})
    failed = remaining[0].description if remaining else 'set file attributes of %s' % request.path
    text = _failure_text(exc, request.uri)
    if text.startswith(request.path + ': '):
        # The step's description names the image already.
        text = text[len(request.path) + 2:]
    if current_info is None and done[0].kind in ('create', 'convert'):
        # A new image: taking it back leaves everything as it was.
        try:
            leftovers = extent_files(request.path, image_info(request.path, allow_dirs=request.allow_dirs,
                                                              trusted_files=request.trusted_files))
        except (ImageError, OSError):
            leftovers = []
        for name in [request.path] + leftovers:
            if os.path.lexists(name):
                os.unlink(name)
        return DiskImageError('%s failed: %s; the new image made before it is removed again, so nothing is '
                              'changed' % (failed, text))
    return DiskImageError('%s failed: %s; done before the failure: %s' % (
        failed, text, '; '.join(action.description for action in done)),
        result={'changed': True, 'actions': [action.description for action in done] + partly})


def _carry_out(module, request, plan, current_info, done):
    """Apply the plan (not in check mode) and the file attributes; returns the result dict."""
    result = plan.result()
    diff = plan.diff()
    if not module.check_mode and plan.changed:
        outcome = apply_plan(plan, request, done)
        for key in ('conversion', 'repair'):
            if key in outcome:
                result[key] = outcome[key]
        result['stats'] = dict((key, outcome[key]) for key in ('duration', 'bytes_written', 'operations'))
        if [action.kind for action in plan.actions] == ['repair'] and not repaired_something(outcome.get('repair') or {}):
            # The check found something the repair then did not need to fix (qemu-img check -r fixed nothing).
            result['changed'] = False
        if 'unrepaired' in outcome:
            done = plan.actions[:len(outcome['operations'])]
            repair = outcome['repair']
            result['changed'] = any(action.kind != 'repair' for action in done) or repaired_something(repair)
            result['actions'] = [action.description for action in done]
            diff['after']['consistency'] = {'leaks': _count(repair, 'leaks'), 'corruptions': _count(repair, 'corruptions')}
            if module._diff:
                result['diff'] = diff
            raise DiskImageError(unrepaired_message(request.path, outcome['unrepaired'].args['mode'], repair),
                                 result=result)

    if request.state == 'present':
        file_args = module.load_file_common_arguments(module.params)
        # Check mode: an owner or group that does not exist yet (a warning already) would be set for real.
        unknown = unknown_in_check_mode(module.params, module.check_mode)
        for name in unknown:
            file_args[name] = None
        if replaces_file(plan):
            # A new file: the diff shows the requested attributes, the same in check mode and for real.
            diff['after'].update((name, module.params[name]) for name in ('mode', 'owner', 'group')
                                 if module.params.get(name) is not None)
            if not module.check_mode:
                set_file_attributes(module, file_args, True)
        elif set_file_attributes(module, file_args, False, diff=diff) or (unknown and os.path.exists(request.path)):
            result['changed'] = True
            if not plan.actions:
                result['actions'].append('set file attributes of %s' % request.path)

    if module.check_mode or request.state == 'absent':
        result['image'] = current_info if request.state == 'present' and current_info is not None else {}
    elif plan.changed:
        result['image'] = image_info(request.path, allow_dirs=request.allow_dirs, trusted_files=request.trusted_files)
    else:
        result['image'] = current_info
    if module._diff:
        result['diff'] = diff
    return result


# --------------------------------------------------------------------------- disk_image_info
def _paths(value):
    if isinstance(value, (list, tuple)):
        paths = list(value)
    else:
        paths = [value]
    if not paths or any(not isinstance(path, str) or not path for path in paths):
        raise DiskImageError('path: expected a path or a list of paths, found %r' % (value,))
    return [os.path.expanduser(os.path.expandvars(path)) for path in paths]


TAR_MAGIC_OFFSET = 257  # POSIX ustar header: "ustar" at offset 257 of the first block (GNU tar too)


def is_tar_archive(path):
    """Whether ``path`` is a regular file starting with a tar header (an OVA or an uncompressed Vagrant box)."""
    if not os.path.isfile(path):
        return False
    with open(path, 'rb') as archive:
        archive.seek(TAR_MAGIC_OFFSET)
        return archive.read(5) == b'ustar'


def describe_image(path, backing_chain=False, check=False, allow_dirs=None, force_share=False, allocation_map=False,
                   measure=None, member=None, trusted_files=None, compare=None):
    """Info dict of one image for disk_image_info (``exists`` false when there is no file).

    ``allocation_map`` adds ``map`` (qemu-img map --output=json); ``measure`` ({out_format, options}) adds
    ``measure`` (qemu-img measure --output=json of a conversion of the image to out_format).  ``member`` selects
    a disk inside an OVA or Vagrant box; when ``path`` is a tar archive, ``ova_disks`` lists its disks.
    """
    if not os.path.lexists(path):
        return {'filename': path, 'exists': False}
    disks = ova_disks(path) if is_tar_archive(path) else None
    if member is None and disks is not None and not disks:
        # A tar file without disks: nothing to describe but the (empty) disk list.
        return {'filename': path, 'exists': True, 'ova_disks': []}
    selected = _member_argument('member', member)
    if backing_chain:
        chain = image_info(path, backing_chain=True, allow_dirs=allow_dirs, force_share=force_share,
                           trusted_files=trusted_files, **selected)
        described = dict(chain[0])
        described['backing-chain'] = chain
    else:
        described = dict(image_info(path, allow_dirs=allow_dirs, force_share=force_share,
                                    trusted_files=trusted_files, **selected))
    described['exists'] = True
    if disks is not None:
        described['ova_disks'] = disks
    if check:
        try:
            described['check'] = image_check(path, fmt=described['format'], allow_dirs=allow_dirs,
                                             trusted_files=trusted_files,
                                             force_share=force_share, **selected)
        except (UnsupportedOperation, UnsupportedFeature) as exc:
            described['check_note'] = str(exc)
    if allocation_map:
        described['map'] = image_map(path, fmt=described['format'], allow_dirs=allow_dirs, force_share=force_share,
                                     trusted_files=trusted_files,
                                     **selected)
    if measure is not None:
        described['measure'] = image_measure(src=path, src_fmt=described['format'],
                                             out_fmt=measure.get('out_format') or 'qcow2',
                                             options=measure.get('options') or None,
                                             allow_dirs=allow_dirs, force_share=force_share,
                                             trusted_files=trusted_files, **_member_argument('src_member', member))
    if compare is not None:
        other_member = member_selector(compare.get('member'), 'compare.member')
        offset = image_compare_detail(path, compare['path'], fmt_a=described['format'], fmt_b=compare.get('format'),
                                      strict=compare.get('strict') or False, allow_dirs=allow_dirs,
                                      force_share=force_share, member_a=selected.get('member'),
                                      member_b=other_member, trusted_files=trusted_files)
        described['compare'] = {'path': compare['path'], 'identical': offset is None, 'first_difference': offset}
    return described


def run_disk_image_info(params):
    allow_dirs = list(params.get('allow_dirs') or []) or None
    member = member_selector(params.get('member'), 'member')
    paths = _paths(params['path'])
    compare = params.get('compare')
    # The files the task names are the operator's word: an image naming one of them may open it.
    # One rule for every path: nothing there is no error (exists: false); a path that is there but cannot be
    # described gets its error in the entry, and the task fails once every path was described.
    images = []
    errors = []
    for path in paths:
        try:
            images.append(describe_image(path, backing_chain=params['backing_chain'], check=params['check'],
                                         allow_dirs=allow_dirs, force_share=params['force_share'],
                                         allocation_map=params.get('map') or False, measure=params.get('measure'),
                                         member=member, compare=compare,
                                         trusted_files=paths + ([compare['path']] if compare else [])))
        except (ImageError, DiskImageError, OSError, IOError) as exc:
            message = str(exc) if path in str(exc) else '%s: %s' % (path, exc)
            images.append({'filename': path, 'exists': os.path.lexists(path), 'error': message})
            errors.append(message)
    result = dict(changed=False, images=images)
    if errors:
        raise DiskImageError('%s of %d paths cannot be described (images[].error): %s' % (
            len(errors), len(paths), '; '.join(errors)), result=result)
    return result
