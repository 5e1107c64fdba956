"""The STPN modules and their options: :class:`STPNCell`, :class:`STPN` and :class:`STPNLinear`.

Each synapse has a long-term weight ``W`` learned by gradient descent and a short-term memory
``F`` that is written by a Hebbian rule during the sequence and forgets at a learned rate
(``weight_lambda``, Λ); ``weight_gamma`` (Γ) scales the Hebbian writes. Both are learned per
synapse. :mod:`.reference` defines one step; :mod:`.autograd` runs whole sequences fast. The
options below select the paper's variants; the defaults are the paper's STPN.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch
from torch import Tensor, nn

from stpn_core.base import (
    Device,
    DType,
    RecurrentModel,
    check_bool,
    check_choice,
    check_positive_int,
)
from stpn_core.stpn import autograd, reference
from stpn_core.stpn.loop import unsupported_reason
from stpn_core.stpn.reference import ACTIVATIONS


class STPNState(NamedTuple):
    """State of an STPN layer: ``h`` ``(B, H)``, ``F`` ``(B, H, D_p)``, and the plastic bias
    ``F_bias`` ``(B, H)`` when ``plastic_bias=True`` (``None`` otherwise)."""

    h: Tensor
    F: Tensor
    F_bias: Tensor | None = None


CHOICES: dict[str, tuple[str, ...]] = {
    "rule": ("hebb", "oja"),
    "update": ("stp", "prompt_decay"),
    "norm": ("G", "F", "none"),
    "norm_timing": ("pre", "post"),
    "plastic_inputs": ("all", "input", "hidden"),
    "presynaptic": ("previous", "current"),
    "activation": tuple(ACTIVATIONS),
}


def check_clamp(clamp: float | None) -> None:
    """A clamp is ``None`` (no clamp) or a positive finite number."""
    if clamp is None:
        return
    if isinstance(clamp, bool) or not isinstance(clamp, int | float):
        raise TypeError(f"clamp: expected None or a positive number, got {type(clamp).__name__}")
    if not math.isfinite(clamp) or clamp <= 0:
        raise ValueError(f"clamp: expected None or a positive finite number, got {clamp}")


def check_init(lambda_init: tuple[float, float], gamma_init_scale: float) -> None:
    """Λ is drawn from ``U(lambda_init)``; Γ from ``U(±gamma_init_scale/√fan)``."""
    if (
        not isinstance(lambda_init, tuple | list)
        or len(lambda_init) != 2
        or not lambda_init[0] <= lambda_init[1]
    ):
        raise ValueError(f"lambda_init: expected (low, high) with low <= high, got {lambda_init!r}")
    if not isinstance(gamma_init_scale, int | float) or gamma_init_scale < 0:
        raise ValueError(f"gamma_init_scale: expected a number >= 0, got {gamma_init_scale!r}")


class _STPNBase(RecurrentModel):
    """Parameters, options and the single-step math shared by :class:`STPNCell` and :class:`STPN`.

    Options (keyword-only; defaults are the paper's STPN):
        per_synapse: one Λ and Γ per synapse (``True``) or a single learned scalar each.
        rule: ``"hebb"`` (``Δ = h ⊗ u``) or ``"oja"`` (``Δ_ij = h_i (u_j − Σ_k h_k F_kj)``).
        update: ``"stp"`` (``Λ⊙F + Γ⊙Δ``) or ``"prompt_decay"`` (``Λ⊙(F + Γ⊙Δ)``).
        norm: divide the efficacy ``W + F`` by its row norm (``"G"``), only ``F`` by its own row
            norm (``"F"``), or nothing (``"none"``).
        norm_timing: ``"pre"`` rescales F by the norm before its update; ``"post"`` updates F,
            then divides the new F by the row norm of the new efficacy (the paper's maze STPN).
        clamp: clamp F to ``±clamp`` after the update (``None``: no clamp).
        plastic_inputs: which presynaptic columns have short-term memory: ``"all"``,
            ``"input"`` (external input only) or ``"hidden"`` (recurrent only).
        plastic_bias: add a plastic bias with its own ``bias_lambda``/``bias_gamma``, whose
            Hebbian term is the postsynaptic activity ``h_t``.
        presynaptic: ``"previous"`` uses ``u_t = [x_t; h_{t-1}]`` in the Hebbian term;
            ``"current"`` uses ``[x_t; h_t]``, as the paper's associative-retrieval runs did.
        activation: ``"tanh"``, ``"sigmoid"``, ``"relu"`` or ``"identity"``.
        lambda_init: Λ is initialised ``U(low, high)`` (paper: ``(0, 1)``).
        gamma_init_scale: Γ is initialised ``U(±scale/√H)`` (paper: ``0.001``).
    """

    state_type = STPNState

    recurrent = True
    """Whether the presynaptic vector includes the previous hidden state (STPNr) or not (STPNf)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, *,
                 per_synapse: bool = True, rule: str = "hebb", update: str = "stp",
                 norm: str = "G", norm_timing: str = "pre", clamp: float | None = None,
                 plastic_inputs: str = "all", plastic_bias: bool = False,
                 presynaptic: str = "previous", activation: str = "tanh",
                 lambda_init: tuple[float, float] = (0.0, 1.0), gamma_init_scale: float = 0.001,
                 device: Device = None, dtype: DType = None) -> None:
        super().__init__(input_size, hidden_size, bias)
        input_size, hidden_size = self.input_size, self.hidden_size
        options = {
            "rule": rule,
            "update": update,
            "norm": norm,
            "norm_timing": norm_timing,
            "plastic_inputs": plastic_inputs,
            "presynaptic": presynaptic,
            "activation": activation,
        }
        for name, value in options.items():
            check_choice(name, value, CHOICES[name])
        check_clamp(clamp)
        check_init(lambda_init, gamma_init_scale)
        if norm_timing == "post" and norm == "none":
            raise ValueError('norm_timing: "post" needs a normalisation; got norm="none"')
        if not self.recurrent and plastic_inputs == "hidden":
            raise ValueError('plastic_inputs: a feed-forward layer has no "hidden" inputs')
        if plastic_bias and not bias:
            raise ValueError("plastic_bias: needs bias=True")
        self.per_synapse, self.clamp, self.plastic_bias = per_synapse, clamp, plastic_bias
        self.rule, self.update, self.norm, self.norm_timing = rule, update, norm, norm_timing
        self.plastic_inputs, self.presynaptic = plastic_inputs, presynaptic
        self.activation = activation
        self.lambda_init, self.gamma_init_scale = tuple(lambda_init), float(gamma_init_scale)

        total = input_size + hidden_size if self.recurrent else input_size
        start, stop = {"all": (0, total), "input": (0, input_size), "hidden": (input_size, total)}[
            plastic_inputs
        ]
        self.plastic_columns = slice(start, stop)
        # F covers only the plastic columns; padding it with zeros gives W's width.
        self._plastic_padding = (start, total - stop)

        factory = {"device": device, "dtype": dtype}
        plastic_shape = (hidden_size, stop - start) if per_synapse else ()
        self.weight = nn.Parameter(torch.empty(hidden_size, total, **factory))
        self.bias = nn.Parameter(torch.empty(hidden_size, **factory)) if bias else None
        self.weight_lambda = nn.Parameter(torch.empty(plastic_shape, **factory))
        self.weight_gamma = nn.Parameter(torch.empty(plastic_shape, **factory))
        bias_shape = (hidden_size,) if per_synapse else ()
        if plastic_bias:
            self.bias_lambda = nn.Parameter(torch.empty(bias_shape, **factory))
            self.bias_gamma = nn.Parameter(torch.empty(bias_shape, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """docs/model.md §1.2/§2.1: W, b ~ U(±s); Λ ~ U(lambda_init); Γ ~ U(±gamma_init_scale·s).

        ``s = 1/√H`` for the recurrent layer and ``1/√I`` for the feed-forward one.
        """
        bound = 1.0 / math.sqrt(self.hidden_size if self.recurrent else self.input_size)
        low, high = self.lambda_init
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                self.bias.uniform_(-bound, bound)
            lambdas = [self.weight_lambda] + ([self.bias_lambda] if self.plastic_bias else [])
            gammas = [self.weight_gamma] + ([self.bias_gamma] if self.plastic_bias else [])
            for parameter in lambdas:
                parameter.uniform_(low, high)
            for parameter in gammas:
                parameter.uniform_(-self.gamma_init_scale * bound, self.gamma_init_scale * bound)

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, bias={self.bias is not None}, "
            f"per_synapse={self.per_synapse}, rule={self.rule!r}, update={self.update!r}, "
            f"norm={self.norm!r}, norm_timing={self.norm_timing!r}, clamp={self.clamp}, "
            f"plastic_inputs={self.plastic_inputs!r}, plastic_bias={self.plastic_bias}, "
            f"presynaptic={self.presynaptic!r}, activation={self.activation!r}"
        )

    def state_shapes(self) -> dict[str, tuple[int, ...] | None]:
        plastic = self.plastic_columns.stop - self.plastic_columns.start
        H = self.hidden_size
        return {"h": (H,), "F": (H, plastic), "F_bias": (H,) if self.plastic_bias else None}


class STPNCell(_STPNBase):
    """One STPN step: ``state = cell(x_t, state)``, with ``x_t`` of shape ``(B, I)``.

    The new hidden output is ``state.h``. See :class:`_STPNBase` for the options.
    """

    def forward(self, x: Tensor, state: STPNState | None = None) -> STPNState:  # type: ignore[override]
        if isinstance(x, Tensor) and x.dim() != 2:
            raise ValueError(f"x: expected a 2-D tensor (B, I), got shape {tuple(x.shape)}")
        x_seq, state = self._prepare_input(x.unsqueeze(1) if isinstance(x, Tensor) else x, state)
        return reference.step(self, x_seq[:, 0], state)

    def energy(self, x: Tensor, state: STPNState | None = None) -> Tensor:
        """Energy of the step ``(B,)``, from the state before it."""
        with torch.no_grad():
            x_seq, state = self._prepare_input(x.unsqueeze(1), state)
            return reference.step_energy(self, x_seq[:, 0], state)


class STPN(_STPNBase):
    """STPN layer over a sequence, used like ``torch.nn.LSTM`` with one layer.

    Args:
        input_size: features ``I`` of each input step.
        hidden_size: number of STPN units ``H``.
        bias: learn a bias ``b`` (``(H,)``).
        batch_first: inputs and outputs are ``(B, T, ·)`` (default) rather than ``(T, B, ·)``.
        **options: see :class:`_STPNBase` (rule, norm, clamp, ...).

    Shapes:
        ``x``: ``(B, T, I)``; ``state``: :class:`STPNState` or ``None`` (zeros);
        returns ``output`` ``(B, T, H)`` (every ``h_t``) and the final :class:`STPNState`, which
        continues the sequence when passed to the next call.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 batch_first: bool = True, *, implementation: str = "auto",
                 bptt_chunk: int | None = None, bptt_mode: str = "checkpoint",
                 **options: object) -> None:
        """``implementation``: ``"fast"`` (the fused loop with its hand-derived backward,
        :mod:`.autograd`), ``"reference"`` (the plain loop over :func:`.reference.step`, the
        definition) or ``"auto"`` (fast when it covers the options, else the reference with one
        warning).

        ``bptt_chunk``: split long sequences into chunks of this many steps. With
        ``bptt_mode="checkpoint"`` gradients stay exact and only each chunk's starting state is
        kept (the chunk is recomputed in the backward); with ``"truncate"`` the state is detached
        between chunks (truncated BPTT: gradients do not cross chunk boundaries).
        """
        super().__init__(input_size, hidden_size, bias, **options)  # type: ignore[arg-type]
        check_bool("batch_first", batch_first)
        self.batch_first = batch_first
        check_choice("implementation", implementation, ("auto", "fast", "reference"))
        check_choice("bptt_mode", bptt_mode, ("checkpoint", "truncate"))
        if bptt_chunk is not None:
            check_positive_int("bptt_chunk", bptt_chunk)
        reason = unsupported_reason(self)
        if implementation == "fast" and reason is not None:
            raise ValueError(
                f'implementation: "fast" does not support {reason}; use "auto" or "reference"'
            )
        self.implementation, self.bptt_chunk, self.bptt_mode = implementation, bptt_chunk, bptt_mode
        self._fallback_warned: set[str] = set()

    def forward(self, x: Tensor, state: STPNState | None = None) -> tuple[Tensor, STPNState]:
        fused = self._fused()
        # The fused loop checks x and the state for NaN and infinity itself, as it reads them
        # (autograd.sequence), and starts from zeros without a state built for it.
        x, state = self._prepare_input(x, state, finite=not fused, zeros=not fused)
        if self.bptt_mode == "checkpoint" or self.bptt_chunk is None:
            output, state = self._run(fused, x, state, self.bptt_chunk, check_state=True)
            return self._finish_output(output), state
        outputs = []
        for t0 in range(0, x.shape[1], self.bptt_chunk):
            if t0 > 0:  # truncated BPTT: no gradient across the chunk boundary
                state = type(state)(*(None if s is None else s.detach() for s in state))
            chunk = x[:, t0 : t0 + self.bptt_chunk]
            out, state = self._run(fused, chunk, state, None, check_state=t0 == 0)
            outputs.append(out)
        return self._finish_output(torch.cat(outputs, dim=1)), state

    def _run(
        self, fused: bool, x: Tensor, state: STPNState | None, chunk: int | None,
        check_state: bool,
    ) -> tuple[Tensor, STPNState]:
        """``check_state``: the fused loop checks the state given by the caller, not one of its
        own (a later chunk's)."""
        if not fused:
            return reference.sequence(self, x, state, chunk)
        return autograd.sequence(self, x, state, chunk, check_state=check_state)

    def _fused(self) -> bool:
        """Whether this call runs the fused loop; warns once per reason when "auto" cannot
        (the options may have been changed since construction)."""
        if self.implementation == "reference":
            return False
        reason = unsupported_reason(self)
        if reason is None:
            return True
        if self.implementation == "fast":
            raise ValueError(f'implementation: "fast" does not support {reason}')
        if reason not in self._fallback_warned:
            self._fallback_warned.add(reason)
            warnings.warn(
                f"STPN: the fast path does not support {reason}; using the slower "
                'reference loop (pass implementation="reference" to silence this)',
                stacklevel=3,
            )
        return False

    def energy(self, x: Tensor, state: STPNState | None = None) -> Tensor:
        """Energy of every step ``(B, T)``, summed over units, each from the state before it."""
        with torch.no_grad():
            x, state = self._prepare_input(x, state)
            energies = []
            for t in range(x.shape[1]):
                energies.append(reference.step_energy(self, x[:, t], state))
                state = reference.step(self, x[:, t], state)
            return torch.stack(energies, dim=1)


class STPNLinear(STPN):
    """Feed-forward STPN layer (the paper's STPNf) over a sequence.

    No recurrent input: the presynaptic vector is ``x_t`` alone, ``W``, ``Λ``, ``Γ`` are
    ``(H, I)``, and the layer is stateful only through its synaptic memory ``F``. Initialisation
    scales by ``1/√I`` (docs/model.md §2.1). The bias is applied in every variant (the original code
    dropped it when normalising). Same options as :class:`STPN`, except that
    ``plastic_inputs="hidden"`` does not exist; ``norm="none"`` with ``clamp=0.1`` is the paper's
    MuJoCo STPNf, ``norm="G"`` its associative-retrieval and maze ablations.
    """

    recurrent = False
