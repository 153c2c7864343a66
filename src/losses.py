"""``shrinkteanet.losses``, the name ``../shared/CONTRACTS.md`` gives the angular distillation loss: a contract
shim that deliberately mirrors its one true home, ``shrinkteanet.methods.base.blocks`` (import the other
heads and losses from there)."""
from shrinkteanet.methods.base.blocks import AngularDistillationLoss  # noqa: F401
