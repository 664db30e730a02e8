# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Domain definitions compared as the domain module compares them: normalised (_domain.normalise_domain), then only
what the request specifies (_libvirt.project_requested). Pure: no libvirt needed."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import pytest

from ansible_collections.kvm.storage.plugins.module_utils._libvirt import (
    LibvirtModuleError,
    canonical_xml,
    parse_xml,
    project_requested,
)
from ansible_collections.kvm.storage.plugins.module_utils._domain import compare_definition, machine_aliases_of, normalise_domain

# What libvirt 9 stores for REQUEST (virsh dumpxml --inactive), trimmed to a few of its additions.
REQUEST = '''
<domain type='qemu'>
  <name>vm1</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin//qemu-system-x86_64</emulator>
    <interface type='user'><model type='virtio'/></interface>
    <interface type='network'><source network='default'/></interface>
  </devices>
</domain>
'''
STORED = '''
<domain type='qemu'>
  <name>vm1</name>
  <uuid>63B60CD9-4a9d-4d28-a508-53e08d9c2407</uuid>
  <memory unit='KiB'>65536</memory>
  <currentMemory unit='KiB'>65536</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type><boot dev='hd'/></os>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' index='0' model='piix3-uhci'>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x2'/>
    </controller>
    <interface type='network'>
      <mac address='52:54:00:2b:f8:14'/>
      <source network='default'/>
      <model type='rtl8139'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/>
    </interface>
    <interface type='user'>
      <mac address='52:54:00:f4:94:75'/>
      <model type='virtio'/>
      <alias name='net0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0'/>
    </interface>
  </devices>
</domain>
'''
ALIASES = {('x86_64', 'pc'): 'pc-i440fx-7.2', ('x86_64', 'q35'): 'pc-q35-7.2'}


def drift(request, stored=STORED):
    return compare_definition(parse_xml(request), parse_xml(stored), ALIASES)[1]


def test_what_libvirt_adds_is_no_difference_and_the_projection_renders_like_the_request():
    projection, differences = compare_definition(parse_xml(REQUEST), parse_xml(STORED), ALIASES)
    assert differences == []
    assert canonical_xml(projection) == canonical_xml(normalise_domain(parse_xml(REQUEST), ALIASES))


def test_interfaces_without_mac_match_the_closest_one_whatever_their_order():
    # community.libvirt #186: a definition without MACs compared as changed on every run.
    assert drift(REQUEST.replace("<interface type='network'><source network='default'/></interface>", '')) == []


@pytest.mark.parametrize('old, new, path, requested, actual', [
    ("<memory unit='MiB'>64</memory>", "<memory unit='MiB'>96</memory>", '/domain/memory', '98304', '65536'),
    ('<vcpu>1</vcpu>', '<vcpu>2</vcpu>', '/domain/vcpu', '2', '1'),
    ("machine='pc'", "machine='q35'", '/domain/os/type/@machine', 'pc-q35-7.2', 'pc-i440fx-7.2'),
    ("<model type='virtio'/>", "<model type='e1000'/>", '/domain/devices/interface[1]/model/@type', 'e1000', 'virtio'),
    ("<source network='default'/>", "<source network='other'/>", '/domain/devices/interface[2]/source/@network',
     'other', 'default'),
    ('<vcpu>1</vcpu>', "<vcpu>1</vcpu><uuid>11111111-2222-3333-4444-555555555555</uuid>", '/domain/uuid',
     '11111111-2222-3333-4444-555555555555', '63b60cd9-4a9d-4d28-a508-53e08d9c2407'),
])
def test_a_value_the_request_specifies_differently_is_a_difference(old, new, path, requested, actual):
    # community.libvirt #53: a changed request for an existing domain was silently ignored.
    assert drift(REQUEST.replace(old, new)) == [dict(path=path, requested=requested, actual=actual)]


def test_a_requested_element_or_attribute_the_definition_lacks_is_a_difference():
    request = REQUEST.replace('<vcpu>1</vcpu>', "<vcpu current='1'>1</vcpu><features><acpi/></features>")
    assert drift(request) == [
        dict(path='/domain/vcpu/@current', requested='1', actual=None),
        dict(path='/domain/features', requested='<features><acpi /></features>', actual=None),
    ]


def test_the_boot_order_counts():
    stored = STORED.replace("<boot dev='hd'/>", "<boot dev='hd'/><boot dev='cdrom'/>")
    same = REQUEST.replace('hvm</type>', "hvm</type><boot dev='hd'/><boot dev='cdrom'/>")
    assert drift(same, stored) == []
    swapped = REQUEST.replace('hvm</type>', "hvm</type><boot dev='cdrom'/><boot dev='hd'/>")
    assert drift(swapped, stored) == [dict(path='/domain/os/boot', requested='cdrom,hd', actual='hd,cdrom')]


def test_a_third_interface_is_missing_from_a_definition_with_two():
    request = REQUEST.replace('</devices>', "<interface type='user'><model type='e1000'/></interface></devices>")
    assert [difference['path'] for difference in drift(request)] == ['/domain/devices/interface[3]']


@pytest.mark.parametrize('requested', [
    "<memory unit='KiB'>65536</memory>", '<memory>65536</memory>', "<memory unit='k'>65536</memory>",
    "<memory unit='M'>64</memory>", "<memory unit='bytes'>67108864</memory>", "<memory unit='b'>67108863</memory>",
])
def test_memory_compares_in_kib_whatever_the_unit(requested):
    assert drift(REQUEST.replace("<memory unit='MiB'>64</memory>", requested)) == []


def test_decimal_and_si_units_are_not_binary_ones():
    assert drift(REQUEST.replace("<memory unit='MiB'>64</memory>", "<memory unit='MB'>64</memory>")) == [
        dict(path='/domain/memory', requested='62500', actual='65536')]


def test_requested_addresses_macs_and_uuids_compare_as_numbers_and_without_case():
    request = REQUEST.replace(
        "<interface type='user'><model type='virtio'/></interface>",
        "<interface type='user'><mac address='52:54:00:F4:94:75'/><model type='virtio'/>"
        "<address type='pci' domain='0' bus='0' slot='2' function='0x0'/></interface>").replace(
        '<vcpu>1</vcpu>', '<vcpu>1</vcpu><uuid>63b60cd9-4A9D-4d28-a508-53e08d9c2407</uuid>')
    assert drift(request) == []


def test_a_requested_mac_or_address_that_differs_is_a_difference():
    request = REQUEST.replace("<interface type='user'><model type='virtio'/>",
                              "<interface type='user'><mac address='52:54:00:00:00:01'/><model type='virtio'/>")
    assert drift(request) == [dict(path='/domain/devices/interface[1]/mac/@address', requested='52:54:00:00:00:01',
                                   actual='52:54:00:f4:94:75')]


def test_bad_memory_values_are_refused_with_what_was_found():
    with pytest.raises(LibvirtModuleError, match="<memory>: unknown memory unit 'parsecs'"):
        normalise_domain(parse_xml("<domain><memory unit='parsecs'>1</memory></domain>"))
    with pytest.raises(LibvirtModuleError, match="<memory>: expected a whole number of MiB, found '1.5'"):
        normalise_domain(parse_xml("<domain><memory unit='MiB'>1.5</memory></domain>"))


def test_a_drive_address_unit_is_not_a_memory_unit():
    element = normalise_domain(parse_xml("<disk><address type='drive' controller='0' bus='0' unit='01'/></disk>"))
    assert element.find('address').get('unit') == '1'


def test_machine_aliases_come_from_libvirts_capabilities():
    capabilities = '''<capabilities><guest><os_type>hvm</os_type><arch name='x86_64'><machine maxCpus='255'>pc-i440fx-7.2</machine>
      <machine canonical='pc-i440fx-7.2' maxCpus='255'>pc</machine><domain type='qemu'/>
      <domain type='kvm'><machine canonical='pc-q35-7.2'>q35</machine></domain></arch></guest></capabilities>'''
    assert machine_aliases_of(capabilities) == {('x86_64', 'pc'): 'pc-i440fx-7.2', ('x86_64', 'q35'): 'pc-q35-7.2'}


def test_the_generic_projection_keeps_only_what_is_requested():
    projection, differences = project_requested(parse_xml("<a x='1'><b>t</b></a>"),
                                                parse_xml("<a x='2' y='3'><b z='4'>t</b><c/></a>"))
    assert canonical_xml(projection) == canonical_xml(parse_xml("<a x='2'><b>t</b></a>"))
    assert differences == [dict(path='/a/@x', requested='1', actual='2')]
