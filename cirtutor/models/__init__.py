"""Models: BLIP backbones (transformers), the stage-1 CandidateFilter, the stage-2
DualEncoderReranker, exact weight loading, and tiny mode's pretrained mini-BLIP."""
from cirtutor.models.filter import CandidateFilter
from cirtutor.models.reranker import DualEncoderReranker
from cirtutor.models.tokenizer import blip_tokenizer, tokenize

__all__ = ["CandidateFilter", "DualEncoderReranker", "blip_tokenizer", "tokenize"]
