# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""XML canonicalisation (_libvirt) and pool definition normalisation (_storage_pool).

The round-trip tests define each pool type in the real libvirtd (qemu:///system) and check that
what libvirt reports back normalises to exactly what was asked, and that a real difference stays one.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import uuid as uuid_module

import pytest

import components

from ansible_collections.kvm.storage.plugins.module_utils._libvirt import (
    HAS_LIBVIRT,
    LibvirtConnection,
    LibvirtModuleError,
    canonical_xml,
    libvirt_call,
    parse_xml,
    sanitize_path,
)
from ansible_collections.kvm.storage.plugins.module_utils._storage_pool import (
    build_pool_element,
    normalise_pool_element,
    normalised_xml,
)

URI = 'qemu:///system'


# --------------------------------------------------------------------------- canonical XML
def test_attribute_order_whitespace_and_child_order_do_not_matter():
    a = parse_xml("<pool type='dir' x='1'><name>p</name>\n  <target><path>/a</path></target></pool>")
    b = parse_xml('<pool x="1" type="dir"><target>  <path> /a </path></target><!-- c --><name>p</name></pool>')
    assert canonical_xml(a) == canonical_xml(b)


def test_a_different_value_stays_different():
    a = parse_xml("<pool type='dir'><name>p</name><target><path>/a</path></target></pool>")
    b = parse_xml("<pool type='dir'><name>p</name><target><path>/b</path></target></pool>")
    c = parse_xml("<pool type='fs'><name>p</name><target><path>/a</path></target></pool>")
    assert len({canonical_xml(a), canonical_xml(b), canonical_xml(c)}) == 3


def test_canonical_text_is_indented_for_the_diff():
    text = canonical_xml(parse_xml("<pool type='dir'><name>p</name></pool>"))
    assert text.splitlines() == ['<pool type="dir">', '  <name>p</name>', '</pool>']


@pytest.mark.parametrize('text', ['', '   ', '<pool>', '<pool></pol>', None])
def test_malformed_xml_is_a_clear_error(text):
    with pytest.raises(LibvirtModuleError, match='definition'):
        parse_xml(text, 'definition')


@pytest.mark.parametrize('path, expected', [
    ('/tmp//a/b/', '/tmp/a/b'), ('/', '/'), ('///x', '/x'), ('//host/share', '//host/share'), ('a//b/', 'a/b'),
])
def test_paths_are_sanitised_as_libvirt_stores_them(path, expected):
    assert sanitize_path(path) == expected


def test_libvirt_call_names_what_failed():
    if not HAS_LIBVIRT:
        components.missing('libvirt-python')
    with LibvirtConnection(URI, readonly=True) as conn:
        with pytest.raises(LibvirtModuleError, match="^cannot look up pool 'kvmstorage_test_nothing': .*kvmstorage_test_nothing"):
            libvirt_call("cannot look up pool 'kvmstorage_test_nothing'", conn.storagePoolLookupByName, 'kvmstorage_test_nothing')


def test_a_bad_uri_is_a_clear_error():
    if not HAS_LIBVIRT:
        components.missing('libvirt-python')
    with pytest.raises(LibvirtModuleError, match='cannot connect to libvirt at nosuchdriver:///x'):
        with LibvirtConnection('nosuchdriver:///x'):
            pass


# --------------------------------------------------------------------------- pool normalisation
LIBVIRT_DIR_POOL = """<pool type='dir'>
  <name>p</name>
  <uuid>1fe18640-6d19-48a1-9d25-a3683dcdec29</uuid>
  <capacity unit='bytes'>270553174016</capacity>
  <allocation unit='bytes'>27469119488</allocation>
  <available unit='bytes'>243084054528</available>
  <source>
  </source>
  <target>
    <path>/srv/p</path>
    <permissions>
      <mode>0755</mode>
      <owner>0</owner>
      <group>0</group>
    </permissions>
  </target>
</pool>"""


def test_volatile_elements_uuid_and_unrequested_permissions_are_dropped():
    requested = build_pool_element('p', 'dir', target='/srv/p/')
    assert normalised_xml(parse_xml(LIBVIRT_DIR_POOL), requested) == normalised_xml(requested)


def test_a_requested_uuid_is_compared():
    actual = parse_xml(LIBVIRT_DIR_POOL)
    same = build_pool_element('p', 'dir', target='/srv/p', uuid='1FE18640-6D19-48A1-9D25-A3683DCDEC29')
    other = build_pool_element('p', 'dir', target='/srv/p', uuid='00000000-6d19-48a1-9d25-a3683dcdec29')
    assert normalised_xml(actual, same) == normalised_xml(same)
    assert normalised_xml(actual, other) != normalised_xml(other)


@pytest.mark.parametrize('permissions, equal', [
    (dict(mode='0755'), True), (dict(mode='755'), True), (dict(mode=0o755), True), (dict(mode='0755', owner='0'), True),
    (dict(mode='0700'), False), (dict(owner='0', group='0'), True), (dict(group='1'), False),
])
def test_only_requested_permission_fields_are_compared(permissions, equal):
    requested = build_pool_element('p', 'dir', target='/srv/p', **permissions)
    assert (normalised_xml(parse_xml(LIBVIRT_DIR_POOL), requested) == normalised_xml(requested)) is equal


def test_permissions_can_be_left_out_of_the_comparison():
    requested = build_pool_element('p', 'dir', target='/srv/p', mode='0700')
    assert normalised_xml(parse_xml(LIBVIRT_DIR_POOL), requested, permissions=False) == normalised_xml(requested, permissions=False)


@pytest.mark.parametrize('pool_type, source, filled', [
    ('fs', dict(device=['/dev/sdb1']), '<format type="auto" />'),
    ('netfs', dict(host=['nfs'], dir='/export/'), '<format type="auto" />'),
    ('logical', dict(device=['/dev/sdc']), '<name>p</name>'),
    ('logical', dict(name='vg'), '<format type="lvm2" />'),
    ('disk', dict(device=['/dev/sdd']), '<format type="unknown" />'),
])
def test_libvirt_defaults_are_written_out_on_both_sides(pool_type, source, filled):
    target = None if pool_type == 'logical' else '/srv/p'
    requested = normalised_xml(build_pool_element('p', pool_type, target=target, source=source))
    assert filled in requested
    explicit = dict(source)
    if filled.startswith('<format'):
        explicit['format'] = filled.split('"')[1]
    assert normalised_xml(build_pool_element('p', pool_type, target=target, source=explicit)) == requested


def test_logical_target_defaults_to_the_volume_group_device_directory():
    requested = build_pool_element('p', 'logical', source=dict(name='vg'))
    assert '<path>/dev/vg</path>' in normalised_xml(requested)
    assert normalised_xml(requested) == normalised_xml(build_pool_element('p', 'logical', target='/dev/vg', source=dict(name='vg')))


def test_not_a_pool_is_refused():
    with pytest.raises(LibvirtModuleError, match='<pool> root element, found <domain>'):
        normalise_pool_element(parse_xml('<domain/>'))


# --------------------------------------------------------------------------- round trip through libvirtd
@pytest.fixture
def conn():
    if not HAS_LIBVIRT:
        components.missing('libvirt-python')
    try:
        connection = LibvirtConnection(URI)
        handle = connection.open()
    except LibvirtModuleError as exc:
        components.missing('libvirtd', exc)
    yield handle
    connection.close()


def _unique(kind):
    return 'kvmstorage_test_unit_%s_%s' % (kind, uuid_module.uuid4().hex[:8])


def _round_trip_cases(tmp_dir):
    return [
        ('dir', dict(target=os.path.join(tmp_dir, 'dir'))),
        ('dir', dict(target=os.path.join(tmp_dir, 'dir') + '//', mode='0700', owner='root', group='0')),
        ('fs', dict(target=os.path.join(tmp_dir, 'fs'), source=dict(device=['/dev/kvmstorage-test-none']))),
        ('fs', dict(target=os.path.join(tmp_dir, 'fs'), source=dict(device=['/dev/kvmstorage-test-none'], format='ext4'))),
        ('netfs', dict(target=os.path.join(tmp_dir, 'nfs'),
                       source=dict(host=['nfs.example.com'], port=2049, dir='/export/', format='nfs'))),
        ('logical', dict(source=dict(name='kvmstorage_test_vg', device=['/dev/kvmstorage-test-pv']))),
        ('disk', dict(target='/dev', source=dict(device=['/dev/kvmstorage-test-disk'], format='gpt'))),
        ('iscsi', dict(target='/dev/disk/by-path', source=dict(
            host=['iscsi.example.com'], port=3260, device=['iqn.2013-06.com.example:pool'],
            initiator='iqn.2013-06.com.example:client',
            auth=dict(type='chap', username='u', secret_usage='kvmstorage_test'))))
    ]


@pytest.mark.parametrize('index', range(8))
def test_what_libvirt_reports_after_define_equals_the_request(conn, tmp_path, index):
    pool_type, options = _round_trip_cases(str(tmp_path))[index]
    name = _unique(pool_type)
    requested = build_pool_element(name, pool_type, **options)
    pool = conn.storagePoolDefineXML(canonical_xml(requested), 0)
    try:
        for flags in (0, 1):  # live and inactive (VIR_STORAGE_XML_INACTIVE) definitions
            reported = parse_xml(pool.XMLDesc(flags))
            assert normalised_xml(reported, requested) == normalised_xml(requested)
        changed_options = dict(options, target='/srv/elsewhere')
        changed = build_pool_element(name, pool_type, **changed_options)
        assert normalised_xml(parse_xml(pool.XMLDesc(0)), changed) != normalised_xml(changed)
    finally:
        pool.undefine()


def test_a_started_dir_pool_still_equals_the_request(conn, tmp_path):
    name = _unique('dir')
    requested = build_pool_element(name, 'dir', target=str(tmp_path / 'pool'))
    (tmp_path / 'pool').mkdir()
    pool = conn.storagePoolDefineXML(canonical_xml(requested), 0)
    try:
        pool.create(0)
        try:
            live = parse_xml(pool.XMLDesc(0))
            assert live.find('target/permissions/mode') is not None  # libvirt filled them in from the directory
            assert normalised_xml(live, requested) == normalised_xml(requested)
        finally:
            pool.destroy()
    finally:
        pool.undefine()
