"""BLIP's tokenizer (docs/data_formats.md, 'Tokenisation'): uncased BERT WordPiece + `[DEC]` + `[ENC]`, 30,524 ids.

The vocabulary ships with the package (`cirtutor/assets/bert-base-uncased-vocab.txt`, the
30,522-line uncased BERT vocabulary), so tokenisation never needs the hub. Both stages
tokenise the same way: pad to the longest text of the batch, never truncate, then write
`[ENC]` over position 0 (the `[CLS]` slot) — BLIP's signal for "multimodal encoder mode".
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Sequence

import torch
from transformers import BertTokenizer

VOCAB_FILE = "bert-base-uncased-vocab.txt"


@lru_cache(maxsize=1)
def blip_tokenizer() -> BertTokenizer:
    """The BLIP tokenizer: [PAD]=0, [CLS]=101, [SEP]=102, [DEC]=30522, [ENC]=30523."""
    vocab = resources.files("cirtutor") / "assets" / VOCAB_FILE
    tok = BertTokenizer(vocab=str(vocab), do_lower_case=True)  # NB: vocab=, not vocab_file= (transformers 5.x)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    assert len(tok) == 30524 and tok.convert_tokens_to_ids("[ENC]") == 30523, "unexpected BLIP vocabulary"
    return tok


def enc_token_id() -> int:
    return blip_tokenizer().convert_tokens_to_ids("[ENC]")


def cls_token_id() -> int:
    """[CLS]: position 0 of a text in unimodal mode (multimodal mode overwrites it with [ENC])."""
    return blip_tokenizer().cls_token_id


def tokenize(texts: Sequence[str], device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> (input_ids, text_mask), both (B, L_w) with L_w the longest text; ids[:, 0] = [ENC]."""
    batch = blip_tokenizer()(list(texts), padding="longest", truncation=False, return_tensors="pt")
    input_ids = batch["input_ids"].clone()
    input_ids[:, 0] = enc_token_id()
    return input_ids.to(device), batch["attention_mask"].to(device)


def tokenize_text_only(texts: Sequence[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Unimodal-mode tokens (keeps [CLS]); used by the mini-BLIP's image-text contrastive loss."""
    batch = blip_tokenizer()(list(texts), padding="longest", truncation=False, return_tensors="pt")
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)
