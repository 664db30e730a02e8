# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sizes and creation options, parsed the way qemu-img parses them.

``parse_size`` accepts what ``qemu-img create`` accepts for SIZE: a number of
bytes, optionally with a fraction and a power-of-1024 suffix (``b k K M G T P
E``, case-insensitive), or a hexadecimal number.  ``normalize_options`` turns a
``-o`` dictionary as users write it (YAML gives ints, bools, floats and
strings) into the typed values drivers expect.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import re

from ..errors import InvalidOptionError

# qemu-img refuses sizes above INT64_MAX.
MAX_SIZE = (1 << 63) - 1
SECTOR_SIZE = 512

_SUFFIX_SHIFT = {"": 0, "b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}
_DECIMAL_SIZE = re.compile(r"^\s*\+?([0-9]+)(?:\.([0-9]*))?([bkmgtpe]?)\Z", re.IGNORECASE)
_HEX_SIZE = re.compile(r"^\s*\+?0[xX]([0-9a-fA-F]+)([kmgtpe]?)\Z", re.IGNORECASE)

# Types of the creation options qemu-img knows, by option name (qemu-img spelling).
BOOL_OPTIONS = frozenset((
    "lazy_refcounts", "extended_l2", "data_file_raw", "encryption", "nocow",
    "static", "zeroed_grain", "force_size", "block_state_zero", "compat6",
))
SIZE_OPTIONS = frozenset((
    "size", "cluster_size", "block_size", "log_size", "extent_size_hint",
))
INT_OPTIONS = frozenset((
    "refcount_bits",
))
STRING_OPTIONS = frozenset((
    "compat", "preallocation", "compression_type", "backing_file", "backing_fmt",
    "data_file", "subformat", "adapter_type", "hwversion", "toolsversion",
    "encrypt.format", "encrypt.key-secret", "encrypt.cipher-alg", "encrypt.cipher-mode",
    "encrypt.ivgen-alg", "encrypt.ivgen-hash-alg", "encrypt.hash-alg", "encrypt.iter-time",
))

_TRUE_WORDS = frozenset(("on", "yes", "true"))
_FALSE_WORDS = frozenset(("off", "no", "false"))


def parse_size(value, what="size"):
    """Bytes for ``value`` (int, or a qemu-img size string such as ``"10G"``).

    Raises InvalidOptionError naming ``what`` for anything qemu-img would
    refuse: negative numbers, unknown suffixes, fractions without a suffix,
    values above INT64_MAX.
    """
    if isinstance(value, bool):
        raise InvalidOptionError("%s must be a number of bytes or a size string, found %r" % (what, value))
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        size = _parse_size_string(value, what)
    else:
        raise InvalidOptionError("%s must be a number of bytes or a size string such as '10G', found %r"
                                 % (what, value))
    if size < 0 or size > MAX_SIZE:
        raise InvalidOptionError("%s must be between 0 and %d, found %r" % (what, MAX_SIZE, value))
    return size


def _parse_size_string(text, what):
    hex_match = _HEX_SIZE.match(text)
    if hex_match:
        return int(hex_match.group(1), 16) << _SUFFIX_SHIFT[hex_match.group(2).lower()]
    match = _DECIMAL_SIZE.match(text)
    if not match:
        raise InvalidOptionError("%s: invalid size %r; use a number of bytes with an optional "
                                 "k, M, G, T, P or E suffix (powers of 1024)" % (what, text))
    whole, fraction, suffix = match.group(1), match.group(2), match.group(3).lower()
    shift = _SUFFIX_SHIFT[suffix]
    if fraction and fraction.strip("0") and shift == 0:
        # qemu-img accepts a fraction only with a multiplying suffix.
        raise InvalidOptionError("%s: invalid size %r; a fraction needs a k, M, G, T, P or E suffix"
                                 % (what, text))
    multiplier = 1 << shift
    # qemu-img adds the fraction as a double, truncated: match it to the byte.
    return int(whole) * multiplier + int(float("0.%s" % (fraction or "0")) * multiplier)


def round_up(value, alignment):
    return (value + alignment - 1) // alignment * alignment


def parse_bool(value, what):
    """True/False for a bool or one of on/off, yes/no, true/false."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise InvalidOptionError("option %s expects 'on' or 'off' (or a boolean), found %r" % (what, value))


def parse_int(value, what):
    """An int from an int or a decimal/hexadecimal string."""
    if isinstance(value, bool):
        raise InvalidOptionError("option %s expects a number, found %r" % (what, value))
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            if text.lower().startswith("0x"):
                return int(text[2:], 16)
            return int(text, 10)
        except ValueError:
            pass
    raise InvalidOptionError("option %s expects a number, found %r" % (what, value))


def _option_string(name, value):
    if isinstance(value, bool):
        raise InvalidOptionError("option %s expects a string, found %r" % (name, value))
    if isinstance(value, float):
        # YAML reads compat: 1.1 as a float; compat 0.10 arrives as 0.1.
        if name == "compat" and value == 0.1:
            return "0.10"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    raise InvalidOptionError("option %s expects a string, found %r" % (name, value))


def normalize_options(options):
    """A new dict of ``-o`` options with values typed: bools, ints (sizes with
    suffixes parsed) and strings.  Options this table does not know are kept
    as given, for the driver to accept or refuse.  None values are dropped
    (an option left unset)."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise InvalidOptionError("options must be a dictionary of qemu-img -o options, found %r"
                                 % (options,))
    normalized = {}
    for name, value in options.items():
        if not isinstance(name, str):
            raise InvalidOptionError("option names must be strings, found %r" % (name,))
        if value is None:
            continue
        if name in BOOL_OPTIONS:
            normalized[name] = parse_bool(value, name)
        elif name in SIZE_OPTIONS:
            normalized[name] = parse_size(value, "option %s" % name)
        elif name in INT_OPTIONS:
            normalized[name] = parse_int(value, name)
        elif name in STRING_OPTIONS:
            normalized[name] = _option_string(name, value)
        else:
            normalized[name] = value
    return normalized
