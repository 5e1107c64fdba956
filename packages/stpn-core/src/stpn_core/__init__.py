"""Short-Term Plasticity Neurons (STPN) for PyTorch, with parameter-matched baselines.

``STPN`` is used like ``torch.nn.LSTM``: ``out, state = STPN(37, 11)(x)``.
"""

from stpn_core.base import RecurrentModel
from stpn_core.energy import energy_per_sequence, energy_per_step, synaptic_energy
from stpn_core.stpn import STPN, STPNCell, STPNLinear, STPNState

__version__ = "0.1.0"

__all__ = [
    "STPN",
    "STPNCell",
    "STPNLinear",
    "STPNState",
    "RecurrentModel",
    "energy_per_sequence",
    "energy_per_step",
    "synaptic_energy",
]
