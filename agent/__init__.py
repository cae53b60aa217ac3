"""grid-driver-agent: installs and watches the Azure GRID driver on RTX PRO 6000 BSE nodes."""

__version__ = "0.1.0"
