"""stpn_analysis."""

__version__ = "0.1.0"
