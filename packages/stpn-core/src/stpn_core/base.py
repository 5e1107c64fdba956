"""The sequence protocol every model of :mod:`stpn_core` follows, and its input checks.

Mirrors ``torch.nn.LSTM``: ``forward(x, state=None) -> (output, state)``, with the state a
``NamedTuple`` of tensors whose first dimension is the batch, so it carries over between calls
(streaming, RL). Task code relies only on this protocol, so any model can replace any other.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

Device = torch.device | str | None
"""Where a constructor puts its parameters (``device=`` of torch's own modules)."""
DType = torch.dtype | None
"""The parameters' dtype (``dtype=`` of torch's own modules; ``None``: torch's default)."""


class RecurrentModel(nn.Module):
    """Base class of every sequence model: STPN, STPNLinear and the baselines.

    Subclasses pass ``input_size``, ``hidden_size``, ``bias`` and ``batch_first`` to
    :meth:`__init__` (which checks and sets them), implement :meth:`forward` and
    :meth:`energy`, and declare their state once: :attr:`state_type` (a
    ``NamedTuple`` class, which names the fields) and :meth:`state_shapes` (each field's shape
    after the batch dimension, ``None`` for a field the options leave out). The state's dtype and
    device are those of the parameters, and every model starts from zeros. From that declaration
    this class derives :meth:`initial_state`, :meth:`state_size`, :meth:`flatten_state`,
    :meth:`unflatten_state`, :meth:`check_state` and :meth:`reset_state`; none of them builds a
    state just to learn its shapes.
    """

    input_size: int
    hidden_size: int
    batch_first: bool
    state_type: type[NamedTuple]

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 batch_first: bool = True) -> None:
        """Checks and sets the arguments every model takes first, named and ordered as in
        ``torch.nn.LSTM`` (``bias`` is checked only: each model builds its own)."""
        super().__init__()
        check_bool("bias", bias)
        check_bool("batch_first", batch_first)
        # int(): sizes may come as NumPy integers (e.g. from a gymnasium space).
        self.input_size = check_positive_int("input_size", input_size)
        self.hidden_size = check_positive_int("hidden_size", hidden_size)
        self.batch_first = batch_first

    def state_shapes(self) -> dict[str, tuple[int, ...] | None]:
        """Each state field's shape after the batch dimension (``None``: the field is ``None``),
        in the order of :attr:`state_type`'s fields."""
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

    # -- the state, derived from state_type and state_shapes ---------------------------------------

    @functools.cached_property
    def _state_layout(self) -> tuple[tuple[int, ...] | None, ...]:
        """The declared shapes, checked against the field names once and kept (they follow from
        the constructor's arguments, which do not change)."""
        shapes = self.state_shapes()
        fields = self.state_type._fields
        if tuple(shapes) != fields:
            raise TypeError(
                f"{type(self).__name__}.state_shapes: expected the fields {fields}, "
                f"got {tuple(shapes)}"
            )
        return tuple(None if shape is None else tuple(shape) for shape in shapes.values())

    def initial_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> NamedTuple:
        """The state at the start of a sequence: zeros, on the parameters' device and dtype
        unless given."""
        like = self._parameter_like()
        options = {"device": like.device if device is None else device,
                   "dtype": like.dtype if dtype is None else dtype}
        return self.state_type(*(
            None if shape is None else torch.zeros(batch_size, *shape, **options)
            for shape in self._state_layout
        ))

    def state_size(self) -> int:
        """Number of values in one sample's state, i.e. the width of :meth:`flatten_state`."""
        return sum(math.prod(shape) for shape in self._state_layout if shape is not None)

    def flatten_state(self, state: NamedTuple) -> Tensor:
        """Pack a state into one ``(B, state_size)`` tensor (one copy), fields in order."""
        return torch.cat([t.reshape(t.shape[0], -1) for t in state if t is not None], dim=1)

    def unflatten_state(self, flat: Tensor) -> NamedTuple:
        """Inverse of :meth:`flatten_state`; the fields are views of ``flat`` (no copy)."""
        size = self.state_size()
        if flat.dim() != 2 or flat.shape[1] != size:
            raise ValueError(f"flat: expected shape (B, {size}), got {tuple(flat.shape)}")
        sizes = [math.prod(shape) for shape in self._state_layout if shape is not None]
        parts = iter(torch.split(flat, sizes, dim=1))
        return self.state_type(*(
            None if shape is None else next(parts).unflatten(1, shape)
            for shape in self._state_layout
        ))

    def check_state(
        self, state: Any, batch_size: int, like: Tensor, *, finite: bool = True
    ) -> None:
        """Raise a clear error unless ``state`` is this model's state for ``batch_size`` samples,
        with ``like``'s dtype and device, and (``finite``) free of NaN and infinity; ``False``
        leaves that to the caller (a model that checks it more cheaply, in its own loop)."""
        kind, fields = self.state_type.__name__, self.state_type._fields
        if not isinstance(state, tuple) or len(state) != len(fields):
            raise TypeError(f"state: expected a {kind}{fields}, got {type(state).__name__}")
        for name, got, shape in zip(fields, state, self._state_layout, strict=True):
            if shape is None:
                if got is not None:
                    raise ValueError(f"state.{name}: expected None for this model's options")
                continue
            if not isinstance(got, Tensor):
                raise TypeError(f"state.{name}: expected a tensor, got {type(got).__name__}")
            if got.shape != (batch_size, *shape):
                raise ValueError(
                    f"state.{name}: expected shape {(batch_size, *shape)}, got {tuple(got.shape)}"
                )
            if got.dtype != like.dtype or got.device != like.device:
                raise TypeError(
                    f"state.{name}: expected {like.dtype} on {like.device}, "
                    f"got {got.dtype} on {got.device}"
                )
            if finite:
                check_finite(f"state.{name}", got)

    def reset_state(self, state: NamedTuple, mask: Tensor, *, inplace: bool = False) -> NamedTuple:
        """``state`` with the samples where ``mask`` ``(B,)`` is nonzero set back to the initial
        (zero) state. A new state, so the old one stays valid for autograd, unless ``inplace``
        (for a state the caller has just built and owns: no copy)."""
        mask = mask.bool()
        fields = []
        for t in state:
            if t is not None:
                where = mask.view(-1, *[1] * (t.dim() - 1))
                t = t.masked_fill_(where, 0) if inplace else t.masked_fill(where, 0)
            fields.append(t)
        return self.state_type(*fields)

    def _parameter_like(self) -> Tensor:
        """A parameter, whose dtype and device inputs and states must match: the module's own
        first one when it has one (``parameters()`` builds a generator over every submodule,
        a cost paid on every call of a single step)."""
        for parameter in self._parameters.values():
            if parameter is not None:
                return parameter
        return next(self.parameters())

    # -- input checks -------------------------------------------------------------------------

    def _prepare_input(
        self, x: Tensor, state: NamedTuple | None, *, finite: bool = True, zeros: bool = True
    ) -> tuple[Tensor, NamedTuple | None]:
        """Validate ``x`` and ``state``; return ``x`` as ``(B, T, I)`` and a state to start from.
        ``finite``: also check both for NaN and infinity (``False``: the caller does);
        ``zeros``: build the zero state when none is given (``False``: leave ``None``, for a
        loop that starts from zeros without one)."""
        check_sequence(x, self.input_size, self._parameter_like(), batch_first=self.batch_first,
                       finite=finite)
        if not self.batch_first:
            x = x.transpose(0, 1)
        if state is not None:
            self.check_state(state, x.shape[0], x, finite=finite)
        elif zeros:
            state = self.initial_state(x.shape[0], device=x.device, dtype=x.dtype)
        return x, state

    def _finish_output(self, output: Tensor) -> Tensor:
        return output if self.batch_first else output.transpose(0, 1)


def check_sequence(
    x: Tensor, input_size: int, like: Tensor, *, batch_first: bool = True, finite: bool = True
) -> None:
    """Raise a clear error unless ``x`` is a float sequence matching the model, and (``finite``)
    free of NaN and infinity."""
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
    if finite:
        check_finite("x", x)


def check_finite(name: str, tensor: Tensor) -> None:
    """Raise ``ValueError`` naming ``name`` if ``tensor`` holds a NaN or an infinity."""
    if not all_finite(tensor):
        raise non_finite(name)


def non_finite(name: str) -> ValueError:
    """The error for the tensor ``name`` holding a NaN or an infinity."""
    return ValueError(f"{name}: contains NaN or infinite values")


def all_finite(tensor: Tensor) -> bool:
    """Whether ``tensor`` holds no NaN or infinity.

    One reduction (a tenth of the time of an element-wise ``isfinite`` at the ART size): any NaN
    or infinity makes the sum non-finite; only then is the exact element-wise check paid for,
    so that huge finite values whose sum overflows are not refused. The sum is read as a Python
    float: on the small tensors of a single step, a second torch op (``isfinite``) tripled the
    check's cost.
    """
    return math.isfinite(tensor.detach().sum()) or bool(torch.isfinite(tensor).all())


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices`` (for string options)."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")


def check_bool(name: str, value: Any) -> None:
    """Raise ``TypeError`` unless ``value`` is a bool (so ``0``/``"no"`` cannot slip through)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r}")


def check_positive_int(name: str, value: Any) -> int:
    """Raise unless ``value`` is an integer ≥ 1 (sizes, step counts); return it as an ``int``.

    NumPy integers count (gymnasium's ``action_space.n`` is one); bools and floats do not.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected a positive int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return int(value)
