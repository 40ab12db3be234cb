"""Inference attacks: pure analysis functions fed with what an adversary observed (no Ray,
no clock; randomness, where any, from a generator or seed passed in).

* gradient inversion: :mod:`~p2pfed.attacks.inversion` (analytic, iDLG's label) and
  :mod:`~p2pfed.attacks.gradient` (DLG, iDLG, Inverting Gradients);
* membership inference: :mod:`~p2pfed.attacks.membership` (loss threshold, LiRA, the
  active white-box attack);
* model inversion: :mod:`~p2pfed.attacks.model_inversion` (MI-Face);
* measuring them: :mod:`~p2pfed.attacks.metrics`; showing them: :mod:`~p2pfed.attacks.report`.

Who observes what in a run, and which of these each adversary runs on it, is
:mod:`p2pfed.adversary`.
"""

from p2pfed.attacks.gradient import (
    GradientInversion,
    UpdateInversion,
    dlg,
    gradient_from_sgd_step,
    idlg,
    inverting_gradients,
    split_flat,
)
from p2pfed.attacks.inversion import (
    analytic_fc_inversion,
    idlg_label,
    single_sample_gradients,
)
from p2pfed.attacks.membership import (
    ShadowModels,
    active_membership_scores,
    gradient_ascent,
    lira_offline_scores,
    lira_online_scores,
    logit_confidences,
    loss_threshold_scores,
    per_sample_losses,
    sgd_train_fn,
    shadow_confidences,
    shadow_keep,
    train_shadow_models,
)
from p2pfed.attacks.metrics import membership_auc, mse, psnr, tpr_at_fpr
from p2pfed.attacks.model_inversion import Inversion, invert_classes, mi_face, smoothing
from p2pfed.attacks.report import save_image_grid

__all__ = [
    "GradientInversion",
    "Inversion",
    "ShadowModels",
    "UpdateInversion",
    "active_membership_scores",
    "analytic_fc_inversion",
    "dlg",
    "gradient_ascent",
    "gradient_from_sgd_step",
    "idlg",
    "idlg_label",
    "invert_classes",
    "inverting_gradients",
    "lira_offline_scores",
    "lira_online_scores",
    "logit_confidences",
    "loss_threshold_scores",
    "membership_auc",
    "mi_face",
    "mse",
    "per_sample_losses",
    "psnr",
    "save_image_grid",
    "sgd_train_fn",
    "shadow_confidences",
    "shadow_keep",
    "single_sample_gradients",
    "smoothing",
    "split_flat",
    "tpr_at_fpr",
    "train_shadow_models",
]
