"""twinloop.sysid: fit a simulator's identifiable parameters to a device's captured data.

``twinloop sysid ID --data DIR`` reads captures (``twinloop run --record``, ``twinloop
stem-rates capture``), fits the parameters that a device may differ in (the system's prior in
``sim/<system>/profile.py``) from what a real device records (observations, applied
commands, timings; never ``true/...`` infos), and writes a JSON file of config overrides that
``--profile FILE`` and ``twinloop run --config FILE`` read. The system-independent pieces are
in :mod:`twinloop.sysid.base`; each system's fitter (:mod:`twinloop.sysid.stem`) is found
through :data:`~twinloop.sysid.base.FITTERS` and imported only when used.
"""

from __future__ import annotations

from twinloop.sysid.base import FITTERS, ParameterEstimate, SysidResult, fit

__all__ = ["FITTERS", "ParameterEstimate", "SysidResult", "fit"]
