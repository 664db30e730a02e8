# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backend of the domain module: a libvirt domain defined from XML, its power state and autostart.

Private to this collection (the leading underscore): no compatibility promise.

The module reads the domain once (``read_domain_state``), compares the request with the persistent
definition (``compare_definition``: both normalised by ``normalise_domain``, then only what the request
specifies is compared, ``_libvirt.project_requested``), plans the steps (``plan_domain``, a pure function,
the same in check mode), and applies them outside check mode (``apply_plan``), undoing what it did when a
step fails.  A definition that differs is a drift: reported, and redefined only when the task asks.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import copy
import re
import time
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
    match_children,
    parse_xml,
    project_requested,
    sanitize_path,
)
from ansible_collections.kvm.storage.plugins.module_utils._plan import Action, Plan

DOMAIN_STATES = ('present', 'running', 'shutoff', 'absent')
# virDomainUndefineFlagsValues, by the names of the undefine_flags option.
UNDEFINE_FLAGS = {
    'managed_save': 'VIR_DOMAIN_UNDEFINE_MANAGED_SAVE',
    'snapshots_metadata': 'VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA',
    'checkpoints_metadata': 'VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA',
    'nvram': 'VIR_DOMAIN_UNDEFINE_NVRAM',
    'keep_nvram': 'VIR_DOMAIN_UNDEFINE_KEEP_NVRAM',
    'tpm': 'VIR_DOMAIN_UNDEFINE_TPM',
    'keep_tpm': 'VIR_DOMAIN_UNDEFINE_KEEP_TPM',
}
# virDomainState numbers in order, spelled as the module reports them.
STATE_NAMES = ('nostate', 'running', 'blocked', 'paused', 'shutdown', 'shutoff', 'crashed', 'pmsuspended')
INACTIVE_STATES = ('shutoff', 'crashed', 'nostate')

# Memory units libvirt accepts (virScaleInteger), in bytes; values are compared in KiB as libvirt stores them.
MEMORY_UNITS = {'b': 1, 'bytes': 1, 'kb': 1000, 'k': 1024, 'kib': 1024, 'mb': 1000 ** 2, 'm': 1024 ** 2,
                'mib': 1024 ** 2, 'gb': 1000 ** 3, 'g': 1024 ** 3, 'gib': 1024 ** 3, 'tb': 1000 ** 4, 't': 1024 ** 4,
                'tib': 1024 ** 4, 'pb': 1000 ** 5, 'p': 1024 ** 5, 'pib': 1024 ** 5, 'eb': 1000 ** 6, 'e': 1024 ** 6,
                'eib': 1024 ** 6}
# Elements whose text is an amount of memory, KiB when no unit is written.
MEMORY_ELEMENTS = ('memory', 'currentMemory', 'maxMemory', 'hard_limit', 'soft_limit', 'swap_hard_limit', 'min_guarantee')
# Attributes holding an amount of memory in the unit of the element's unit attribute (numa cells, huge pages).
MEMORY_ATTRIBUTES = ('memory', 'size')
# Elements whose text is a host path, compared as libvirt stores paths.
PATH_ELEMENTS = ('emulator', 'loader', 'nvram', 'kernel', 'initrd', 'dtb')
PATH_ATTRIBUTES = ('file', 'dir', 'path')
NUMBER = re.compile(r'^(0x[0-9a-fA-F]+|[0-9]+)$')


# --------------------------------------------------------------------------- argument spec
def domain_argument_spec():
    spec = dict(
        name=dict(type='str'),
        xml=dict(type='str'),
        state=dict(type='str', default='present', choices=list(DOMAIN_STATES)),
        autostart=dict(type='bool'),
        redefine=dict(type='bool', default=False),
        shutdown_timeout=dict(type='int', default=120),
        force=dict(type='bool', default=False),
        undefine_flags=dict(type='list', elements='str', default=[], choices=sorted(UNDEFINE_FLAGS)),
    )
    spec.update(libvirt_argument_spec())
    return spec


DOMAIN_REQUIRED_ONE_OF = [('name', 'xml')]


# --------------------------------------------------------------------------- normalisation
def memory_kib(value, unit, what):
    """An amount of memory in KiB, rounded up as libvirt rounds it."""
    factor = MEMORY_UNITS.get((unit or 'KiB').strip().lower())
    if factor is None:
        raise LibvirtModuleError('%s: unknown memory unit %r (libvirt takes %s)' % (what, unit, ', '.join(sorted(MEMORY_UNITS))))
    text = (value or '').strip()
    if not text.isdigit():
        raise LibvirtModuleError('%s: expected a whole number of %s, found %r' % (what, unit or 'KiB', value))
    return str(-(-int(text) * factor // 1024))


def _is_memory_unit(unit):
    return unit is not None and unit.strip().lower() in MEMORY_UNITS


def normalise_domain(element, machine_aliases=None):
    """A normalised copy of a domain definition (or of one of its elements), for comparison and for the diff.

    Values are spelled as libvirt stores them: memory in KiB (unit='KiB'), PCI and drive address numbers as
    decimal numbers, MAC addresses and the UUID in lower case, host paths without repeated or trailing slashes,
    a machine type alias (pc, q35) as the machine it stands for (``machine_aliases``, from libvirt's capabilities).
    """
    normalised = copy.deepcopy(element)
    for node in normalised.iter():
        if not isinstance(node.tag, str):
            continue
        unit = node.get('unit')
        if node.tag in MEMORY_ELEMENTS and (node.text or '').strip():
            node.text = memory_kib(node.text, unit, '<%s>' % node.tag)
            node.set('unit', 'KiB')
        elif _is_memory_unit(unit) and any(node.get(name) for name in MEMORY_ATTRIBUTES):
            for name in MEMORY_ATTRIBUTES:
                if node.get(name):
                    node.set(name, memory_kib(node.get(name), unit, '<%s %s>' % (node.tag, name)))
            node.set('unit', 'KiB')
        if node.tag == 'address' and node.get('type') in ('pci', 'drive', 'virtio-serial', 'ccid', 'usb', None):
            for name, value in node.attrib.items():
                if name != 'type' and NUMBER.match(value):
                    node.set(name, str(int(value, 16) if value.startswith('0x') else int(value)))
        if node.tag == 'mac' and node.get('address'):
            node.set('address', node.get('address').strip().lower())
        if node.tag == 'uuid' and node.text:
            node.text = node.text.strip().lower()
        if node.tag in PATH_ELEMENTS and (node.text or '').strip().startswith('/'):
            node.text = sanitize_path(node.text.strip())
        for name in PATH_ATTRIBUTES:
            if (node.get(name) or '').startswith('/'):
                node.set(name, sanitize_path(node.get(name)))
        if node.tag == 'type' and node.get('machine') and machine_aliases:
            node.set('machine', machine_aliases.get((node.get('arch'), node.get('machine')), node.get('machine')))
    return normalised


def compare_definition(requested, actual, machine_aliases=None):
    """``(projection, drift)``: what the actual definition holds of what the request specifies, and the
    differences (``[{'path', 'requested', 'actual'}]``), both normalised.  What libvirt adds (uuid, addresses,
    generated MACs, aliases, defaults) is not compared unless the request specifies it."""
    requested, actual = normalise_domain(requested, machine_aliases), normalise_domain(actual, machine_aliases)
    projection, drift = project_requested(requested, actual)
    # Elements are matched whatever their order, but the order of <os><boot dev=...> is the boot order.
    wanted = [boot.get('dev') for boot in requested.findall('os/boot')]
    found = [boot.get('dev') for boot in actual.findall('os/boot')]
    if len(wanted) > 1 and sorted(wanted) == sorted(found) and wanted != found:
        drift.append(dict(path='/domain/os/boot', requested=','.join(wanted), actual=','.join(found)))
    return projection, drift


def machine_aliases_of(capabilities_xml):
    """{(arch, alias): canonical machine} from libvirt's capabilities (``<machine canonical='pc-i440fx-7.2'>pc``)."""
    aliases = {}
    capabilities = parse_xml(capabilities_xml, 'libvirt capabilities')
    for arch in capabilities.findall('guest/arch'):
        for machine in arch.findall('.//machine'):
            if machine.get('canonical') and machine.text:
                aliases[(arch.get('name'), machine.text.strip())] = machine.get('canonical')
    return aliases


# --------------------------------------------------------------------------- request
class DomainRequest(object):
    """What the task asks for: the name, the definition (an Element) when given, the state and the flags."""

    def __init__(self, params):
        self.state = params['state']
        self.autostart = params.get('autostart')
        self.redefine = bool(params.get('redefine'))
        self.force = bool(params.get('force'))
        self.shutdown_timeout = params.get('shutdown_timeout')
        if self.shutdown_timeout is None:
            self.shutdown_timeout = 120
        if self.shutdown_timeout < 0:
            raise LibvirtModuleError('shutdown_timeout: expected a number of seconds >= 0, found %d' % self.shutdown_timeout)
        self.undefine_flags = list(params.get('undefine_flags') or [])
        self.uri = params.get('uri')
        self.definition = None
        name = params.get('name')
        if params.get('xml'):
            definition = parse_xml(params['xml'], 'xml')
            if definition.tag != 'domain':
                raise LibvirtModuleError('xml: a domain definition has a <domain> root element, found <%s>' % definition.tag)
            xml_name = child_text(definition, 'name')
            if xml_name and name and xml_name != name:
                raise LibvirtModuleError('name is %r but xml defines domain %r' % (name, xml_name))
            name = name or xml_name
            if not name:
                raise LibvirtModuleError('xml: the definition has no <name>; give one, or the name option')
            if not xml_name:
                for empty in definition.findall('name'):
                    definition.remove(empty)
                named = ElementTree.Element('name')
                named.text = name
                definition.insert(0, named)
            # The comparison and the diff would raise later on a bad value: refuse it before anything changes.
            normalise_domain(definition)
            self.definition = definition
        if not name:
            raise LibvirtModuleError('name is required')
        self.name = name

    @property
    def wants_active(self):
        return self.state == 'running'


# --------------------------------------------------------------------------- actual state
class DomainState(object):
    """The domain as libvirt has it, read once."""

    def __init__(self, name, uuid, state, persistent, autostart, inactive_xml, machine_aliases=None,
                 snapshots=0, managed_save=False):
        self.name = name
        self.uuid = uuid
        self.state = state
        self.persistent = persistent
        self.autostart = autostart
        self.inactive_xml = inactive_xml
        self.machine_aliases = machine_aliases or {}
        # What libvirt refuses to undefine the domain with, unless told to remove it (read for state=absent).
        self.snapshots = snapshots
        self.managed_save = managed_save

    @property
    def active(self):
        return self.state not in INACTIVE_STATES

    @property
    def inactive_element(self):
        return parse_xml(self.inactive_xml, 'definition of domain %r' % self.name)


def lookup_domain_or_none(conn, name):
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if error_is(exc, 'VIR_ERR_NO_DOMAIN'):
            return None
        raise LibvirtModuleError('cannot look up domain %s: %s' % (_quoted(name), error_message(exc)))


def state_name(domain):
    code = libvirt_call('cannot read the state of domain %s' % _quoted(domain.name()), domain.state, 0)[0]
    return STATE_NAMES[code] if 0 <= code < len(STATE_NAMES) else 'unknown'


def read_domain_state(conn, name, with_capabilities=False, with_undefine_checks=False):
    """DomainState of the domain named ``name`` (None when there is none)."""
    domain = lookup_domain_or_none(conn, name)
    if domain is None:
        return None
    what = 'cannot read domain %s' % _quoted(name)
    persistent = bool(libvirt_call(what, domain.isPersistent))
    inactive_xml = libvirt_call(what, domain.XMLDesc, libvirt.VIR_DOMAIN_XML_INACTIVE)
    aliases = None
    if with_capabilities:
        aliases = machine_aliases_of(libvirt_call('cannot read the capabilities of libvirt', conn.getCapabilities))
    state = DomainState(name=name, uuid=libvirt_call(what, domain.UUIDString), state=state_name(domain),
                        persistent=persistent, autostart=bool(libvirt_call(what, domain.autostart)),
                        inactive_xml=inactive_xml, machine_aliases=aliases)
    if with_undefine_checks:
        state.snapshots = libvirt_call(what, domain.snapshotNum, 0)
        state.managed_save = bool(libvirt_call(what, domain.hasManagedSaveImage, 0))
    return state


# --------------------------------------------------------------------------- plan
def domain_plan(actions, before, after, drift=None, warnings=None, restart_pending=False):
    """A Plan with the fields the domain module reports: ``drift`` (the differences from the requested definition)
    and ``restart_pending``."""
    return Plan(actions, before, after, warnings=warnings, drift=drift or [], restart_pending=restart_pending)


def describe_drift(drift, limit=5):
    """The differences, one phrase each (at most ``limit``), for a warning."""
    phrases = []
    for difference in drift[:limit]:
        if difference['actual'] is None:
            phrases.append('%s: requested %s, not in the definition' % (difference['path'], difference['requested']))
        else:
            phrases.append('%s: requested %s, defined %s' % (difference['path'], difference['requested'], difference['actual']))
    if len(drift) > limit:
        phrases.append('and %d more' % (len(drift) - limit))
    return '; '.join(phrases)


def _stop_action(name, state, request):
    """Shut the domain down: gracefully, then destroyed when the task allows it (a paused guest cannot shut down)."""
    if state.state == 'paused':
        if not request.force:
            raise LibvirtModuleError('domain %s is paused and cannot shut down gracefully; resume it, or set force=true '
                                     'to destroy it (power it off); nothing was changed' % name)
        return Action('destroy', 'destroy domain %s (paused: it cannot shut down)' % name)
    if request.force:
        description = 'shut down domain %s (destroy it if it is still running after %d s)' % (name, request.shutdown_timeout)
    else:
        description = 'shut down domain %s (wait up to %d s)' % (name, request.shutdown_timeout)
    return Action('shutdown', description, timeout=request.shutdown_timeout, force=request.force)


def _check_undefine(name, state, request):
    """Refuse, before anything changes, what libvirt would refuse to undefine the domain with."""
    if state.snapshots and 'snapshots_metadata' not in request.undefine_flags:
        raise LibvirtModuleError('domain %s has %d snapshot(s), whose records libvirt keeps with the definition; set '
                                 'undefine_flags: [snapshots_metadata] to remove the records (the snapshots in the images '
                                 'stay); nothing was changed' % (name, state.snapshots))
    if state.managed_save and 'managed_save' not in request.undefine_flags:
        raise LibvirtModuleError('domain %s has a managed save image; set undefine_flags: [managed_save] to remove it with '
                                 'the definition; nothing was changed' % name)


def plan_domain(request, state):
    """The steps from ``state`` (a DomainState, None when the domain does not exist) to the request, and the views."""
    name = _quoted(request.name)
    actions, warnings, drift = [], [], []
    before = domain_view(request.name, state)
    aliases = state.machine_aliases if state is not None else None
    requested_xml = canonical_xml(normalise_domain(request.definition, aliases)) if request.definition is not None else None

    if request.state == 'absent':
        if state is None:
            return domain_plan([], before, dict(before))
        if state.active:
            actions.append(_stop_action(name, state, request))
        if state.persistent:
            _check_undefine(name, state, request)
            flags = ', '.join(request.undefine_flags)
            actions.append(Action('undefine', 'undefine domain %s%s (its disks are kept)' % (name, ' (%s)' % flags if flags else ''),
                                  flags=request.undefine_flags))
        return domain_plan(actions, before, domain_view(request.name, None))

    after = dict(before)
    if state is None:
        if request.definition is None:
            raise LibvirtModuleError('domain %s is not defined on %s; give xml to define it' % (name, request.uri))
        actions.append(Action('define', 'define domain %s' % name))
        after.update(state='shutoff', persistent=True, autostart=False, xml=requested_xml)
        active = False
    else:
        active = state.active
        if request.definition is not None:
            projection, drift = compare_definition(request.definition, state.inactive_element, aliases)
            after['xml'] = before['xml'] = canonical_xml(projection)
            if not state.persistent:
                actions.append(Action('redefine', 'define transient domain %s persistently' % name))
                after.update(persistent=True, xml=requested_xml)
            elif drift and request.redefine:
                actions.append(Action('redefine', 'redefine domain %s (%d difference%s)' % (
                    name, len(drift), '' if len(drift) == 1 else 's')))
                after['xml'] = requested_xml
            elif drift:
                warnings.append('domain %s differs from the requested definition: %s; nothing was changed, set redefine=true '
                                'to define the requested XML' % (name, describe_drift(drift)))

    if request.state == 'running' and state is not None and state.state == 'paused':
        actions.append(Action('resume', 'resume domain %s' % name))
        after['state'] = 'running'
    elif request.state == 'running' and not active:
        actions.append(Action('start', 'start domain %s' % name))
        after['state'] = 'running'
    elif request.state == 'shutoff' and active:
        actions.append(_stop_action(name, state, request))
        after['state'] = 'shutoff'

    if request.autostart is not None and after.get('autostart') != request.autostart:
        actions.append(Action('autostart', '%s autostart of domain %s' % ('enable' if request.autostart else 'disable', name),
                              value=request.autostart))
        after['autostart'] = request.autostart

    # libvirt expands a definition when it starts a domain (firmware, aliases, ports): the live definition is not
    # compared; a running domain redefined by this task runs with its previous definition until it is next started.
    restart_pending = (after['state'] not in INACTIVE_STATES and state is not None
                       and any(action.kind == 'redefine' for action in actions)
                       and not any(action.kind == 'start' for action in actions))
    if restart_pending:
        warnings.append('domain %s is running with its previous definition; the new one applies when it is next started '
                        '(shut it down and start it)' % name)
    return domain_plan(actions, before, after, drift, warnings, restart_pending)


def domain_view(name, state):
    """The view of the domain compared and shown in the diff (its definition added by the plan)."""
    if state is None:
        return {'name': name, 'state': 'absent'}
    return {'name': name, 'state': state.state, 'persistent': state.persistent, 'autostart': state.autostart}


def render_view(view):
    """The view as text for the diff: one field a line, the definition last and indented."""
    lines = []
    for key in ('name', 'state', 'persistent', 'autostart'):
        if key in view:
            value = view[key]
            lines.append('%s: %s' % (key, str(value).lower() if isinstance(value, bool) else value))
    if view.get('xml'):
        lines.append('xml: |')
        lines.extend('  ' + line for line in view['xml'].splitlines())
    return '\n'.join(lines) + '\n'


# --------------------------------------------------------------------------- apply
def definition_to_define(request, state):
    """The XML defined: the request, with what libvirt generated for the existing domain and the request leaves
    out kept (its uuid, and the MAC address of each interface, so that the guest's NICs keep their addresses)."""
    definition = copy.deepcopy(request.definition)
    if state is None:
        return ElementTree.tostring(definition, encoding='unicode')
    existing = state.inactive_element
    if definition.find('uuid') is None:
        uuid = ElementTree.Element('uuid')
        uuid.text = state.uuid
        definition.insert(1, uuid)
    devices, existing_devices = definition.find('devices'), existing.find('devices')
    if devices is not None and existing_devices is not None:
        wanted = devices.findall('interface')
        candidates = existing_devices.findall('interface')

        def compare(requested, actual, path):
            return project_requested(normalise_domain(requested), normalise_domain(actual), path)

        for interface, existing_interface, dummy, dummy_differences in match_children(wanted, candidates, compare=compare):
            mac = None if existing_interface is None else existing_interface.find('mac')
            if interface.find('mac') is None and mac is not None:
                interface.insert(0, copy.deepcopy(mac))
    return ElementTree.tostring(definition, encoding='unicode')


def _flags(names):
    """The virDomainUndefineFlagsValues of the names; the UEFI variable store is kept unless asked to remove it."""
    if 'nvram' not in names:
        names = list(names) + ['keep_nvram']
    value = 0
    for name in names:
        value |= getattr(libvirt, UNDEFINE_FLAGS[name], 0)
    return value


def wait_until_shut_off(domain, timeout, clock=time.monotonic, sleep=time.sleep):
    """Whether the domain stopped within ``timeout`` seconds."""
    deadline = clock() + timeout
    while True:
        if not libvirt_call('cannot read domain %s' % _quoted(domain.name()), domain.isActive):
            return True
        if clock() >= deadline:
            return False
        sleep(0.5)


class _Run(object):
    """The steps of one apply_plan, with how to undo each of those done."""

    def __init__(self, conn, request, state):
        self.conn = conn
        self.request = request
        self.state = state
        self.name = _quoted(request.name)
        self.domain = None if state is None else lookup_domain_or_none(conn, request.name)
        self.done = []        # [(description, None or (undo description, undo function))]

    def _call(self, what, function, *args):
        return libvirt_call('%s domain %s' % (what, self.name), function, *args)

    def _define(self, xml):
        flags = getattr(libvirt, 'VIR_DOMAIN_DEFINE_VALIDATE', 0)
        return self._call('libvirt refused the definition of', self.conn.defineXMLFlags, xml, flags)

    def do(self, action):
        name, domain = self.name, self.domain
        undo = None
        if action.kind == 'define':
            self.domain = domain = self._define(definition_to_define(self.request, None))
            undo = ('undefine domain %s' % name,
                    lambda: self._call('cannot undefine', domain.undefineFlags, _flags(['nvram'])))
        elif action.kind == 'redefine':
            self.domain = self._define(definition_to_define(self.request, self.state))
            if self.state.persistent:
                undo = ('restore the previous definition of domain %s' % name,
                        lambda: self._call('cannot restore the previous definition of', self.conn.defineXML,
                                           self.state.inactive_xml))
        elif action.kind == 'start':
            self._call('cannot start', domain.create)
            undo = ('destroy domain %s again' % name, lambda: self._call('cannot destroy', domain.destroy))
        elif action.kind == 'resume':
            self._call('cannot resume', domain.resume)
            undo = ('pause domain %s again' % name, lambda: self._call('cannot pause', domain.suspend))
        elif action.kind == 'shutdown':
            self._shutdown(action)
        elif action.kind == 'destroy':
            self._call('cannot destroy', domain.destroy)
        elif action.kind == 'undefine':
            try:
                domain.undefineFlags(_flags(action.args['flags']))
            except libvirt.libvirtError as exc:
                raise LibvirtModuleError('cannot undefine domain %s: %s (undefine_flags tells libvirt what to remove with '
                                         'the definition)' % (name, error_message(exc)))
            undo = ('define domain %s again' % name, self._define_again)
        elif action.kind == 'autostart':
            value = action.args['value']
            self._call('cannot set autostart of', domain.setAutostart, 1 if value else 0)
            undo = ('%s autostart of domain %s again' % ('disable' if value else 'enable', name),
                    lambda: self._call('cannot set autostart of', domain.setAutostart, 0 if value else 1))
        else:
            raise LibvirtModuleError('internal error: unknown action %r' % action.kind)
        self.done.append((action.description, undo))

    def _shutdown(self, action):
        domain = self.domain
        try:
            domain.shutdown()
        except libvirt.libvirtError as exc:
            # A guest that stopped on its own since it was read: nothing left to do.
            if libvirt_call('cannot read domain %s' % self.name, domain.isActive):
                raise LibvirtModuleError('cannot shut down domain %s: %s' % (self.name, error_message(exc)))
        if wait_until_shut_off(domain, action.args['timeout']):
            return
        if not action.args['force']:
            raise LibvirtModuleError('domain %s did not shut down within %d s (the guest ignored the request, or has no '
                                     'ACPI support); set force=true to destroy it (power it off) after shutdown_timeout, '
                                     'or raise shutdown_timeout' % (self.name, action.args['timeout']))
        try:
            domain.destroy()
        except libvirt.libvirtError as exc:
            if libvirt_call('cannot read domain %s' % self.name, domain.isActive):
                raise LibvirtModuleError('cannot destroy domain %s: %s' % (self.name, error_message(exc)))

    def _define_again(self):
        domain = self._call('cannot define again', self.conn.defineXML, self.state.inactive_xml)
        if self.state.autostart:
            self._call('cannot set autostart of', domain.setAutostart, 1)
        self.domain = domain

    def failure(self, message):
        """The error to raise after a failed step: undo what can be undone, report what stays done."""
        undone, kept, problems = [], [], []
        for description, undo in reversed(self.done):
            if undo is None:
                kept.append(description)
                continue
            try:
                undo[1]()
            except LibvirtModuleError as exc:
                problems.append('cannot %s: %s' % (undo[0], exc))
                kept.append(description)
            else:
                undone.append(undo[0])
        kept.reverse()
        if undone:
            message += '; undone: %s' % ', '.join(undone)
        if problems:
            message += '; ' + '; '.join(problems)
        if kept:
            message += '; done before the failure and left so: %s' % ', '.join(kept)
            return LibvirtModuleError(message, changed=True, actions=kept)
        message += '; domain %s is as it was before the task' % self.name
        return LibvirtModuleError(message, changed=False, actions=[])


def apply_plan(conn, plan, request, state):
    """Carry out the plan; on a failed step, undo the steps done before it where possible (reverse order)."""
    run = _Run(conn, request, state)
    try:
        for action in plan.actions:
            run.do(action)
    except LibvirtModuleError as exc:
        raise run.failure(str(exc))


# --------------------------------------------------------------------------- reporting
def domain_info(domain):
    """What the module returns about a domain."""
    what = 'cannot read domain %s' % _quoted(domain.name())
    return {
        'name': domain.name(),
        'uuid': libvirt_call(what, domain.UUIDString),
        'state': state_name(domain),
        'persistent': bool(libvirt_call(what, domain.isPersistent)),
        'autostart': bool(libvirt_call(what, domain.autostart)),
    }


def run_domain(conn, params, check_mode):
    """The domain module: returns the result dict for exit_json (``diff`` always included)."""
    request = DomainRequest(params)
    state = read_domain_state(conn, request.name, with_capabilities=request.definition is not None,
                              with_undefine_checks=request.state == 'absent')
    plan = plan_domain(request, state)
    result = plan.result(notes=True)
    if not check_mode and plan.actions:
        apply_plan(conn, plan, request, state)
        if any(action.kind in ('define', 'redefine') for action in plan.actions):
            stored = read_domain_state(conn, request.name, with_capabilities=True)
            left = compare_definition(request.definition, stored.inactive_element, stored.machine_aliases)[1]
            if left:
                result['notes'].append('libvirt stored the definition of domain %s differently from the request (it drops or '
                                       'rewrites what it does not take): %s; later runs report this as drift'
                                       % (_quoted(request.name), describe_drift(left)))
    header = 'domain %s' % request.name
    result['diff'] = plan.diff(header, render_view)
    domain = lookup_domain_or_none(conn, request.name)
    result['domain'] = {} if domain is None else domain_info(domain)
    return result


def _quoted(name):
    return "'%s'" % name
