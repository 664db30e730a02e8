# -*- coding: utf-8 -*-
# Copyright: contributors to kvm.storage
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Registry of format drivers.

Imports are static on purpose: Ansible packs into a module's payload only the
module_utils it finds in import statements.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from .raw import RawDriver
from .qcow2 import Qcow2Driver
from .vmdk import VmdkDriver
from .vdi import VdiDriver
from .vpc import VpcDriver
from .qed import QedDriver
from .qcow import QcowDriver
from .vhdx import VhdxDriver
from .parallels import ParallelsDriver
from .bochs import BochsDriver
from .cloop import CloopDriver
from .dmg import DmgDriver
from .luks import LuksDriver

DRIVERS = {
    RawDriver.format_name: RawDriver,
    Qcow2Driver.format_name: Qcow2Driver,
    VmdkDriver.format_name: VmdkDriver,
    VdiDriver.format_name: VdiDriver,
    VpcDriver.format_name: VpcDriver,
    QedDriver.format_name: QedDriver,
    QcowDriver.format_name: QcowDriver,
    VhdxDriver.format_name: VhdxDriver,
    ParallelsDriver.format_name: ParallelsDriver,
    BochsDriver.format_name: BochsDriver,
    CloopDriver.format_name: CloopDriver,
    DmgDriver.format_name: DmgDriver,
    LuksDriver.format_name: LuksDriver,
}


def driver_class(fmt, path=None):
    """The driver class for format name ``fmt``."""
    from ..errors import UnsupportedFeature
    try:
        return DRIVERS[fmt]
    except KeyError:
        raise UnsupportedFeature("unknown or unsupported image format %r (supported: %s)"
                                 % (fmt, ", ".join(sorted(DRIVERS))), path)
