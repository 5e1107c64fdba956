"""The sequence protocol every model of :mod:`stpn_core` follows, and its input checks.

Mirrors ``torch.nn.LSTM``: ``forward(x, state=None) -> (output, state)``, with the state a
``NamedTuple`` of tensors whose first dimension is the batch, so it carries over between calls
(streaming, RL). Task code relies only on this protocol, so any model can replace any other.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn


class RecurrentModel(nn.Module):
    """Base class of every sequence model: STPN, STPNLinear and the baselines.

    Subclasses set ``input_size``, ``hidden_size`` and ``batch_first`` and implement
    :meth:`initial_state`, :meth:`forward` and :meth:`energy`.
    """

    input_size: int
    hidden_size: int
    batch_first: bool

    def initial_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> NamedTuple:
        """The state at the start of a sequence (all zeros for every model here)."""
        raise NotImplementedError

    def forward(self, x: Tensor, state: NamedTuple | None = None) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def energy(self, x: Tensor, state: NamedTuple | None = None) -> Tensor:
        """Energy spent at each step, summed over units: ``(B, T)``, without gradients."""
        raise NotImplementedError

    @property
    def output_size(self) -> int:
        """Features of each output step (the hidden size for every model here)."""
        return self.hidden_size

    def _parameter_like(self) -> Tensor:
        return next(self.parameters())

    def _default_device_dtype(
        self, device: torch.device | str | None, dtype: torch.dtype | None
    ) -> tuple[torch.device, torch.dtype]:
        reference = self._parameter_like()
        return (
            torch.device(device) if device is not None else reference.device,
            dtype if dtype is not None else reference.dtype,
        )

    # -- input checks -------------------------------------------------------------------------

    def _prepare_input(self, x: Tensor, state: NamedTuple | None) -> tuple[Tensor, NamedTuple]:
        """Validate ``x`` and ``state``; return ``x`` as ``(B, T, I)`` and a state to start from."""
        check_sequence(x, self.input_size, self._parameter_like(), batch_first=self.batch_first)
        if not self.batch_first:
            x = x.transpose(0, 1)
        if state is None:
            state = self.initial_state(x.shape[0], device=x.device, dtype=x.dtype)
        else:
            check_state(state, self.initial_state(x.shape[0], device=x.device, dtype=x.dtype))
        return x, state

    def _finish_output(self, output: Tensor) -> Tensor:
        return output if self.batch_first else output.transpose(0, 1)

    # -- state packing (used by RL buffers that store one flat vector per environment) -----------

    def state_size(self) -> int:
        """Number of floats in one sample's state, i.e. the width of :meth:`flatten_state`."""
        return sum(t[0].numel() for t in self.initial_state(1) if t is not None)

    def flatten_state(self, state: NamedTuple) -> Tensor:
        """Pack a state into one ``(B, state_size)`` tensor."""
        return torch.cat([t.reshape(t.shape[0], -1) for t in state if t is not None], dim=1)

    def unflatten_state(self, flat: Tensor) -> NamedTuple:
        """Inverse of :meth:`flatten_state`."""
        if flat.dim() != 2 or flat.shape[1] != self.state_size():
            raise ValueError(
                f"flat: expected shape (B, {self.state_size()}), got {tuple(flat.shape)}"
            )
        template = self.initial_state(1, device=flat.device, dtype=flat.dtype)
        sizes = [t[0].numel() for t in template if t is not None]
        parts = iter(torch.split(flat, sizes, dim=1))
        fields = [
            None if t is None else next(parts).reshape(flat.shape[0], *t.shape[1:])
            for t in template
        ]
        return type(template)(*fields)


def check_sequence(x: Tensor, input_size: int, like: Tensor, *, batch_first: bool = True) -> None:
    """Raise a clear error unless ``x`` is a finite float sequence matching the model."""
    layout = "(B, T, I)" if batch_first else "(T, B, I)"
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor of shape {layout}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 3:
        raise ValueError(f"x: expected a 3-D tensor {layout}, got shape {tuple(x.shape)}")
    if x.shape[1 if batch_first else 0] == 0:
        raise ValueError(f"x: expected at least one time step, got an empty sequence {layout}"
                         f" of shape {tuple(x.shape)}")
    if x.shape[-1] != input_size:
        raise ValueError(f"x: expected input_size={input_size} features, got {x.shape[-1]}")
    if x.dtype != like.dtype:
        raise TypeError(f"x: dtype {x.dtype} does not match the model's parameters ({like.dtype})")
    if x.device != like.device:
        raise ValueError(f"x: device {x.device} does not match the model's ({like.device})")
    if not all_finite(x):
        raise ValueError("x: contains NaN or infinite values")


def all_finite(tensor: Tensor) -> bool:
    """Whether ``tensor`` holds no NaN or infinity.

    One reduction (a tenth of the time of an element-wise ``isfinite`` at the ART size): any NaN
    or infinity makes the sum non-finite; only then is the exact element-wise check paid for,
    so that huge finite values whose sum overflows are not refused.
    """
    return bool(torch.isfinite(tensor.detach().sum())) or bool(torch.isfinite(tensor).all())


def check_state(state: Any, expected: NamedTuple) -> None:
    """Raise a clear error unless ``state`` has the fields and shapes of ``expected``."""
    kind = type(expected).__name__
    if not isinstance(state, tuple) or len(state) != len(expected):
        raise TypeError(f"state: expected a {kind}{expected._fields}, got {type(state).__name__}")
    for name, got, want in zip(expected._fields, state, expected, strict=True):
        if want is None:
            if got is not None:
                raise ValueError(f"state.{name}: expected None for this model's options")
            continue
        if not isinstance(got, Tensor):
            raise TypeError(f"state.{name}: expected a tensor, got {type(got).__name__}")
        if got.shape != want.shape:
            raise ValueError(
                f"state.{name}: expected shape {tuple(want.shape)}, got {tuple(got.shape)}"
            )
        if got.dtype != want.dtype or got.device != want.device:
            raise TypeError(
                f"state.{name}: expected {want.dtype} on {want.device}, "
                f"got {got.dtype} on {got.device}"
            )
        if not all_finite(got):
            raise ValueError(f"state.{name}: contains NaN or infinite values")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices`` (for string options)."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")


def check_positive_int(name: str, value: Any) -> int:
    """Raise unless ``value`` is an integer ≥ 1 (sizes, step counts); return it as an ``int``.

    NumPy integers count (gymnasium's ``action_space.n`` is one); bools and floats do not.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected a positive int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return int(value)
