# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small YAML emitter (standard library only) for the documents of a cloud-init seed, so that the managed host
needs no PyYAML.

Block style, keys sorted, two-space indentation. A string is written plain only when YAML 1.1 and 1.2 both read it
back as that same string (no bool, null or number look-alike, no indicator character); otherwise double-quoted with
YAML escapes, or as a literal block (``|``) when it spans lines. The same value always gives the same text.

Private to this collection (the leading underscore): no compatibility promise.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import math
import re

_PLAIN = re.compile(r'\A[A-Za-z_/][A-Za-z0-9_./+@-]*\Z')
# YAML 1.1 booleans and nulls (read case-insensitively by some loaders): quoted even though 1.2 would read them plain
_RESERVED = frozenset(('y', 'yes', 'n', 'no', 'true', 'false', 'on', 'off', 'null', '~'))
# characters YAML may hold unescaped (YAML 1.2 5.1, c-printable), besides those escaped below
_NOT_PRINTABLE = re.compile('[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]')
# YAML 1.1 line breaks besides \n (a literal block would turn them into \n), and the byte order mark
_NOT_IN_LITERAL = ('\r', '\x85', '\u2028', '\u2029', '\ufeff')
_ESCAPES = {'\\': '\\\\', '"': '\\"', '\n': '\\n', '\t': '\\t', '\r': '\\r', '\x00': '\\0', '\x07': '\\a',
            '\x08': '\\b', '\x0b': '\\v', '\x0c': '\\f', '\x1b': '\\e', '\x85': '\\N', '\xa0': '\\_',
            '\u2028': '\\L', '\u2029': '\\P'}


class YAMLEmitError(ValueError):
    """A value that has no YAML form here (a type other than dict, list, str, int, float, bool, None)."""


def _escape(character):
    if character in _ESCAPES:
        return _ESCAPES[character]
    code = ord(character)
    if _NOT_PRINTABLE.match(character) or code == 0xfeff:
        return '\\x%02X' % code if code < 0x100 else ('\\u%04X' % code if code < 0x10000 else '\\U%08X' % code)
    return character


def double_quoted(text):
    return '"' + ''.join(_escape(c) for c in text) + '"'


def _plain_ok(text):
    return bool(_PLAIN.match(text)) and text.lower() not in _RESERVED


def _literal_ok(text):
    """A literal block keeps every character: printable, no other line break, no trailing blank line or space, and a
    first non-empty line that does not start with a space (else an indentation indicator would be needed)."""
    if '\n' not in text.rstrip('\n') or _NOT_PRINTABLE.search(text) or any(c in text for c in _NOT_IN_LITERAL):
        return False
    first = text.lstrip('\n')
    return not first.startswith((' ', '\t')) and not text.endswith('\n\n') and text.rstrip('\n') == text.rstrip()


def scalar(value):
    """The YAML text of a scalar (one line)."""
    if value is None:
        return 'null'
    if value is True:
        return 'true'
    if value is False:
        return 'false'
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return '.nan'
        if math.isinf(value):
            return '.inf' if value > 0 else '-.inf'
        mantissa, exponent, power = repr(value).partition('e')
        # YAML 1.1 reads a float only with a dot in its mantissa (1.0e+300, not 1e+300)
        return (mantissa if '.' in mantissa else mantissa + '.0') + exponent + power
    if isinstance(value, str):
        return value if _plain_ok(value) else double_quoted(value)
    raise YAMLEmitError('cannot write a %s as YAML (expected a dictionary, list, string, number, boolean or null)'
                        % type(value).__name__)


def _key(key):
    if isinstance(key, (dict, list)):
        raise YAMLEmitError('cannot write a %s as a YAML key' % type(key).__name__)
    return scalar(key)


def _block(value, indent):
    """Lines of ``value`` (a dict or a list) in block style at ``indent`` spaces."""
    pad = ' ' * indent
    lines = []
    if isinstance(value, dict):
        items = sorted(value.items(), key=lambda item: (str(type(item[0])), str(item[0])))
        for key, item in items:
            lines.extend(_entry(pad + _key(key) + ':', item, indent + 2))
    else:
        for item in value:
            if isinstance(item, (dict, list)) and item:
                nested = _block(item, indent + 2)
                lines.append(pad + '- ' + nested[0][indent + 2:])
                lines.extend(nested[1:])
            else:
                lines.extend(_entry(pad + '-', item, indent + 2))
    return lines


def _entry(head, value, indent):
    """``head`` (``key:`` or ``-``) followed by ``value``: on the same line for a scalar, below it otherwise."""
    if isinstance(value, dict) or isinstance(value, list):
        if not value:
            return [head + (' {}' if isinstance(value, dict) else ' []')]
        return [head] + _block(value, indent)
    if isinstance(value, str) and _literal_ok(value):
        chomp = '' if value.endswith('\n') else '-'
        body = value[:-1] if value.endswith('\n') else value
        return [head + ' |' + chomp] + [(' ' * indent + line) if line else '' for line in body.split('\n')]
    return [head + ' ' + scalar(value)]


def dump(value, header=None):
    """The YAML document of ``value`` (a dict), with ``header`` (such as ``#cloud-config``) as its first line."""
    if isinstance(value, dict) and value:
        lines = _block(value, 0)
    elif isinstance(value, (dict, list)):
        lines = _block(value, 0) if value else ['{}' if isinstance(value, dict) else '[]']
    else:
        lines = [scalar(value)]
    return ''.join(line + '\n' for line in ([header] if header else []) + lines)
