"""mnemomd: the self-hosted Mnemom integrity gateway."""

__version__ = "0.1.0"
