"""``shrinkteanet.losses``, the name ``../shared/CONTRACTS.md`` gives the loss blocks; they live in
``shrinkteanet.methods.base.blocks``."""
from shrinkteanet.methods.base.blocks import (AngularDistillationLoss, HintLoss, KDLoss, L2EmbeddingLoss,  # noqa: F401
                                              MarginDistillationHead, MarginHead, build_head, margin_params)
