"""defi: Disentangled robot learning via separate forward and inverse dynamics pretraining (DeFI)."""

__version__ = "0.1.0"
