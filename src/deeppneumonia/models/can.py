"""Cross-Attention Network (CAN) for multi-label findings: a documented reconstruction (no public code exists).

Ma, Wang & Hoi (MICCAI 2019) give two branches whose feature maps cross-attend through an element-wise
(Hadamard) product that suppresses attention noise, trained from image-level labels only. The unknowns are
settled here (docs/method.md, "Cross-Attention Networks"):

* **Branches.** A shared ResNet18 trunk (stem .. ``layer3``) feeds two ``layer4`` branches, A (``layer4``,
  the one a Stage I encoder initialises) and B (``layer4_b``, randomly initialised: two identically
  initialised branches would receive identical gradients and stay equal, making the product the square of
  one map). Sharing the trunk halves the cost of two full networks on a CPU.
* **Attention.** Each branch predicts one spatial attention map per class, ``A_k = sigmoid(W_k * F_k)``
  (1x1 convolution, shape (B, C, h, w)). The cross-attention map is their Hadamard product
  ``M = A_A (.) A_B``: a location stays attended only where both branches agree.
* **Classification.** Each branch pools its features under ``M`` per class
  (``v_kc = sum_xy M_c F_k / sum_xy M_c``) and scores them with a per-class linear layer; the logits are the
  mean of the two branches'. ``M`` is also the model's localization map (``attention_maps``).

The class is an :class:`~deeppneumonia.models.resnet.XRayResNet` (``conv1`` .. ``layer4`` keep their names,
so a Stage I encoder loads, ``forward_intermediates`` reaches branch A,
and Grad-CAM's default ``layer4`` works); ``fc`` is unused and empty.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

from deeppneumonia.models.resnet import XRayResNet


class CrossAttentionResNet(XRayResNet):
    """Shared ResNet18 trunk, two ``layer4`` branches, per-class cross-attention (see the module docstring)."""

    fresh_prefixes = ("fc.", "layer4_b.", "att_a.", "att_b.", "cls_", "bias_")  # what a Stage I encoder leaves fresh

    def __init__(self, num_classes: int, in_chans: int = 1) -> None:
        """Shared trunk and branch A as in ResNet18; branch B, attention and class weights initialised fresh.

        Branch B's convolutions get Kaiming init, the per-class weights N(0, 0.01), the biases 0; ``fc`` is an Identity.
        """
        super().__init__("resnet18", num_classes, in_chans)
        self.inplanes = 256
        self.layer4_b = self._make_layer(BasicBlock, 512, 2, stride=2)  # branch B, its own random init
        for m in self.layer4_b.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.fc = nn.Identity()  # type: ignore[assignment]
        self.num_classes = num_classes
        self.att_a = nn.Conv2d(512, num_classes, 1)
        self.att_b = nn.Conv2d(512, num_classes, 1)
        self.cls_a = nn.Parameter(torch.empty(num_classes, 512))
        self.cls_b = nn.Parameter(torch.empty(num_classes, 512))
        self.bias_a = nn.Parameter(torch.zeros(num_classes))
        self.bias_b = nn.Parameter(torch.zeros(num_classes))
        for w in (self.cls_a, self.cls_b):
            nn.init.normal_(w, std=0.01)

    def branches(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Features of branch A (``layer4``) and branch B (``layer4_b``) on the shared trunk, each (B, 512, h, w)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.layer4(x), self.layer4_b(x)

    def attend(self, fa: Tensor, fb: Tensor) -> dict[str, Tensor]:
        """Per-class maps of each branch, their Hadamard product M and the logits (see the module docstring)."""
        la, lb = self.att_a(fa), self.att_b(fb)  # attention logits; the loss works on these (log space)
        a_a, a_b = torch.sigmoid(la), torch.sigmoid(lb)
        m = a_a * a_b  # (B, C, h, w): the cross-attention
        weights = m / m.sum((2, 3), keepdim=True).clamp_min(1e-6)
        va = torch.einsum("bchw,bdhw->bcd", weights, fa)  # (B, C, 512): class-wise attention pooling
        vb = torch.einsum("bchw,bdhw->bcd", weights, fb)
        logits_a = (va * self.cls_a).sum(-1) + self.bias_a
        logits_b = (vb * self.cls_b).sum(-1) + self.bias_b
        return {"att_a": a_a, "att_b": a_b, "att_logit_a": la, "att_logit_b": lb, "cross": m,
                "logits_a": logits_a, "logits_b": logits_b,
                "logits": (logits_a + logits_b) / 2}

    def forward_all(self, x: Tensor) -> dict[str, Tensor]:
        """Every output of :meth:`attend` (maps, cross-attention, branch and mean logits) for input ``x``."""
        return self.attend(*self.branches(x))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C) logits: the mean of the two branches'."""
        return self.forward_all(x)["logits"]

    @torch.no_grad()
    def attention_maps(self, x: Tensor) -> Tensor:
        """(B, C, h, w) cross-attention maps M in [0, 1]: CAN's own localization, one map per class."""
        return self.forward_all(x)["cross"]
