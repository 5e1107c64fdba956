"""The maze network of the STPN paper: a ``stpn_core`` core with linear policy and value heads.

Unlike :class:`~stpn_rl.policies.CorePolicy`, which adapts a core to sb3-contrib's LSTM-shaped
buffers, this policy runs whole sequences ``(B, T, I)`` through the core and keeps the core's
own state, which is what whole-episode BPTT (:mod:`stpn_rl.a2c_bptt`) needs: one call of the
core per episode, so the STPN runs on its fast sequence path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import stpn_core
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import Tensor, nn

if TYPE_CHECKING:  # evaluate runs any policy, this one included
    from stpn_rl.evaluate import StepFn


class SequencePolicy(BasePolicy):
    """Core ``stpn_core.build_model(core, obs_dim, hidden_size, **core_options)``, then
    ``Linear(H, n_actions)`` for the action logits and ``Linear(H, 1)`` for the value, both
    reading the core's output directly, as in the paper's maze network.

    Args:
        core: a name of ``stpn_core.MODELS``.
        hidden_size: units of the core.
        core_options: keyword options of the core (e.g. ``{"norm_timing": "post"}``).
        optimizer_kwargs: for the optimiser (Adam); default ``{"eps": 1e-4}``, the paper's.
    """

    def __init__(self, observation_space: spaces.Box, action_space: spaces.Discrete,
                 lr_schedule: Schedule, core: str = "stpn", hidden_size: int = 64,
                 core_options: dict[str, Any] | None = None,
                 optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
                 optimizer_kwargs: dict[str, Any] | None = None) -> None:
        if not isinstance(action_space, spaces.Discrete):
            raise ValueError(f"action_space: expected Discrete, got {action_space}")
        if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 1:
            raise ValueError(f"observation_space: expected a 1-D Box, got {observation_space}")
        if core_options is not None and not isinstance(core_options, dict):
            raise TypeError(f"core_options: expected a dict, got {type(core_options).__name__}")
        super().__init__(
            observation_space,
            action_space,
            optimizer_class=optimizer_class,
            optimizer_kwargs={"eps": 1e-4} if optimizer_kwargs is None else optimizer_kwargs,
        )
        self.core_name, self.core_options = core, dict(core_options or {})
        self.core = stpn_core.build_model(
            core, observation_space.shape[0], hidden_size, **self.core_options
        )
        self.action_net = nn.Linear(self.core.output_size, int(action_space.n))
        self.value_net = nn.Linear(self.core.output_size, 1)
        self.optimizer = self.optimizer_class(
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            core=self.core_name,
            hidden_size=self.core.hidden_size,
            core_options=self.core_options,
            optimizer_class=self.optimizer_class,
            optimizer_kwargs=self.optimizer_kwargs,
        )
        return data

    def forward(  # type: ignore[override]
        self, obs: Tensor, state: NamedTuple | None = None
    ) -> tuple[Tensor, Tensor, NamedTuple]:
        """``obs`` ``(B, T, I)`` from ``state`` (``None``: episode start) -> action logits
        ``(B, T, n_actions)``, values ``(B, T)`` and the core's final state."""
        out, state = self.core(obs, state)
        return self.action_net(out), self.value_net(out).squeeze(-1), state

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> Tensor:
        """Actions for single observations ``(B, I)``, each the first step of an episode."""
        logits, _, _ = self(observation.unsqueeze(1))
        return choose_actions(logits[:, 0], deterministic, None)

    def predict(  # type: ignore[override]
        self,
        observation: np.ndarray,
        state: NamedTuple | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, NamedTuple]:
        """One step of every environment: ``(actions (B,), state)``; ``state`` is the core's
        own and is reset where ``episode_start`` is true."""
        self.set_training_mode(False)
        with torch.no_grad():
            obs = self.obs_to_tensor(observation)[0].float()
            state = self.reset_state(state, episode_start, obs.shape[0])
            logits, _, state = self(obs.unsqueeze(1), state)
            actions = choose_actions(logits[:, 0], deterministic, None)
        return actions.cpu().numpy(), state

    def reset_state(
        self, state: NamedTuple | None, episode_start: np.ndarray | None, batch_size: int
    ) -> NamedTuple:
        """``state`` with the environments that start an episode set back to the initial state
        (``None``: all of them)."""
        if state is None:
            return self.core.initial_state(batch_size, device=self.device)
        if episode_start is None:
            return state
        starts = torch.as_tensor(np.asarray(episode_start), device=self.device)
        return self.core.reset_state(state, starts)

    def step_energy(self, observation: np.ndarray, state: NamedTuple | None) -> np.ndarray:
        """Energy of the core's next step (summed over units) per environment, from ``state``,
        the state at the start of the step."""
        with torch.no_grad():
            obs = self.obs_to_tensor(observation)[0].float()
            return self.core.energy(obs.unsqueeze(1), state)[:, 0].cpu().numpy()


def choose_actions(
    logits: Tensor, deterministic: bool, generator: torch.Generator | None
) -> Tensor:
    """The most likely action, or one sampled from the softmax of ``logits`` ``(B, A)``."""
    if deterministic:
        return logits.argmax(dim=-1)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)



def policy_step(policy: SequencePolicy, deterministic: bool) -> StepFn:
    """A :data:`~stpn_rl.evaluate.StepFn` for :func:`~stpn_rl.evaluate.run_episodes`: the
    policy's actions and the energy of its core's step, from the state at the start of the
    step."""
    state: NamedTuple | None = None

    def step(obs: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nonlocal state
        state = policy.reset_state(state, starts, len(obs))
        energy = policy.step_energy(obs, state)
        actions, state = policy.predict(obs, state, None, deterministic)
        return actions, energy

    return step
