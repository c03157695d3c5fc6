"""One configuration system: dataclass sections whose defaults are the paper's settings, and named
presets, overridable field by field.

A preset is a complete, named configuration (`tiny`, `tiny_fashioniq`, `paper_fashioniq`,
`paper_cirr`), written as a short commented override file in cirtutor/presets/ that says only how it
differs from these defaults. Commands and notebooks start from a preset and override fields
(`--set data.resolution=128`), never copy one. Later stages add their own sections here.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import math
import typing
from dataclasses import dataclass, field

from cirtutor.errors import CirtutorError
from cirtutor.presets import NAMES as PRESET_NAMES

# How cache entries and trained models are named, in one place: docs/caching.md.
# Field metadata for switches that change how fast a result is computed, never the result (exact
# speed paths): the digests that name trained models leave them out, so flipping one reuses them.
SPEED_ONLY = {"speed_only": True}
# Field metadata for options added after trained models were shipped: a digest names them only when
# they are set away from their default, so the models trained before them keep their names.
WHEN_SET = {"when_set": True}


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def result_fields(section) -> dict:
    """A config section as a dict of what a trained model depends on: without its SPEED_ONLY
    fields, and without WHEN_SET fields left at their default."""
    out = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if f.metadata.get("speed_only") or (f.metadata.get("when_set") and value == _default(f)):
            continue
        out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


@dataclass
class CalaConfig:
    """CaLa's training-only associations for stage 1 (docs/extensions.md, 'The CaLa loss as coded'; `stage1.aux=cala`).
    Defaults: the authors' README recipe and code."""
    w_c: float = 0.45               # CTR's share of the mixed logits w_c S_ctr + (1 - w_c) S_f (code form)
    w_t: float = 0.1                # TBIA's share of the loss w_t CE(S_tbia) + (1 - w_t) CE(mixed) (code form)
    scale: float = 10.0             # the auxiliary logits' hard-coded factor
    form: str = "code"              # "code": the authors' mix | "paper": CE(S_f) + alpha CE(S_tbia) + beta CE(S_ctr)
    alpha: float = 0.1              # paper form (the paper's values are unknown, docs/extensions.md, 'The CaLa loss as coded')
    beta: float = 0.1
    normalize_aux: bool = False     # documented deviation: L2-normalise o, m, c, g before the dot products
    symmetric_ce: bool = False      # documented deviation: add the column-direction CE
    lr_mult: float = 2.0            # the two modules' learning-rate factor (authors: 2x)


@dataclass
class ZeroShotConfig:
    """Zero-shot CIR with pseudo words (docs/extensions.md; `cirtutor zeroshot`). The
    baseline is Pic2Word's recipe on a frozen BLIP; everything marked [?] is unknown for "From
    Mapping to Composing" (docs/extensions.md, 'From Mapping to Composing'): a field with a documented default, not a source fact."""
    # Stage I, mapping: images only
    images: str | None = field(default=None, metadata=WHEN_SET)  # Stage I's images: a folder (searched recursively;
                                    # Pic2Word: CC3M); None = the training split's gallery (tiny mode: the synthetic world's)
    mapper: str = "mlp"             # "mlp": phi on the ITC image embedding (Pic2Word) | "tokens": a token learner [?]
    k: int = 1                      # pseudo words per image (mlp: 1) [?]
    hidden: int | None = None       # phi's hidden width; None = 2 x text width (docs/extensions.md, 'Zero-shot')
    dropout: float = 0.1            # phi's dropout (Pic2Word)
    heads: int = 1                  # heads of the token learner and the injections [?]
    inject_layers: int = 0          # visual injection into the top n text layers (0: none, the baseline) [?]
    soft_weight: float = 0.0        # weight of the soft text alignment KL (0: none, the baseline) [?]
    soft_temp: float = 0.05         # temperature of its caption-caption soft targets [?]
    temp: float | None = None       # the contrastive temperature; None = the backbone's frozen ITC one (Pic2Word)
    image_template: str = "a photo of $"                 # Stage I prompt (Pic2Word)
    query_template: str = "a photo of $ that {text}"     # zero-shot query (SEARLE's form)
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3                # Pic2Word: 1e-4 at batch 128 for 30 epochs on CC3M; tiny mode trains far fewer steps
    weight_decay: float = 0.1       # Pic2Word
    # Stage II, composing: a small budget of triplets, Stage I frozen
    budget: float = 0.0             # share of the training triplets used (0: no Stage II) [?]
    adapter_reduction: int = 8      # adapters d -> d / r -> d (docs/extensions.md, 'The tiny two-stage version') [?]
    hard_negatives: int = 5         # per query: the top-h train gallery images of the Stage I model, target excluded [?]
    stage2_epochs: int = 10
    stage2_batch_size: int = 32
    stage2_lr: float = 1e-3


@dataclass
class DataConfig:
    dataset: str = "cirr"           # on-disk format and loader: "cirr" or "fashioniq"
    root: str | None = None         # dataset folder (cirr_dataset/ or fashionIQ_dataset/); None = synthetic, built in the cache
    annotations: str | None = None  # folder with captions/ and image_splits/, if not under root
    images: str | None = None       # image root, if not the default one under root
    resolution: int = 384           # square model input in pixels (docs/data_formats.md, 'Image preprocessing': 384 in paper mode)
    synthetic_size: int = 1000      # tiny mode: synthetic train references (x5 edits = train triplets)
    synthetic_resolution: int = 64  # tiny mode: size the synthetic images are drawn at
    synthetic_siblings: str = field(default="any", metadata=WHEN_SET)  # tiny mode: a reference's 5 edits change "any"
                                    # objects, or all the "same_object" (near-duplicate targets; data/synthetic.py)
    seed: int = 0                   # seeds the synthetic world and Fashion-IQ caption sampling


@dataclass
class ModelConfig:
    """BLIP backbone dims (docs/authors_code.md, 'BLIP backbones') and the re-ranker's ablation switches (docs/authors_code.md, 'Ablation variants').

    The defaults are BLIP-base exactly (ViT-B/16 at 384 px, BERT-base MED with cross-attention)."""
    # vision: BLIP ViT (transformers' BlipVisionModel)
    image_size: int = 384           # input side; (image_size / patch_size)^2 + 1 tokens (577)
    patch_size: int = 16
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    vision_mlp: int = 3072
    vision_eps: float = 1e-6        # BLIP's ViT LayerNorm eps (transformers' default is 1e-5)
    # text: BLIP MED BERT with cross-attention in every layer (transformers' BlipTextModel)
    text_width: int = 768
    text_layers: int = 12
    text_heads: int = 12            # BLIP-base: 12 (transformers' default is 8)
    text_intermediate: int = 3072
    text_eps: float = 1e-12
    vocab_size: int = 30524         # uncased BERT WordPiece 30522 + [DEC] + [ENC]
    max_positions: int = 512
    dropout: float = 0.1            # hidden and attention-probability dropout of the text encoder
    # stage-1 heads
    embed_dim: int = 256            # vision_proj / text_proj output
    temp: float = 0.07              # initial temperature (a BLIP checkpoint overrides it)
    # stage-2 re-ranker variants (paper Tables 3/4)
    streams: str = "both"           # "both" | "z_t" (w/o Encoder-t) | "text" (w/o Encoder-z_t)
    zt_input: str = "z_t"           # Encoder-z_t input: "z_t" | "ref_cls" | "ref_cls_spatial"
    spatial_grid: int = 6           # ref_cls_spatial: reference patch grid pooled to grid x grid
    merge: str = "paper"            # "paper": average in the first half of the layers, concat+Linear after; "full_mlp": concat+Linear everywhere
    dual_ffn: bool = False          # True: a feed-forward per stream instead of one shared
    merge_init: str = "bert"        # new merge layers: "bert" N(0, 0.02) as the paper's; "average": [I/2, I/2], so
                                    # they start as the first half's averaging (a tiny-mode option)

    @property
    def image_tokens(self) -> int:
        """L_v: the ViT's patches plus its [CLS] (577 at 384 px with 16 px patches)."""
        return (self.image_size // self.patch_size) ** 2 + 1


@dataclass
class Stage1Config:
    """Training the candidate filter (paper §4.2; docs/authors_code.md, 'Training recipe', 'Epochs and cosine horizons')."""
    epochs: int = 10                # paper: 10 (the authors' FIQ instructions run 20, CIRR 40 with horizon 10)
    batch_size: int = 512
    lr: float = 2e-5                # AdamW, betas (0.9, 0.999), eps 1e-8
    weight_decay: float = 0.05      # on every trainable tensor, biases, LayerNorms and temp included
    schedule: str = "epoch"         # cosine to 0 set once per epoch as the authors do; "step": per optimisation step
    horizon: int | None = None      # cosine horizon in epochs; None = epochs (paper). Authors' scripts: FIQ 20 run 20,
                                    # CIRR horizon 10 run 40 (the lr climbs again past it; docs/authors_code.md, 'Epochs and cosine horizons')
    grad_accum: int = 1             # batches summed per optimisation step (smaller GPUs; negatives stay per batch)
    checkpoint_every: int = 0       # steps between mid-epoch checkpoints (0: at epoch ends only)
    validate_every: int = 1         # epochs between validations (0: none until the end); the authors validate every epoch
    select: str = "best"            # checkpoint evaluated at the end: "best" on validation (authors) | "last"
    batch_composition: str = "random"  # "random" (paper) | "reference_groups": batches of whole same-reference groups
    init_temp: float | None = None  # None: keep the checkpoint's temperature (paper); a value resets it first
    amp: bool = True                # fp16 autocast + GradScaler on CUDA (the paper's AMP)
    cpu_bf16: bool = False          # bf16 autocast on CPU (a tiny-mode speed option; the frozen parts stay fp32)
    eval_batch_size: int = 32       # queries per evaluation batch (docs/authors_code.md, 'Evaluation batches of 32')
    aux: str = field(default="none", metadata=WHEN_SET)  # training-only extra losses: "none" (the paper) |
                                    # "cala" (CaLa's TBIA + CTR, seed system 2; evaluation unchanged)
    cala: CalaConfig = field(default_factory=CalaConfig, metadata=WHEN_SET)


@dataclass
class Stage2Config:
    """Training and running the re-ranker (paper §3.2, §4.2; docs/authors_code.md, 'Training recipe'; docs/metrics.md, 'Re-ranked evaluation')."""
    epochs: int = 50                # paper: 50 (Fashion-IQ), 80 (CIRR)
    batch_size: int = 16            # B: the B x B logits of Eq. 2
    lr: float = 2e-5
    weight_decay: float = 0.05
    schedule: str = "epoch"         # cosine set once per epoch (authors) | "step"
    horizon: int | None = None      # cosine horizon in epochs; None = epochs (paper). Authors' CIRR script: 80 run 100
    grad_accum: int = 1             # batches summed per optimisation step
    checkpoint_every: int = 0       # steps between mid-epoch checkpoints (0: at epoch ends only)
    validate_every: int = 1         # epochs between validations (0: none until the end)
    select: str = "best"            # "best" on validation (authors) | "last"
    head_lr_mult: float = 1.0       # learning-rate factor for the new parts (merge layers, cls_head)
    init: str = "blip"              # both streams start from "blip" (the initial weights; paper) | "stage1" (the
                                    # trained filter's text encoder; a tiny-mode option)
    batch_composition: str = "random"  # "random" (paper) | "hard": a seed query, its same-reference edits and
                                    # queries whose targets are in the seed's filter top-`hard_pool`
    hard_pool: int = 60
    negatives: str = "in_batch"     # "in_batch": Eq. 2, each query against the batch's B targets (paper) | "filter_topk":
                                    # each row also gets `num_negatives` candidates drawn from the query's own filter
                                    # top-`topk_pool` on the train gallery, the lists it will re-rank (tiny-mode option)
    num_negatives: int = 5
    topk_pool: int = 20
    k: int = 50                     # K re-ranked at evaluation (paper: 100 Fashion-IQ, 50 CIRR)
    eval_ks: tuple = (10, 20, 50, 100)  # K values evaluated from one scoring pass over max(eval_ks)
    eval_batch_size: int = 8        # queries per scoring forward (x K candidates each)
    amp: bool = True                # fp16 autocast + GradScaler on CUDA (the paper's AMP)
    cpu_bf16: bool = False          # bf16 autocast on CPU (a tiny-mode speed option)
    share_kv: bool = True           # B x B: candidate keys/values once per target, not per pair (exact)
    checkpointing: bool = field(default=False, metadata=SPEED_ONLY)  # activation checkpointing per dual-encoder
                                    # layer: less memory, ~1/3 more compute, the same gradients
    fast_eval: bool = field(default=True, metadata=SPEED_ONLY)  # evaluation groups the split's pairs by
                                    # candidate: its keys/values once for every query ranking it (exact);
                                    # False: one forward of K pairs per query, as the authors' script
    z_t: str = "cached"             # "cached": z_t computed once per query, filter in eval mode (the paper: pre-computable);
                                    # "recompute": every step with the filter in train mode, dropout on (authors; docs/authors_code.md, 'Dropout in z_t')
    dropout: float | None = None    # the re-ranker's dropout; None = model.dropout (BLIP's 0.1, the paper)
    drop_path: float = 0.0          # 0: image tokens from the frozen ViT in eval mode, cached (the paper's frozen ViT);
                                    # > 0: the ViT runs every step in train mode with stochastic depth 0 … drop_path
                                    # over its blocks, references and targets (authors: 0.1, docs/authors_code.md, 'Drop-path on the stage-2 image tokens')


@dataclass
class Config:
    name: str = "custom"            # preset name, recorded with every run
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    out_dir: str = "runs"           # where runs write checkpoints, top-K files and reports
    weights: str | None = None      # initial weights: BLIP model_base.pth / a transformers BLIP folder (paper mode);
                                    # None = tiny mode's pretrained mini-BLIP (shipped, or built into the cache)
    device: str = "auto"            # "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1", ...
    subsample: str | None = None    # "train=0.1,val=500,gallery=2000": seeded subsets of the real data (not the paper's numbers)
    ablations: tuple = ()           # re-ranker variants `reproduce` also trains: "no_text" (w/o Encoder-t), "no_zt" (w/o Encoder-z_t)
    ablation_epochs: int | None = None  # stage-2 epochs of those variants; None = stage2.epochs (the paper: one recipe);
                                    # fewer puts an "unequal budgets" warning under the report's ablation table
    models: str = "train"           # "train": every seed's filter and re-ranker trained in the run | "shipped": seed 0's
                                    # are `trained.trained_filter` / `trained_reranker`'s (tiny: the package's shipped
                                    # models, trained with this recipe), copied into the run and evaluated there
    ablation_models: str = "train"  # "train": every seed's variants trained in the run | "shipped": seed 0's come from
                                    # `trained.trained_reranker` (tiny: the package's shipped models, trained as long as
                                    # R on the shipped seed-0 filter and evaluated with it), labelled so in the report


# The re-ranker variants `--ablation` and `ablations=` name: the label the report gives each, and the model switches
# that make it (paper Tables 3 and 4; notebook 07). `pipeline.variant_config` applies them.
ABLATIONS = {
    "no_text": ("w/o Encoder-t", {"streams": "z_t"}),
    "no_zt": ("w/o Encoder-z_t", {"streams": "text"}),
    "ref_cls": ("w. Ref_CLS", {"zt_input": "ref_cls"}),
    "ref_cls_spatial": ("w. Ref_CLS + Spatial-6x6", {"zt_input": "ref_cls_spatial"}),
    "full_mlp": ("Full-MLP merge", {"merge": "full_mlp"}),
    "dual_ffn": ("Dual feed-forward", {"dual_ffn": True}),
}

# ----------------------------------------------------------------------------- presets


def _field_of(cfg: Config, key: str):
    """The section of `cfg` that holds `key` ("stage2.lr": cfg.stage2), the field's name and the
    section's type hints; a CirtutorError when the key names no field."""
    *path, leaf = key.split(".")
    target = cfg
    for part in path:
        target = getattr(target, part, None)
        if not dataclasses.is_dataclass(target):
            raise CirtutorError(f"unknown config section {part!r} in {key!r}")
    hints = typing.get_type_hints(type(target))
    if leaf not in hints:
        raise CirtutorError(f"unknown field {key!r}; {type(target).__name__} has {', '.join(hints)}")
    return target, leaf, hints


def _load_preset(name: str) -> Config:
    """Preset `name` from its override file, cirtutor/presets/<name>.py: its BASE preset (or the
    defaults, the paper's settings) with its OVERRIDES set, named `name`."""
    module = importlib.import_module(f"cirtutor.presets.{name}")
    base = getattr(module, "BASE", None)
    cfg = _load_preset(base) if base else Config()
    cfg.name = name
    for key, value in module.OVERRIDES.items():
        target, leaf, hints = _field_of(cfg, key)
        if type(value) not in (typing.get_args(hints[leaf]) or (hints[leaf],)):   # 0 for 0.0 would rename trained models
            raise CirtutorError(f"preset {name}: {key}={value!r} is not a {hints[leaf]}")
        setattr(target, leaf, value)
    return cfg


# Every preset by name, in cirtutor/presets' order: short commented files, each saying how it differs from
# the defaults or from another preset.
PRESETS: dict[str, Config] = {name: _load_preset(name) for name in PRESET_NAMES}

# Model dims by name (`cirtutor model-info --preset paper`): BLIP-base, and tiny mode's (cirtutor/presets/tiny.py).
MODEL_PRESETS: dict[str, ModelConfig] = {"paper": ModelConfig(), "tiny": PRESETS["tiny"].model}

# The variants the findings scorecard compares with (`cirtutor.findings`: F4-F6), the tiny preset's `ablations`.
# `make demo` loads them trained as long as R (ablation_models="shipped"), so that its ablation rows never compare
# training budgets.
TINY_ABLATIONS: tuple = PRESETS["tiny"].ablations


def get_preset(name: str) -> Config:
    """A fresh copy of preset `name`."""
    if name not in PRESETS:
        raise CirtutorError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def get_model_config(name: str) -> ModelConfig:
    """Model dims by name: "paper", "tiny", or the model section of a full preset."""
    if name in MODEL_PRESETS:
        return copy.deepcopy(MODEL_PRESETS[name])
    return get_preset(name).model


def _convert(text: str, annotation: typing.Any, key: str):
    types = [t for t in typing.get_args(annotation) or (annotation,) if t is not type(None)]
    if text.lower() in ("none", "null") and type(None) in typing.get_args(annotation):
        return None
    for t in types:
        try:
            if t is tuple:  # comma-separated, e.g. stage2.eval_ks=10,20,50 or ablations=no_text,no_zt; (…) or […] allowed
                text = text.strip()
                if text[:1] + text[-1:] in ("()", "[]"):
                    text = text[1:-1]
                return tuple(int(x) if x.strip().isdigit() else x.strip() for x in text.split(",") if x.strip())
            if t is bool:
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                return text.lower() in ("true", "1")
            return t(text)
        except (TypeError, ValueError):
            continue
    raise CirtutorError(f"cannot set {key}={text!r}: expected {annotation}")


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply `section.field=value` strings (the CLI's --set) to a copy of `cfg`."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise CirtutorError(f"override {item!r} must look like section.field=value")
        target, leaf, hints = _field_of(cfg, key)
        setattr(target, leaf, _convert(value, hints[leaf], key))
    return validate(cfg)


# ----------------------------------------------------------------------------- checking a config


CHOICES = {  # field -> the values it accepts
    "data.dataset": ("cirr", "fashioniq"),
    "data.synthetic_siblings": ("any", "same_object"),
    "model.streams": ("both", "z_t", "text"),
    "model.zt_input": ("z_t", "ref_cls", "ref_cls_spatial"),
    "model.merge": ("paper", "full_mlp"),
    "model.merge_init": ("bert", "average"),
    "stage1.schedule": ("epoch", "step"),
    "stage1.select": ("best", "last"),
    "stage1.batch_composition": ("random", "reference_groups"),
    "stage1.aux": ("none", "cala"),
    "stage1.cala.form": ("code", "paper"),
    "stage2.schedule": ("epoch", "step"),
    "stage2.select": ("best", "last"),
    "stage2.init": ("blip", "stage1"),
    "stage2.batch_composition": ("random", "hard"),
    "stage2.negatives": ("in_batch", "filter_topk"),
    "stage2.z_t": ("cached", "recompute"),
    "zeroshot.mapper": ("mlp", "tokens"),
    "models": ("train", "shipped"),
    "ablation_models": ("train", "shipped"),
}
AT_LEAST_ONE = (  # counts and sizes (None allowed where the field's default is None)
    "data.resolution", "data.synthetic_size", "data.synthetic_resolution",
    "model.image_size", "model.patch_size", "model.vision_width", "model.vision_layers", "model.vision_heads",
    "model.vision_mlp", "model.text_width", "model.text_layers", "model.text_heads", "model.text_intermediate",
    "model.vocab_size", "model.max_positions", "model.embed_dim", "model.spatial_grid",
    "stage1.epochs", "stage1.batch_size", "stage1.horizon", "stage1.grad_accum", "stage1.eval_batch_size",
    "stage2.epochs", "stage2.batch_size", "stage2.horizon", "stage2.grad_accum", "stage2.eval_batch_size",
    "stage2.hard_pool", "stage2.num_negatives", "stage2.topk_pool", "stage2.k",
    "zeroshot.k", "zeroshot.heads", "zeroshot.epochs", "zeroshot.batch_size", "zeroshot.adapter_reduction",
    "zeroshot.stage2_epochs", "zeroshot.stage2_batch_size", "zeroshot.hidden", "ablation_epochs",
)
AT_LEAST_ZERO = ("stage1.checkpoint_every", "stage1.validate_every", "stage2.checkpoint_every",
                 "stage2.validate_every", "zeroshot.inject_layers", "zeroshot.hard_negatives")
POSITIVE = ("model.temp", "stage1.lr", "stage2.lr", "stage1.init_temp", "stage2.head_lr_mult",
            "stage1.cala.scale", "stage1.cala.lr_mult", "zeroshot.lr", "zeroshot.stage2_lr", "zeroshot.temp",
            "zeroshot.soft_temp", "model.vision_eps", "model.text_eps")
NON_NEGATIVE = ("stage1.weight_decay", "stage2.weight_decay", "zeroshot.weight_decay", "zeroshot.soft_weight",
                "stage1.cala.alpha", "stage1.cala.beta")
FRACTIONS = ("zeroshot.budget", "stage1.cala.w_c", "stage1.cala.w_t")                      # in [0, 1]
RATES = ("model.dropout", "stage2.dropout", "stage2.drop_path", "zeroshot.dropout")           # in [0, 1)
DIVISIBLE = (("model.vision_width", "model.vision_heads"), ("model.text_width", "model.text_heads"))


def _get(cfg: Config, key: str):
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _number(key: str, value, kind: str):
    """`value` as an int (kind "int") or a finite float; a CirtutorError naming `key` otherwise."""
    ok = isinstance(value, int) if kind == "int" else isinstance(value, (int, float)) and math.isfinite(value)
    if isinstance(value, bool) or not ok:
        raise CirtutorError(f"{key}={value!r}: expected {'an integer' if kind == 'int' else 'a finite number'}")
    return value


def _check_ranges(cfg: Config) -> None:
    for keys, kind, test, wanted in ((AT_LEAST_ONE, "int", lambda v: v >= 1, "at least 1"),
                                     (AT_LEAST_ZERO, "int", lambda v: v >= 0, "0 or more"),
                                     (POSITIVE, "float", lambda v: v > 0, "above 0"),
                                     (NON_NEGATIVE, "float", lambda v: v >= 0, "0 or more"),
                                     (FRACTIONS, "float", lambda v: 0 <= v <= 1, "between 0 and 1"),
                                     (RATES, "float", lambda v: 0 <= v < 1, "a rate in [0, 1)")):
        for key in keys:
            value = _get(cfg, key)
            if value is not None and not test(_number(key, value, kind)):
                raise CirtutorError(f"{key}={value!r}: expected {wanted}")


def _check_lists(cfg: Config) -> None:
    ks = cfg.stage2.eval_ks
    if not ks or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks):
        raise CirtutorError(f"stage2.eval_ks={','.join(map(str, ks)) or '(empty)'}: expected positive integers, "
                            "e.g. --set stage2.eval_ks=10,20,50")
    unknown = [a for a in cfg.ablations if a not in ABLATIONS]
    if unknown:
        raise CirtutorError(f"unknown ablation {unknown[0]!r} in ablations; choose from {', '.join(ABLATIONS)}")


SUBSAMPLE_KEYS = ("train", "val", "gallery")


def parse_spec(spec: str) -> dict[str, float]:
    """"train=0.1,val=500" -> {"train": 0.1, "val": 500.0}: the --subsample spec (`cirtutor.data.subsample`)."""
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in SUBSAMPLE_KEYS:
            raise CirtutorError(f"--subsample part {part!r}: expected KEY=N with KEY in {', '.join(SUBSAMPLE_KEYS)}, "
                                "e.g. train=0.1,val=500,gallery=2000")
        try:
            out[key] = float(value)
        except ValueError:
            raise CirtutorError(f"--subsample {key}={value!r}: expected a fraction (< 1) or a count") from None
        if out[key] <= 0:
            raise CirtutorError(f"--subsample {key}={value}: must be positive")
    return out


def validate(cfg: Config) -> Config:
    """Check every setting of `cfg` before any work: a CirtutorError naming the first bad field
    and what it accepts. Returns `cfg`."""
    for key, allowed in CHOICES.items():
        if _get(cfg, key) not in allowed:
            raise CirtutorError(f"{key}={_get(cfg, key)!r}: expected one of {', '.join(allowed)}")
    _check_ranges(cfg)
    for width, heads in DIVISIBLE:
        if _get(cfg, width) % _get(cfg, heads):
            raise CirtutorError(f"{heads}={_get(cfg, heads)} does not divide {width}={_get(cfg, width)}: "
                                "each attention head takes an equal share of the width")
    _check_lists(cfg)
    if cfg.data.synthetic_size < 2 or cfg.data.synthetic_resolution < 8:
        raise CirtutorError(f"data.synthetic_size={cfg.data.synthetic_size}, data.synthetic_resolution="
                            f"{cfg.data.synthetic_resolution}: expected at least 2 references and 8 pixels")
    if cfg.subsample:
        parse_spec(cfg.subsample)
    device = str(cfg.device)
    if not (device in ("auto", "cpu", "cuda", "mps") or device.startswith("cuda:") and device[5:].isdigit()):
        raise CirtutorError(f"device={device!r}: expected auto, cpu, cuda, cuda:N or mps")
    return cfg


def config_from_dict(d: dict, cls=Config):
    """A config (or section `cls`) from its `dataclasses.asdict` form, e.g. a run's config.json:
    fields the dict lacks keep their defaults, keys the config no longer has are left out."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        value, default = d[f.name], _default(f)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = config_from_dict(value, type(default))
        elif isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


NOT_RESULTS = ("device", "out_dir")     # where a run computes, never what


def run_settings(cfg: Config) -> dict:
    """What a run folder's results depend on, flat ("stage1.lr": 2e-05, "name": "tiny"): every
    section's `result_fields` and the top-level settings but the device and the output folder."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in NOT_RESULTS:
            continue
        if dataclasses.is_dataclass(value):
            out.update({f"{f.name}.{k}": v for k, v in result_fields(value).items()})
        else:
            out[f.name] = value
    return json.loads(json.dumps(out, default=str))     # tuples as lists, as config.json holds them


def settings_diff(saved: dict, cfg: Config) -> list[str]:
    """The result-changing settings in which `cfg` differs from a saved config.json's dict, as
    "field: saved → now" lines."""
    try:
        before = run_settings(config_from_dict(saved))
    except (TypeError, ValueError) as e:
        return [f"(unreadable config: {e})"]
    now = run_settings(cfg)
    return [f"{k}: {before.get(k)!r} → {now.get(k)!r}" for k in sorted(set(before) | set(now))
            if before.get(k) != now.get(k)]
