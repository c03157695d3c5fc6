"""CaLa's complementary associations as training-only losses for the candidate filter.

CaLa (Jiang et al., SIGIR 2024; docs/extensions.md) treats a training triplet (reference,
text, target) as a small graph and adds two associations to the query -> target matching of
Eq. 1, both used only in training:

* TBIA, text-bridged image alignment: `HingeCrossAttention` walks reference -> text -> target
  (two hops through the caption, one softmax after the product) and its output must pick out
  its own composed query among the batch's (S_tbia = 10 o m^T);
* CTR, complementary text reasoning: `TwinAttentionCompositor` lets the reference and the
  target attend each other (two untied single-head blocks, each reused 4 times with the
  original query) and their slot-0 average must pick out its own caption (S_ctr = 10 c g^T).

Mapped onto our BLIP filter as docs/extensions.md ('CaLa on a BLIP filter') describes: the composed query H_mm is the filter's own
multimodal pass (z_t), the caption states H_txt a text-only pass of the same text encoder
([CLS] at position 0, no image), the images their ViT tokens ([CLS] first). The loss is the
authors' code's (docs/extensions.md, 'The CaLa loss as coded'): w_t CE(S_tbia) + (1 - w_t) CE(w_c S_ctr + (1 - w_c) S_f), row-direction
CE, diagonal labels; the paper's additive form L_f + alpha L_tbia + beta L_ctr is an option.
Evaluation never calls these modules: the filter's embeddings do not change.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cirtutor.config import CalaConfig

FORMS = ("code", "paper")


class HingeCrossAttention(nn.Module):
    """TBIA's hinge-based cross attention (docs/extensions.md, 'TBIA'), one head, one layer.

    A1 = (X_r Wq)(X_c Wkc)^T / sqrt(d)            (B, L_r, L_c)   reference -> caption
    A2 = (X_c Wkc)(X_t Wkt)^T / sqrt(d)           (B, L_c, L_t)   caption -> target
    P  = Dropout(softmax(A1 A2))                  (B, L_r, L_t)   one softmax, after the product
    o  = (P (X_t Wv))[:, 0]                       (B, d)          reference token 0's row

    The caption key Wkc serves both hops. No padding mask by default (as the authors'); with
    `key_padding_mask=True`, padded caption tokens are left out of the sum over the caption."""

    def __init__(self, d: int, p_drop: float = 0.1, key_padding_mask: bool = False):
        super().__init__()
        self.Wq, self.Wkc, self.Wkt, self.Wv = (nn.Linear(d, d) for _ in range(4))
        self.dropout = nn.Dropout(p_drop)
        self.key_padding_mask = key_padding_mask

    def hops(self, X_r, X_c, X_t, caption_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The two hops: A1 (B, L_r, L_c) reference -> caption, A2 (B, L_c, L_t) caption -> target."""
        d = X_r.shape[-1]
        k_c = self.Wkc(X_c)                                                  # (B, L_c, d)
        A1 = self.Wq(X_r) @ k_c.transpose(1, 2) / math.sqrt(d)               # (B, L_r, L_c)
        A2 = k_c @ self.Wkt(X_t).transpose(1, 2) / math.sqrt(d)              # (B, L_c, L_t)
        if self.key_padding_mask and caption_mask is not None:
            A1 = A1 * caption_mask[:, None, :].to(A1.dtype)                  # padded caption tokens add nothing
        return A1, A2

    def forward(self, X_r, X_c, X_t, caption_mask=None) -> torch.Tensor:
        """X_r (B, L_r, d), X_c (B, L_c, d), X_t (B, L_t, d) -> o (B, d)."""
        A1, A2 = self.hops(X_r, X_c, X_t, caption_mask)
        P = self.dropout(torch.softmax(A1 @ A2, dim=-1))                     # (B, L_r, L_t)
        return (P @ self.Wv(X_t))[:, 0]                                      # (B, d)

    def path(self, X_r, X_c, X_t, caption_mask=None) -> torch.Tensor:
        """Where reference token 0's two-hop path goes, for pictures: (B, L_c, L_t), entry (k, j) =
        A1[0, k] A2[k, j], the part of (A1 A2)[0, j] that passes through caption token k. Summed
        over k it is row 0 of A1 A2, whose softmax over j is the attention o is read with."""
        A1, A2 = self.hops(X_r, X_c, X_t, caption_mask)
        return A1[:, 0, :, None] * A2                                        # (B, L_c, L_t)


class TwinAttentionCompositor(nn.Module):
    """CTR's twin-attention compositor (docs/extensions.md, 'CTR'): the two images together, no text.

    Branch r: Z = M_r(Y_r, Y_t, Y_t), then Z = M_r(Y_r, Z, Z) `iters - 1` more times (the same
    block, the query always the original Y_r); branch t mirrors it with its own block M_t.
    g = (Z_r[:, 0] + Z_t[:, 0]) / 2. Single-head `nn.MultiheadAttention`, no dropout, no
    residual, LayerNorm or mask; slot 0 is the ViT's [CLS]."""

    def __init__(self, d: int, iters: int = 4, heads: int = 1):
        super().__init__()
        self.iters = iters
        self.M_r = nn.MultiheadAttention(d, heads, dropout=0.0, batch_first=True)
        self.M_t = nn.MultiheadAttention(d, heads, dropout=0.0, batch_first=True)

    def branch(self, block: nn.MultiheadAttention, query, other, maps: list | None = None) -> torch.Tensor:
        """`iters` calls of `block`, the query always `query`; with a list `maps`, each call's
        attention weights (B, L, L) are appended to it."""
        Z = other
        for _ in range(self.iters):
            Z, weights = block(query, Z, Z, need_weights=maps is not None)  # (B, L, d)
            if maps is not None:
                maps.append(weights)
        return Z

    def attention_maps(self, Y_r, Y_t) -> dict[str, torch.Tensor]:
        """Each iteration's attention, for pictures: {"r": (iters, B, L, L) the reference's rows
        over the keys (the target, then its own previous output), "t": the mirror}."""
        maps = {"r": [], "t": []}
        self.branch(self.M_r, Y_r, Y_t, maps["r"])
        self.branch(self.M_t, Y_t, Y_r, maps["t"])
        return {k: torch.stack(v) for k, v in maps.items()}

    def forward(self, Y_r, Y_t) -> torch.Tensor:
        """Y_r, Y_t (B, L, d) -> g (B, d)."""
        return (self.branch(self.M_r, Y_r, Y_t)[:, 0] + self.branch(self.M_t, Y_t, Y_r)[:, 0]) / 2


def ce(logits: torch.Tensor, symmetric: bool = False) -> torch.Tensor:
    """Cross-entropy against the diagonal, rows (and, if `symmetric`, columns too, averaged)."""
    labels = torch.arange(len(logits), device=logits.device)
    loss = F.cross_entropy(logits, labels)
    return (loss + F.cross_entropy(logits.t(), labels)) / 2 if symmetric else loss


class CaLa(nn.Module):
    """The two training-only modules and the loss that mixes them with the filter's logits."""

    def __init__(self, text_width: int, vision_width: int, weights: CalaConfig | None = None):
        super().__init__()
        if vision_width != text_width:       # CaLa's CLIP path adds an adapter here (docs/extensions.md, 'CaLa on a BLIP filter')
            raise ValueError(f"CaLa maps ViT tokens ({vision_width}-d) onto text states ({text_width}-d): "
                             "the widths must match, as in BLIP")
        self.weights = weights or CalaConfig()
        if self.weights.form not in FORMS:
            raise ValueError(f"CaLa form={self.weights.form!r}; expected one of {FORMS}")
        self.hca = HingeCrossAttention(text_width)
        self.tac = TwinAttentionCompositor(text_width)

    @property
    def active(self) -> bool:
        """False when the loss is the plain filter's (code form, both weights 0): nothing to compute."""
        return self.weights.form == "paper" or bool(self.weights.w_c) or bool(self.weights.w_t)

    def aux(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.weights.normalize_aux else x

    def tbia_logits(self, H_mm, H_txt, V_tgt, caption_mask=None) -> torch.Tensor:
        """S_tbia (B, B) = scale * o_i . m_j: triplet i's pseudo-target against triplet j's query."""
        o = self.hca(H_mm, H_txt, V_tgt, caption_mask)                       # (B, d)
        return self.weights.scale * self.aux(o) @ self.aux(H_mm[:, 0]).t()

    def ctr_logits(self, H_txt, V_ref, V_tgt) -> torch.Tensor:
        """S_ctr (B, B) = scale * c_i . g_j: triplet i's caption against triplet j's image pair."""
        g = self.tac(V_ref, V_tgt)                                           # (B, d)
        return self.weights.scale * self.aux(H_txt[:, 0]) @ self.aux(g).t()

    def mix(self, S_ctr: torch.Tensor, S_f: torch.Tensor) -> torch.Tensor:
        """The authors' logit-level fusion: w_c S_ctr + (1 - w_c) S_f."""
        return self.weights.w_c * S_ctr + (1 - self.weights.w_c) * S_f

    def logits(self, S_f, H_mm, H_txt, V_ref, V_tgt, caption_mask=None) -> dict[str, torch.Tensor]:
        """Every (B, B) logit matrix of the loss: "S_f" (the filter's), "S_ctr", "S_tbia" and, in the
        code form, "S_mix" = w_c S_ctr + (1 - w_c) S_f (the logit-level fusion the authors train)."""
        S = {"S_f": S_f, "S_ctr": self.ctr_logits(H_txt, V_ref, V_tgt),
             "S_tbia": self.tbia_logits(H_mm, H_txt, V_tgt, caption_mask)}
        if self.weights.form == "code":
            S["S_mix"] = self.mix(S["S_ctr"], S_f)
        return S

    def loss(self, S_f, H_mm, H_txt, V_ref, V_tgt, caption_mask=None) -> torch.Tensor:
        """The filter's logits S_f (B, B) and the triplets' states -> the CaLa training loss.
        In the code form a zero weight skips its module, as the authors' code does."""
        w, sym = self.weights, self.weights.symmetric_ce
        if w.form == "paper":
            return (ce(S_f, sym) + w.alpha * ce(self.tbia_logits(H_mm, H_txt, V_tgt, caption_mask), sym)
                    + w.beta * ce(self.ctr_logits(H_txt, V_ref, V_tgt), sym))
        mixed = self.mix(self.ctr_logits(H_txt, V_ref, V_tgt), S_f) if w.w_c else S_f
        main = ce(mixed, sym)
        if not w.w_t:
            return main
        return w.w_t * ce(self.tbia_logits(H_mm, H_txt, V_tgt, caption_mask), sym) + (1 - w.w_t) * main
