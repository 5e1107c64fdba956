"""``python -m stpn_rl.tune``."""

from stpn_core.cli import run_command

from stpn_rl.tune.cli import main

run_command(main)
