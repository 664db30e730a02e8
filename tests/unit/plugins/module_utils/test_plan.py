# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plan vocabulary the backends share: what a plan reports as changed, its actions, result fields and diff."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import pickle

import pytest

from ansible_collections.kvm.storage.plugins.module_utils._plan import Action, Plan


def test_an_action_reads_its_arguments_as_attributes():
    action = Action('attach', 'attach disk vdb', view='live', element=None)
    assert (action.kind, action.description, action.view, action.element) == ('attach', 'attach disk vdb', 'live', None)
    assert action.args == {'view': 'live', 'element': None} and action.changes
    with pytest.raises(AttributeError, match="no attribute or argument 'missing'"):
        getattr(action, 'missing')


def test_an_action_may_have_arguments_named_like_its_own_fields():
    # As the snapshot backend's redefinition does: an argument named like a positional-only parameter goes to args.
    # pylint: disable-next=kwarg-superseded-by-positional-arg
    action = Action('redefine', 'change the description of snapshot s', description='new', kind='snapshot')
    assert (action.kind, action.description) == ('redefine', 'change the description of snapshot s')
    assert action.args == {'description': 'new', 'kind': 'snapshot'}


def test_an_action_survives_pickling():
    copy = pickle.loads(pickle.dumps(Action('create', 'create image', size=3)))
    assert (copy.kind, copy.size) == ('create', 3)


def test_a_plan_without_actions_changes_nothing():
    plan = Plan([], {'state': 'absent'}, {'state': 'absent'})
    assert not plan.changed and plan.result() == {'changed': False, 'actions': []}
    assert plan.differences == [] and plan.warnings == [] and plan.kinds() == []


def test_an_action_that_changes_nothing_is_carried_but_not_reported():
    plan = Plan([Action('refresh', 'refresh pool p', changes=False)], {}, {})
    assert not plan.changed and plan.kinds() == ['refresh'] and plan.descriptions() == []
    plan.actions.insert(0, Action('start', 'start pool p'))
    assert plan.changed and plan.descriptions() == ['start pool p']


def test_the_result_carries_the_reported_fields_and_the_warnings_as_notes():
    plan = Plan([Action('define', 'define vm')], {}, {}, warnings=['w'], drift=[], restart_pending=True)
    assert plan.restart_pending and plan.drift == []
    assert plan.result() == {'changed': True, 'actions': ['define vm'], 'drift': [], 'restart_pending': True}
    notes = plan.result(notes=True)['notes']
    assert notes == ['w'] and notes is not plan.warnings
    with pytest.raises(AttributeError, match="no attribute or reported field 'target'"):
        getattr(plan, 'target')


def test_the_diff_is_the_views_themselves_or_rendered_with_headers():
    before, after = {'state': 'absent'}, {'state': 'present'}
    plan = Plan([Action('create', 'create x')], before, after)
    raw = plan.diff()
    assert raw == {'before': before, 'after': after} and raw['after'] is after
    rendered = plan.diff(header='pool p', render=lambda view: 'state: %s\n' % view['state'])
    assert rendered == {'before': 'state: absent\n', 'after': 'state: present\n',
                        'before_header': 'pool p', 'after_header': 'pool p'}
