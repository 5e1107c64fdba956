"""The STPN: modules (:mod:`.layer`), the definition (:mod:`.reference`) and the fused loop
(:mod:`.autograd` over :mod:`.backend_c` or :mod:`.backend_torch`, sharing :mod:`.loop`)."""

from stpn_core.stpn.layer import STPN, STPNCell, STPNLinear, STPNState

__all__ = ["STPN", "STPNCell", "STPNLinear", "STPNState"]
