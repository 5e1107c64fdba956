"""``python -m stpn_rl.tune``."""

import sys

from stpn_rl.tune.cli import main

sys.exit(main())
