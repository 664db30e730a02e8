# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plan vocabulary every mutating backend shares: a ``Plan`` is a list of ``Action`` s plus the ``before``
and ``after`` views that the comparison used.

A backend reads the state once, plans with a function that only computes and returns a ``Plan``, applies it only
outside check mode, and reports from the plan: ``changed``, ``actions`` (the descriptions, worded the same in check
mode and in a real run), the result fields the plan carries (``Plan.result``) and the diff (``Plan.diff``).

Private to this collection (the leading underscore): no compatibility promise.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class Action(object):
    """One step of a plan: its ``kind`` (create, convert, define, attach...), a ``description`` that is identical
    whether the plan is applied or only predicted (check mode), and its arguments ``args`` (also readable as
    attributes: ``action.view`` is ``action.args['view']``).

    ``changes`` is false for a step that changes nothing the task asks for (a storage pool's refresh rereads the
    storage): it is carried out, but it neither makes the task changed nor is it listed in the result's actions.
    ``kind`` and ``description`` are positional only, so that an argument may have either name (a snapshot's
    redefinition carries its new ``description``).
    """

    def __init__(self, kind, description, /, changes=True, **args):
        self.kind = kind
        self.description = description
        self.changes = changes
        self.args = args

    def __getattr__(self, name):
        # Only called for names that are not attributes; ``args`` itself may be missing while unpickling.
        args = self.__dict__.get('args')
        if args is not None and name in args:
            return args[name]
        raise AttributeError('%s has no attribute or argument %r' % (type(self).__name__, name))

    def __repr__(self):
        return 'Action(%r, %r)' % (self.kind, self.args)


class Plan(object):
    """What a task does (``actions``) and the views of the object before and after it.

    ``differences`` are what the comparison found different (what the actions resolve), ``warnings`` the notes the
    task reports, and ``reported`` the backend's own result fields, returned as they are by ``result()`` and
    readable as attributes (``plan.target``, ``plan.restart_pending``, ``plan.drift``).
    """

    def __init__(self, actions, before, after, differences=None, warnings=None, **reported):
        self.actions = actions
        self.before = before
        self.after = after
        self.differences = differences or []
        self.warnings = warnings or []
        self.reported = reported

    def __getattr__(self, name):
        reported = self.__dict__.get('reported')
        if reported is not None and name in reported:
            return reported[name]
        raise AttributeError('%s has no attribute or reported field %r' % (type(self).__name__, name))

    @property
    def changed(self):
        return any(action.changes for action in self.actions)

    def kinds(self):
        """The kinds of all actions, in order (those that change nothing included)."""
        return [action.kind for action in self.actions]

    def descriptions(self):
        """The result's ``actions``: the descriptions of the actions that change something."""
        return [action.description for action in self.actions if action.changes]

    def result(self, notes=False):
        """The result fields the plan decides: ``changed``, ``actions``, the reported fields and, with ``notes``,
        a copy of the warnings as ``notes``."""
        result = dict(self.reported, changed=self.changed, actions=self.descriptions())
        if notes:
            result['notes'] = list(self.warnings)
        return result

    def diff(self, header=None, render=None):
        """The result's ``diff``: the before and after views, rendered by ``render`` when given (the views
        themselves otherwise, not copies), with ``header`` as both headers when given."""
        if render is None:
            diff = dict(before=self.before, after=self.after)
        else:
            diff = dict(before=render(self.before), after=render(self.after))
        if header is not None:
            diff.update(before_header=header, after_header=header)
        return diff
