"""The loss terms of DELG (joint) and of DELF's two stages, from one ``DELGOutput`` and the labels.

DELG (tensorflow/models ``train.py`` @4b8f7d4)::

    global         = CE(ArcFace(global_prelogits, labels), labels)        trains backbone, embedding, ArcFace
    attention      = CE(W_att attention_pool(block3.detach(), attention))  trains attention head + classifier
    reconstruction = MSE(reconstruction, block3.detach())                  trains the autoencoder
    total          = global + attention_weight * attention + reconstruction_weight * reconstruction

DELF: ``tuning``: ``classifier = CE(W mean_{h,w} block3)`` (backbone + classifier); ``attn``: the attention
term alone (attention head + classifier, the backbone frozen). The stop-gradients are the model's
(``models.delg``: the heads read ``block3.detach()``). Accuracies are top-1 fractions of the batch: ArcFace's
without the margin (the cosine), the attention and the plain classifiers'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from visloc.models.delg import DELGOutput, attention_pool
from visloc.models.heads.arcface import ArcFaceHead


def _top1(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.detach().argmax(dim=1) == labels).float().mean()


def attention_terms(out: DELGOutput, labels: torch.Tensor, classifier: nn.Linear) -> dict[str, torch.Tensor]:
    """``attention`` (cross-entropy of the attention-pooled ``block3``) and ``accuracy_attention``."""
    if out.attention is None:
        raise ValueError("attention loss: the forward pass computed no attention (local=False?)")
    logits = classifier(attention_pool(out.block3.detach(), out.attention))
    return {"attention": F.cross_entropy(logits.float(), labels), "accuracy_attention": _top1(logits, labels)}


def delg_losses(out: DELGOutput, labels: torch.Tensor, arcface: ArcFaceHead, attention_classifier: nn.Linear,
                attention_weight: float = 1.0, reconstruction_weight: float = 10.0) -> dict[str, torch.Tensor]:
    """``total``, ``global``, ``attention``, ``reconstruction`` (0 without an autoencoder) and the accuracies."""
    if out.global_prelogits is None:
        raise ValueError("delg loss: the forward pass computed no global descriptor")
    logits = arcface(out.global_prelogits.float(), labels)
    terms = {"global": F.cross_entropy(logits, labels)}
    terms |= attention_terms(out, labels, attention_classifier)
    if out.reconstruction is not None:
        terms["reconstruction"] = F.mse_loss(out.reconstruction.float(), out.block3.detach().float())
    else:
        terms["reconstruction"] = torch.zeros((), device=labels.device)
    total = terms["global"] + attention_weight * terms["attention"] + reconstruction_weight * terms["reconstruction"]
    with torch.no_grad():
        terms["accuracy_global"] = _top1(arcface.cosine(out.global_prelogits.float()), labels)
    return {"total": total, **terms}


def delf_tuning_losses(out: DELGOutput, labels: torch.Tensor, classifier: nn.Linear) -> dict[str, torch.Tensor]:
    """DELF stage 1: ``total = classifier`` (cross-entropy on average-pooled ``block3``), ``accuracy_classifier``."""
    logits = classifier(out.block3.mean(dim=(-2, -1)))
    loss = F.cross_entropy(logits.float(), labels)
    return {"total": loss, "classifier": loss, "accuracy_classifier": _top1(logits, labels)}


def delf_attn_losses(out: DELGOutput, labels: torch.Tensor, attention_classifier: nn.Linear) -> dict[str, torch.Tensor]:
    """DELF stage 2: ``total = attention`` and ``accuracy_attention``."""
    terms = attention_terms(out, labels, attention_classifier)
    return {"total": terms["attention"], **terms}
