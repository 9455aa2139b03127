"""Loss functions of Deep Pneumonia: InfoNCE (Eq. 1), MGACR (Eqs. 2-6), class-balanced focal (Eqs. 7-9)."""

from deeppneumonia.losses.focal import ClassBalancedFocalLoss, class_balanced_weights
from deeppneumonia.losses.infonce import InfoNCELoss, contrastive_accuracy
from deeppneumonia.losses.mgacr import MGACRLoss, attention_losses, feature_contrastive_loss

__all__ = [
    "ClassBalancedFocalLoss",
    "InfoNCELoss",
    "MGACRLoss",
    "attention_losses",
    "class_balanced_weights",
    "contrastive_accuracy",
    "feature_contrastive_loss",
]
