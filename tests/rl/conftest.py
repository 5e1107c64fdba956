"""Small configurations shared by the RL tests, so every test runs in seconds on one thread."""

from typing import Any

import pytest
from stpn_rl.config import load_config, merge


def tiny_config(task: str, core: str, **changes: Any) -> dict[str, Any]:
    """``task``'s configuration shrunk: 8 units, short rollouts, a 7×7 maze of 20-step episodes."""
    small = {
        "n_envs": 2,
        "total_timesteps": 64,
        "checkpoint_freq": 32,
        "ppo": {"n_steps": 16, "batch_size": 16, "n_epochs": 1},
        "policy": {"hidden_size": 8, "core_options": {}},
        "evaluation": {"episodes": 2},
    }
    if task == "maze":
        small["env"] = {"size": 7, "episode_length": 20}
    return merge(merge(load_config(task, core), small), changes)


@pytest.fixture(scope="session")
def tiny() -> Any:
    return tiny_config
