"""A recurrent actor-critic policy for ``sb3_contrib.RecurrentPPO`` whose core is any
``stpn_core`` model.

RecurrentPPO sizes its state arrays from ``policy.lstm_actor.num_layers`` and ``.hidden_size``
and stores them as an LSTM pair ``(h, c)``. :class:`RecurrentCore` presents every core's state
LSTM-shaped: the core's flattened state (``flatten_state`` order, e.g. STPN's ``h`` and ``F``)
is split in two halves that travel in the ``h`` and ``c`` slots, so ``RecurrentPPO.load`` and
``predict`` work unchanged, and an ``lstm`` core's halves are exactly its own ``(h, c)``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import stpn_core
import torch
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import Schedule
from stpn_core import RecurrentModel
from torch import Tensor, nn

CRITIC_CHOICES = ("shared", "detached", "separate")


class RecurrentCore(nn.Module):
    """A ``stpn_core`` model seen by RecurrentPPO as a one-layer LSTM.

    ``hidden_size`` here is the width of each LSTM-shaped state slot (half the core's flattened
    state, rounded up), which is what RecurrentPPO allocates; the core's own number of units is
    ``core.hidden_size``. Each call copies the state once on the way in (into fresh contiguous
    fields, which the reset then changes in place) and once on the way out (into the slots),
    except that a call without gradients given back the very slots the previous one returned,
    unchanged (a rollout step), starts from that call's own state instead of a copy of it.

    With ``measure_energy`` set, every call also leaves the energy of each step it ran (summed
    over units, from the state at the start of the step; ``(n_seq * T,)``) in :attr:`energy`,
    so an evaluation reads the energy of exactly the steps the policy took.
    """

    num_layers = 1

    def __init__(self, core: RecurrentModel) -> None:
        super().__init__()
        self.core = core
        self.input_size = core.input_size
        self.state_size = core.state_size()
        self.hidden_size = math.ceil(self.state_size / 2)
        self.measure_energy = False
        self.energy: Tensor | None = None
        # The slots the last call without gradients returned, their versions, and its state.
        self._last: tuple[tuple[Tensor, Tensor], tuple[int, int], NamedTuple] | None = None
        # Where each field lies in the flat state: its shape and runs in the two slots.
        self._fields: list[tuple[tuple[int, ...], list[tuple[int, ...]]] | None] = []
        offset = 0
        for shape in core.state_shapes().values():
            size = 0 if shape is None else math.prod(shape)
            self._fields.append(None if shape is None else (shape, self._runs(offset, size)))
            offset += size

    def _runs(self, start: int, size: int) -> list[tuple[int, ...]]:
        """Values ``[start, start + size)`` of the flat state as ``(slot, begin, end,
        field_begin, field_end)`` runs: a field may straddle the two slots."""
        width, stop, runs = self.hidden_size, start + size, []
        if start < width:
            runs.append((0, start, min(stop, width), 0, min(stop, width) - start))
        if stop > width:
            first = max(start, width)
            runs.append((1, first - width, stop - width, first - start, size))
        return runs

    def pack(self, state: NamedTuple) -> tuple[Tensor, Tensor]:
        """Core state -> LSTM-shaped ``(h, c)``, each ``(1, B, hidden_size)``: one copy."""
        batch = state[0].shape[0]
        slots = state[0].new_empty(2, 1, batch, self.hidden_size)
        slots[1, 0, :, self.state_size - self.hidden_size :] = 0  # padding of an odd size
        for value, field in zip(state, self._fields, strict=True):
            if field is not None:
                flat = value.reshape(batch, -1)
                for slot, begin, end, f_begin, f_end in field[1]:
                    slots[slot, 0, :, begin:end] = flat[:, f_begin:f_end]
        return slots[0], slots[1]

    def unpack(self, slots: tuple[Tensor, Tensor]) -> NamedTuple:
        """Inverse of :meth:`pack`: fresh contiguous fields (one copy), owned by the caller."""
        batch = slots[0].shape[1]
        fields = [
            None if field is None
            # torch.cat always copies, even a single run
            else torch.cat([slots[run[0]][0, :, run[1] : run[2]] for run in field[1]], dim=1)
            .view(batch, *field[0])
            for field in self._fields
        ]
        return self.core.state_type(*fields)

    def forward(
        self, features: Tensor, slots: tuple[Tensor, Tensor], episode_starts: Tensor
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Run padded sequences, resetting the state where episodes start.

        ``features`` is ``(n_seq * T, I)`` sequence-major and ``episode_starts`` ``(n_seq * T,)``,
        as sb3-contrib lays them out. The core runs whole stretches between the time indices at
        which some episode starts, so a rollout step or a minibatch whose sequences each start
        at an episode boundary is one call of the core.
        """
        n_seq = slots[0].shape[1]
        x = features.reshape(n_seq, -1, self.input_size)
        starts = episode_starts.reshape(n_seq, -1)
        steps = x.shape[1]
        cuts = set(torch.nonzero(starts.any(dim=0)).flatten().tolist())
        bounds = sorted({0, steps, *cuts})
        state = self._state_in(slots)
        outputs, energies = [], []
        for begin, end in zip(bounds[:-1], bounds[1:], strict=True):
            if begin in cuts:  # the unpacked state is ours to change; a core's output is not
                state = self.core.reset_state(state, starts[:, begin], inplace=begin == 0)
            if self.measure_energy:
                energies.append(self.core.energy(x[:, begin:end], state))
            output, state = self.core(x[:, begin:end], state)
            outputs.append(output)
        if self.measure_energy:
            self.energy = torch.cat(energies, dim=1).reshape(n_seq * steps)
        output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
        packed = self.pack(state)
        if not torch.is_grad_enabled():
            self._last = packed, (packed[0]._version, packed[1]._version), state
        return output.reshape(n_seq * steps, -1), packed

    def _state_in(self, slots: tuple[Tensor, Tensor]) -> NamedTuple:
        """The state held in ``slots``, as fresh fields the caller may change in place.

        A rollout passes back the slots the last call returned: when these are those very
        tensors, unchanged since (same versions), that call's state is used as it is (skipping
        a copy of the whole state per step) except for fields that are views, which may share
        memory with an output the caller holds (the STPN's ``h`` is its last output step) and
        are copied. Any other slots are unpacked.
        """
        last, self._last = self._last, None
        if last is not None and all(
            given is kept and given._version == version
            for given, kept, version in zip(slots, last[0], last[1], strict=True)
        ):
            return type(last[2])(*(
                None if t is None else t.clone() if t._base is not None else t for t in last[2]
            ))
        return self.unpack(slots)


class SmallAtariCNN(BaseFeaturesExtractor):
    """The paper's Atari torso (docs/model.md §7.1): Conv(C→16, k8, s4), Conv(16→32, k4, s2), ReLUs.

    On 84×84 frames it gives 32×9×9 = 2 592 features, which feed the recurrent core directly.
    """

    def __init__(self, observation_space: spaces.Box) -> None:
        channels = observation_space.shape[0]
        cnn = nn.Sequential(
            nn.Conv2d(channels, 16, kernel_size=8, stride=4),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=4, stride=2),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            n_features = cnn(torch.zeros(1, *observation_space.shape)).shape[1]
        super().__init__(observation_space, n_features)
        self.cnn = cnn

    def forward(self, observations: Tensor) -> Tensor:
        return self.cnn(observations)


class CorePolicy(RecurrentActorCriticPolicy):
    """Actor-critic whose recurrent core is ``stpn_core.build_model(core, ...)``.

    Args:
        core: a name of ``stpn_core.MODELS`` (``"stpn"``, ``"lstm"``, ``"modplast"``, ...).
        hidden_size: units of the core.
        core_options: keyword options of the core (e.g. ``{"norm_timing": "post"}``).
        critic: how the value head gets its features. ``"detached"`` (default; sb3-contrib's
            shared LSTM): from the actor's core, which only the policy loss trains.
            ``"shared"``: from the actor's core, trained by the value loss too (the paper's A2C
            network; with maze rewards of 10 the value loss then swamps the policy gradient
            unless ``vf_coef`` is small). ``"separate"``: from a core of its own (sb3-contrib's
            default; twice the compute).
        net_arch: MLP layers between the core and the heads; ``[]`` (default) puts the linear
            heads directly on the core, as the paper does.
        **kwargs: the other ``ActorCriticPolicy`` options (features extractor, ortho_init, ...).
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space,
                 lr_schedule: Schedule, core: str = "stpn", hidden_size: int = 64,
                 core_options: dict[str, Any] | None = None, critic: str = "detached",
                 net_arch: list[int] | dict[str, list[int]] | None = None,
                 **kwargs: Any) -> None:
        lstm_only = {"lstm_hidden_size", "n_lstm_layers", "shared_lstm", "enable_critic_lstm"}
        if lstm_only & kwargs.keys() or "lstm_kwargs" in kwargs:
            raise TypeError(
                f"CorePolicy: {sorted(lstm_only & kwargs.keys()) or ['lstm_kwargs']} do not apply; "
                "use core, hidden_size, core_options and critic"
            )
        if critic not in CRITIC_CHOICES:
            raise ValueError(f"critic: expected one of {CRITIC_CHOICES}, got {critic!r}")
        if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size < 1:
            raise ValueError(f"hidden_size: expected a positive integer, got {hidden_size!r}")
        if core_options is not None and not isinstance(core_options, dict):
            raise TypeError(f"core_options: expected a dict, got {type(core_options).__name__}")
        self.core_name, self.core_options, self.critic_mode = core, dict(core_options or {}), critic
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch=[] if net_arch is None else net_arch,
            lstm_hidden_size=hidden_size,
            shared_lstm=True,
            enable_critic_lstm=False,
            **kwargs,
        )
        # The parent built a throwaway nn.LSTM; the cores replace it before the optimiser exists.
        self.lstm_actor = self._build_core(hidden_size)
        self.shared_lstm = critic != "separate"
        self.lstm_critic = None if self.shared_lstm else self._build_core(hidden_size)
        self.lstm_hidden_state_shape = (1, 1, self.lstm_actor.hidden_size)
        self.optimizer = self.optimizer_class(
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    def _build_core(self, hidden_size: int) -> RecurrentCore:
        model = stpn_core.build_model(
            self.core_name, self.features_dim, hidden_size, **self.core_options
        )
        if model.output_size != hidden_size:
            raise ValueError(
                f"core: {self.core_name!r} outputs {model.output_size} features, "
                f"expected hidden_size={hidden_size}"
            )
        return RecurrentCore(model).to(self.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            core=self.core_name,
            hidden_size=self.lstm_output_dim,
            core_options=self.core_options,
            critic=self.critic_mode,
        )
        return data

    @staticmethod
    def _process_sequence(
        features: Tensor,
        lstm_states: tuple[Tensor, Tensor],
        episode_starts: Tensor,
        lstm: nn.Module,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        return lstm(features, lstm_states, episode_starts)

    def _latents(
        self, obs: Tensor, lstm_states: RNNStates, episode_starts: Tensor
    ) -> tuple[Tensor, Tensor, RNNStates]:
        """Actor and critic latents; see ``critic`` in the class docstring."""
        features = self.extract_features(obs)
        pi_features, vf_features = (
            (features, features) if self.share_features_extractor else features
        )
        latent_pi, states_pi = self._process_sequence(
            pi_features, lstm_states.pi, episode_starts, self.lstm_actor
        )
        if self.lstm_critic is None:
            detach = self.critic_mode == "detached"
            latent_vf, states_vf = (latent_pi.detach() if detach else latent_pi), states_pi
        else:
            latent_vf, states_vf = self._process_sequence(
                vf_features, lstm_states.vf, episode_starts, self.lstm_critic
            )
        return (
            self.mlp_extractor.forward_actor(latent_pi),
            self.mlp_extractor.forward_critic(latent_vf),
            RNNStates(states_pi, states_vf),
        )

    def forward(
        self,
        obs: Tensor,
        lstm_states: RNNStates,
        episode_starts: Tensor,
        deterministic: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor, RNNStates]:
        latent_pi, latent_vf, states = self._latents(obs, lstm_states, episode_starts)
        distribution = self._get_action_dist_from_latent(latent_pi)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        actions = actions.reshape((-1, *self.action_space.shape))
        return actions, self.value_net(latent_vf), log_prob, states

    def evaluate_actions(
        self, obs: Tensor, actions: Tensor, lstm_states: RNNStates, episode_starts: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        latent_pi, latent_vf, _ = self._latents(obs, lstm_states, episode_starts)
        distribution = self._get_action_dist_from_latent(latent_pi)
        return self.value_net(latent_vf), distribution.log_prob(actions), distribution.entropy()
