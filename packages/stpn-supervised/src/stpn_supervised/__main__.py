"""``python -m stpn_supervised fit|validate|test --config ar/stpn``: see :mod:`.cli`."""

from stpn_supervised.cli import run

if __name__ == "__main__":
    run()
