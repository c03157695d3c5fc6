"""Zero-shot composed retrieval with pseudo-word tokens (seed system 3; docs/extensions.md).

No CIR triplets (or, in Stage II, very few): a frozen BLIP answers "a photo of $ that {text}",
where "$" is not a word but the reference image, mapped into the text encoder's word-embedding
space. The text encoder reads the prompt in unimodal mode ([CLS] at position 0, no
cross-attention), its [CLS] through `text_proj` is the query, and the gallery is
`vision_proj` of each image's ViT [CLS]: BLIP's own image-text contrastive (ITC) space.

* The projection baseline (Pic2Word, docs/extensions.md, 'Zero-shot'): `PseudoWordMapper` phi maps the image's
  unnormalised ITC embedding to one pseudo-word embedding. Trained on images alone: the prompt
  "a photo of $" must retrieve its own image among the batch's.
* "From Mapping to Composing" (Wang et al., 2025), as a teaching version **inspired by** the
  paper, whose code and details are not public (every unknown is a `ZeroShotConfig` field):
  Stage I, mapping: `TokenLearner` (k learnable queries over the image tokens give k pseudo
  words), `VisualInjection` (a zero-initialised, gated cross-attention into the top text layers
  that only the pseudo-word positions use) and a soft text alignment loss (engine);
  Stage II, composing: `ComposingAdapter`s after every text layer (bottleneck, zero-initialised
  up-projection, residual), trained on a small budget of triplets, Stage I frozen.

Zero-initialised gates and adapters leave the model exactly as it was at their step 0.
"""
from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F
from torch import nn

from cirtutor.config import ZeroShotConfig
from cirtutor.models.tokenizer import blip_tokenizer, tokenize_text_only

PLACEHOLDER = "$"


def placeholder_id() -> int:
    """The id of "$", a single WordPiece token in BLIP's vocabulary (1002)."""
    return blip_tokenizer().convert_tokens_to_ids(PLACEHOLDER)


def prompts(texts, template: str, k: int = 1) -> list[str]:
    """Fill `template` ("a photo of $ that {text}") with each text, "$" repeated k times."""
    if template.count(PLACEHOLDER) != 1:
        raise ValueError(f"a prompt template needs exactly one {PLACEHOLDER!r}: {template!r}")
    slot = " ".join([PLACEHOLDER] * k)
    return [template.replace(PLACEHOLDER, slot).format(text=t) for t in texts]


def insert_pseudo_words(word_embeddings: nn.Embedding, input_ids: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """The prompt's word embeddings (B, L, d) with the k placeholder positions of each row
    replaced by that row's pseudo words (B, k, d), in order. This happens before position
    embeddings and the embedding LayerNorm are added, as CLIP's token swap does in Pic2Word."""
    slots = input_ids == placeholder_id()                                  # (B, L)
    per_row = slots.sum(1)
    if not torch.all(per_row == words.shape[1]):
        raise ValueError(f"each prompt needs {words.shape[1]} {PLACEHOLDER!r} tokens for its pseudo words; "
                         f"found {per_row.tolist()}")
    embeds = word_embeddings(input_ids)                                    # (B, L, d)
    return embeds.masked_scatter(slots[..., None], words.to(embeds.dtype))


class PseudoWordMapper(nn.Module):
    """phi, Pic2Word's mapping (docs/extensions.md, 'Zero-shot'): Linear, Dropout, ReLU, Linear, Dropout, ReLU, Linear,
    from the image's unnormalised ITC embedding (E) to one word embedding (d)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.Dropout(dropout), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.Dropout(dropout), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, image_emb: torch.Tensor) -> torch.Tensor:
        """(B, E) -> (B, 1, d): one pseudo word."""
        return self.net(image_emb)[:, None]


class TokenLearner(nn.Module):
    """Stage I's token learner [I]: k learnable queries cross-attend all the image tokens
    (B, L_v, d_v) and a Linear maps each result to a word embedding: k pseudo words (B, k, d)."""

    def __init__(self, k: int, vision_width: int, text_width: int, heads: int = 1):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(k, vision_width) * 0.02)
        self.attn = nn.MultiheadAttention(vision_width, heads, batch_first=True)
        self.norm = nn.LayerNorm(vision_width)
        self.out = nn.Linear(vision_width, text_width)

    def forward(self, image_tokens: torch.Tensor) -> torch.Tensor:
        q = self.queries.expand(len(image_tokens), -1, -1)                 # (B, k, d_v)
        kv = self.norm(image_tokens)
        return self.out(self.attn(q, kv, kv, need_weights=False)[0])       # (B, k, d)


class VisualInjection(nn.Module):
    """Stage I's visual semantic injection [I]: into a text layer's input, h += tanh(gate) * CA(LN(h), V)
    at the pseudo-word positions only (elsewhere h is untouched); the layer's self-attention then
    carries it to [CLS] (added *after* the last layer, it could not reach [CLS] any more). A
    **new** cross-attention, not BLIP's grounded one (docs/extensions.md, 'The tiny two-stage version': reusing it turns the model into
    the supervised filter). gate starts at 0, so at step 0 the layer's input is exactly the frozen model's."""

    def __init__(self, text_width: int, vision_width: int, heads: int = 1):
        super().__init__()
        self.norm = nn.LayerNorm(text_width)
        self.attn = nn.MultiheadAttention(text_width, heads, kdim=vision_width, vdim=vision_width, batch_first=True)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, h: torch.Tensor, image_tokens: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """h (B, L, d), image tokens (B, L_v, d_v), slots (B, L) bool -> (B, L, d)."""
        update = self.attn(self.norm(h), image_tokens, image_tokens, need_weights=False)[0]
        return h + torch.tanh(self.gate) * update * slots[..., None].to(h.dtype)


class ComposingAdapter(nn.Module):
    """Stage II's composing adapter [I]: h + up(GELU(down(h))), d -> d/r -> d, after a text
    layer, at every position. `up` starts at zero, so at step 0 it is the identity."""

    def __init__(self, width: int, reduction: int = 8):
        super().__init__()
        self.down = nn.Linear(width, max(1, width // reduction))
        self.up = nn.Linear(max(1, width // reduction), width)
        nn.init.zeros_(self.up.weight), nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.gelu(self.down(h)))


class ZeroShotEncoder(nn.Module):
    """A frozen BLIP (text encoder in unimodal mode, `text_proj`, `vision_proj`, temperature)
    plus the trainable parts of the zero-shot variants: the mapper (phi or a token learner),
    optional visual injections (into the inputs of the top `inject_layers` layers) and composing
    adapters (after every layer).

    The extra modules act through forward hooks on the text layers, so the BLIP weights and
    their names stay as transformers builds them."""

    def __init__(self, text_encoder: nn.Module, text_proj: nn.Linear, vision_proj: nn.Linear, temp: float,
                 cfg: ZeroShotConfig):
        """`temp`: the backbone's ITC temperature, used unless `cfg.temp` sets one."""
        super().__init__()
        self.cfg = cfg
        self.text_encoder = copy.deepcopy(text_encoder)
        self.text_proj, self.vision_proj = copy.deepcopy(text_proj), copy.deepcopy(vision_proj)
        self.register_buffer("temp", torch.tensor(float(cfg.temp or temp)))
        for p in self.parameters():
            p.requires_grad_(False)                                        # the backbone stays frozen
        d, d_v, e = text_proj.in_features, vision_proj.in_features, vision_proj.out_features
        if cfg.mapper == "mlp":
            if cfg.k != 1:
                raise ValueError(f"zeroshot.mapper='mlp' makes one pseudo word; zeroshot.k={cfg.k} needs mapper='tokens'")
            self.mapper = PseudoWordMapper(e, cfg.hidden or 2 * d, d, cfg.dropout)
        elif cfg.mapper == "tokens":
            self.mapper = TokenLearner(cfg.k, d_v, d, cfg.heads)
        else:
            raise ValueError(f"zeroshot.mapper={cfg.mapper!r}; expected 'mlp' or 'tokens'")
        layers = self.text_encoder.encoder.layer
        if not 0 <= cfg.inject_layers <= len(layers):
            raise ValueError(f"zeroshot.inject_layers={cfg.inject_layers}; the text encoder has {len(layers)} layers")
        self.injections = nn.ModuleDict({str(i): VisualInjection(d, d_v, cfg.heads)
                                         for i in range(len(layers) - cfg.inject_layers, len(layers))})
        self.adapters = nn.ModuleDict()
        self._context: dict | None = None
        self._blank = False                                                # `without_image_words`
        for i, layer in enumerate(layers):
            layer.register_forward_pre_hook(self._before_layer(str(i)))
            layer.register_forward_hook(self._after_layer(str(i)))

    def add_adapters(self) -> None:
        """Stage II: freeze everything trained so far and add a zero-initialised adapter per layer."""
        for p in self.parameters():
            p.requires_grad_(False)
        width = self.text_proj.in_features
        self.adapters = nn.ModuleDict({str(i): ComposingAdapter(width, self.cfg.adapter_reduction)
                                       for i in range(len(self.text_encoder.encoder.layer))})
        self.adapters.to(self.temp.device)

    def _before_layer(self, name: str):
        def hook(module, args):                                        # args[0]: the layer's input h (B, L, d)
            ctx = self._context
            if ctx is None or name not in self.injections or ctx["image_tokens"] is None:
                return None
            return (self.injections[name](args[0], ctx["image_tokens"], ctx["slots"]), *args[1:])
        return hook

    def _after_layer(self, name: str):
        def hook(module, inputs, output):
            if self._context is None or name not in self.adapters:
                return output
            return self.adapters[name](output)
        return hook

    @contextlib.contextmanager
    def _layers_see(self, image_tokens, slots):
        self._context = {"image_tokens": image_tokens, "slots": slots}
        try:
            yield
        finally:
            self._context = None

    @contextlib.contextmanager
    def without_image_words(self):
        """Inside: every pseudo word is the zero vector, so "$" carries no image (its position
        embedding still goes in). The injections, if any, still see the image tokens."""
        self._blank = True
        try:
            yield self
        finally:
            self._blank = False

    def gallery_embed(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Image tokens (N, L_v, d_v) -> normalised ITC image embeddings (N, e)."""
        return F.normalize(self.vision_proj(image_tokens[:, 0]), dim=-1)

    def pseudo_words(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Image tokens (B, L_v, d_v) -> pseudo words (B, k, d)."""
        if self._blank:
            return image_tokens.new_zeros(len(image_tokens), self.cfg.k, self.text_proj.in_features)
        if isinstance(self.mapper, PseudoWordMapper):
            return self.mapper(self.vision_proj(image_tokens[:, 0]))      # phi reads the unnormalised embedding
        return self.mapper(image_tokens)

    def text_embed(self, input_ids, text_mask, words: torch.Tensor | None = None,
                   image_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Unimodal prompts (B, L) ([CLS] first) -> normalised ITC text embeddings (B, e). With
        `words` (B, k, d), they replace the prompts' "$" tokens; `image_tokens` feed the
        visual injections (at those positions)."""
        embeds = self.text_encoder.embeddings.word_embeddings
        inputs = embeds(input_ids) if words is None else insert_pseudo_words(embeds, input_ids, words)
        with self._layers_see(image_tokens, input_ids == placeholder_id()):
            h = self.text_encoder(inputs_embeds=inputs, attention_mask=text_mask, is_decoder=False).last_hidden_state
        return F.normalize(self.text_proj(h[:, 0]), dim=-1)

    def prompt_embed(self, input_ids, text_mask, image_tokens: torch.Tensor) -> torch.Tensor:
        """Tokenised prompts (B, L) whose "$" stand for the images `image_tokens` (B, L_v, d_v):
        their pseudo words go in, and the injections (if any) see the same images. (B, e)"""
        return self.text_embed(input_ids, text_mask, self.pseudo_words(image_tokens), image_tokens)

    def query_embed(self, texts, image_tokens: torch.Tensor, template: str | None = None) -> torch.Tensor:
        """Composed queries: each text in the prompt template with the reference's pseudo words
        (B, e). Default template: `cfg.query_template` ("a photo of $ that {text}")."""
        ids, mask = tokenize_text_only(prompts(texts, template or self.cfg.query_template, self.cfg.k),
                                       image_tokens.device)
        return self.prompt_embed(ids, mask, image_tokens)

    def image_prompt_embed(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Stage I's prompt, "a photo of $" for each image: (B, e)."""
        return self.query_embed([""] * len(image_tokens), image_tokens, self.cfg.image_template)

    def logits(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B, e) x (N, e) normalised -> cosine / the frozen ITC temperature."""
        return a @ b.t() / self.temp
