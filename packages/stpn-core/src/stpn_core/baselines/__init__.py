"""Baselines of the STPN paper, each with the sequence protocol of :class:`RecurrentModel`
(``forward(x, state=None) -> (output, state)``, ``initial_state``, ``energy``)."""

from stpn_core.baselines.fast_weights import FastWeights, FastWeightsState
from stpn_core.baselines.hebbff import HebbFF, HebbFFState
from stpn_core.baselines.lstm import LSTM, LSTMState
from stpn_core.baselines.mlp import MLP, MLPState
from stpn_core.baselines.plasticity import DifferentiablePlasticity, PlasticityState
from stpn_core.baselines.rnn import RNN, RNNState

__all__ = [
    "RNN",
    "LSTM",
    "MLP",
    "DifferentiablePlasticity",
    "FastWeights",
    "FastWeightsState",
    "HebbFF",
    "HebbFFState",
    "LSTMState",
    "MLPState",
    "PlasticityState",
    "RNNState",
]
