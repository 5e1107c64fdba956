"""``python -m stpn_supervised fit|validate|test --config ar/stpn``: see :mod:`.cli`."""

from stpn_supervised.cli import main

if __name__ == "__main__":
    main()
