# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The seed's YAML emitter: every document it writes reads back through PyYAML (YAML 1.1, as cloud-init reads it)
as the value it was given, and the same value always gives the same text."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import random

import pytest
import yaml

from ansible_collections.kvm.storage.plugins.module_utils import _seed_yaml

CLOUD_CONFIG = {
    "hostname": "web1",
    "users": [
        "default",
        {"name": "ops", "groups": [], "sudo": "ALL=(ALL) NOPASSWD:ALL", "lock_passwd": False,
         "ssh_authorized_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBxQ ops@example.com"]},
    ],
    "packages": ["qemu-guest-agent", "nginx"],
    "write_files": [
        {"path": "/etc/motd", "content": "hello\n  indented\n\nlast line\n", "permissions": "0644"},
        {"path": "/etc/x.conf", "content": "no final newline\nsecond"},
    ],
    "runcmd": [["systemctl", "enable", "--now", "nginx"], "echo done > /tmp/done"],
    "growpart": {"mode": "auto", "devices": ["/"], "ignore_growroot_disabled": False},
    "swap": {"size": 0, "maxsize": 1.5},
    "bootcmd": [],
    "mounts": {},
    "timezone": None,
}

# strings YAML 1.1 or 1.2 would read as something else, or that need quoting or escaping
TRICKY = ["yes", "No", "ON", "off", "y", "n", "true", "False", "null", "Null", "~", "", " ", " lead", "trail ",
          "1", "-1", "1.5", "1e3", "0x1F", "0o17", "012", "1_000", ".inf", "-.inf", ".nan", "2001-12-14", "12:30:00",
          "1:20", "a: b", "a #b", "#comment", "- item", "? key", "[list]", "{map}", "*alias", "&anchor", "!tag",
          "%directive", "@at", "`tick", "|pipe", ">fold", "'single'", '"double"', "back\\slash", "tab\tin",
          "new\nline", "cr\rhere", "crlf\r\n", "\x00nul", "\x07bell", "\x1bescape", "\x7fdel", "\x85nel",
          "\xa0nbsp", "\u2028ls", "\u2029ps", "\ufeffbom", "\ud7ff", "\ue000", "é", "日本語", "😀", "---", "...",
          "=", "<<", "a\n\n", "\n", "\n\nb", "x\n ", "b\n", "-", ":", "plain-word", "/path/to/file", "user@host"]


def roundtrip(value, header=None):
    text = _seed_yaml.dump(value, header)
    assert yaml.safe_load(text) == value, text
    return text


def test_a_cloud_config_reads_back_with_its_header_line():
    text = roundtrip(CLOUD_CONFIG, "#cloud-config")
    assert text.startswith("#cloud-config\n")
    assert "  - content: |\n      hello\n        indented\n\n      last line\n" in text


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_strings_read_back_as_strings(text):
    roundtrip({"key": text, "list": [text], text: "as a key"})


def test_scalars_keep_their_types():
    roundtrip({"int": 3, "negative": -7, "big": 2 ** 70, "float": 0.1, "exp": 1e300, "small": 1e-7,
               "negative_zero": -0.0, "whole": 2.0, "inf": float("inf"), "minus_inf": float("-inf"),
               "true": True, "false": False, "none": None})


def test_nested_and_empty_collections():
    roundtrip({"a": [[1, [2, []]], {}, {"b": {"c": [{}]}}], "e": [], "f": {}, "g": [[{"x": [1]}]]})


def test_keys_are_sorted_and_the_text_is_deterministic():
    first = _seed_yaml.dump({"b": 1, "a": {"d": 2, "c": 3}})
    assert first == "a:\n  c: 3\n  d: 2\nb: 1\n"
    assert _seed_yaml.dump({"a": {"c": 3, "d": 2}, "b": 1}) == first


def test_strings_that_need_no_quotes_are_plain():
    assert _seed_yaml.dump({"hostname": "web-1", "path": "/etc/motd"}) == "hostname: web-1\npath: /etc/motd\n"
    assert _seed_yaml.dump({"a": "yes"}) == 'a: "yes"\n'


def test_random_strings_read_back():
    chance = random.Random(1282)
    alphabet = "ab :#-?'\"\\\n\t\r\x00\x85\u2028é😀{}[],&*!|>%@`"
    for _dummy in range(5000):
        text = "".join(chance.choice(alphabet) for _dummy in range(chance.randint(0, 12)))
        roundtrip({"k": text, "l": [text, {text: text}]})


@pytest.mark.parametrize("value", [{"a": {1, 2}}, {"a": b"bytes"}, {"a": object()}, {(1, 2): "tuple key"}])
def test_values_without_a_yaml_form_are_refused(value):
    with pytest.raises(_seed_yaml.YAMLEmitError):
        _seed_yaml.dump(value)
