"""The notebooks' one namespace: every cirtutor helper a notebook uses, imported from the module that
holds it. A notebook reads `from cirtutor.nb import ...`; this file says where each helper lives and
`USED_IN` which notebooks use it (a test keeps it exact). Helpers are grouped by the first notebook that
uses them. Two names differ from their home's, where two modules use the same one: `stage2_batch_order`
(`engine.stage2.batch_order`, notebook 04) and `study_config` (`study.variant_config`, notebooks 08-09)."""
# ruff: noqa: F401

# ---- notebook 00: Overview: composed image retrieval in two stages
from cirtutor.config import get_preset
from cirtutor.data import collate
from cirtutor.data.preprocess import load_image, target_pad
from cirtutor.data.registry import dataset_root, open_dataset
from cirtutor.data.stats import data_stats, format_report
from cirtutor.viz import plot_two_stage_overview, show_preprocessing, show_queries

# ---- notebook 01: BLIP's encoders: image tokens, two text modes, cross-attention
from cirtutor.data.preprocess import ImageTransform
from cirtutor.data.synthetic import describe_scene, make_scene, Obj, render_scene
from cirtutor.engine.pretrain import (batch_tokens, eval_pairs, evaluate, format_metrics, image_caption_pairs,
                                      pretrain_losses, pretraining_data)
from cirtutor.features import init_weights
from cirtutor.inspect_layers import attention_per_cell, blip_cross_attention, load_blip_retrieval, patch_maps
from cirtutor.models.backbones import text_states
from cirtutor.models.mini_blip import image_feats_of, itc_embeddings, itm_logits, META_FILE, SHIPPED
from cirtutor.models.tokenizer import blip_tokenizer, tokenize, tokenize_text_only
from cirtutor.viz import plot_pretraining_curve, plot_similarity_matrix, plot_token_attention, show_patch_grid

# ---- notebook 02: The candidate filter: Eq. 1, the temperature, hard negatives, coverage
from cirtutor.engine.stage1 import batch_order, evaluate_filter, filter_topk, stage1_inputs, train_stage1
from cirtutor.evaluation import coverage_at_k
from cirtutor.findings import paper_vs_run
from cirtutor.models.loading import load_filter
from cirtutor.trained import batch_breakdown, filter_data, trained_filter, trained_filter_history
from cirtutor.viz import plot_coverage_vs_k, plot_softmax_vs_temperature, plot_training_loss

# ---- notebook 03: Inside the re-ranker: one dual-encoder layer, by hand
from cirtutor.inspect_layers import (attention_by_hand, dual_cross_attention, dual_layer_states, stream_similarity,
                                     streams_identical)
from cirtutor.models.loading import load_reranker
from cirtutor.models.reranker import DualEncoderLayer
from cirtutor.viz import plot_per_layer

# ---- notebook 04: Stage 2: training the dual-encoder re-ranker (Eq. 2)
from cirtutor.analysis import qualitative_items
from cirtutor.engine.stage2 import (BxBObjective, evaluate_reranker, hard_pools, batch_order as stage2_batch_order,
                                    stage2_inputs, train_stage2, TrainingZt)
from cirtutor.evaluation.submission import validate_cirr_submission
from cirtutor.features import feature_store
from cirtutor.models.loading import reranker_from_filter
from cirtutor.pipeline import variant_config
from cirtutor.stages import server_files
from cirtutor.trained import trained_reranker
from cirtutor.viz import plot_qualitative, plot_recall_vs_k

# ---- notebook 05: How many candidates to re-rank? The K ablation
from cirtutor.analysis import inference_times
from cirtutor.evaluation.rank_analysis import positions_of, target_positions
from cirtutor.report import k_table
from cirtutor.viz import plot_time_vs_k

# ---- notebook 06: Looking at the results: qualitative examples, edit types, an explorer
from cirtutor.analysis import query_item, target_gain
from cirtutor.evaluation.rank_analysis import rank_shift_by_initial, rank_table
from cirtutor.explore import at_k, edit_types, explorer, gain_counts, recall_by_group
from cirtutor.viz import plot_rank_shift

# ---- notebook 07: Which parts matter? The re-ranker's ablations, and which of the paper's findings hold here
from cirtutor import findings
from cirtutor.config import ABLATIONS
from cirtutor.evaluation.reliance import shifted_references, words_hidden
from cirtutor.models import DualEncoderReranker
from cirtutor.pipeline import usable_ks
from cirtutor.study import check_findings_seed0, shipped_study
from cirtutor.viz import plot_epoch_losses, plot_findings

# ---- notebook 08: CaLa: two training-only associations for the filter
from cirtutor.engine.stage1 import CalaObjective, FilterObjective
from cirtutor.explore import logit_breakdown
from cirtutor.study import check_seed0, STUDIES, variant_config as study_config, table
from cirtutor.trained import trained_cala
from cirtutor.viz import plot_hinge, plot_logit_matrices, plot_study, to_display

# ---- notebook 09: Zero-shot composed retrieval: from mapping to composing
from cirtutor.engine.zeroshot import (budget_queries, build_zeroshot, caption_embeddings, evaluate_zeroshot,
                                      image_prompt_recall, mine_hard_negatives, nearest_words, query_alignment,
                                      synthetic_captions, training_free_baselines)
from cirtutor.features import is_tiny
from cirtutor.models.zeroshot import insert_pseudo_words, placeholder_id, prompts
from cirtutor.pipeline import short
from cirtutor.study import markdown, zeroshot_rows
from cirtutor.trained import trained_zeroshot, trained_zeroshot_history
from cirtutor.viz import plot_zeroshot_study

# ---- the student edition (student/, `make student`): the exercises' self-checks
from cirtutor.check import check

# Which notebooks use each helper.
USED_IN = {
    "collate": ('00',),
    "data_stats": ('00',),
    "dataset_root": ('00', '09'),
    "format_report": ('00',),
    "get_preset": ('00', '01', '02', '03', '04', '05', '06', '07'),
    "load_image": ('00',),
    "open_dataset": ('00', '03', '04'),
    "plot_two_stage_overview": ('00',),
    "show_preprocessing": ('00',),
    "show_queries": ('00', '02', '03', '04', '09'),
    "target_pad": ('00',),
    "attention_per_cell": ('01',),
    "batch_tokens": ('01',),
    "blip_cross_attention": ('01',),
    "blip_tokenizer": ('01', '02', '03', '08', '09'),
    "describe_scene": ('01',),
    "eval_pairs": ('01',),
    "evaluate": ('01',),
    "format_metrics": ('01',),
    "image_caption_pairs": ('01',),
    "image_feats_of": ('01',),
    "ImageTransform": ('01',),
    "init_weights": ('01', '03'),
    "itc_embeddings": ('01',),
    "itm_logits": ('01',),
    "load_blip_retrieval": ('01',),
    "make_scene": ('01',),
    "META_FILE": ('01',),
    "Obj": ('01',),
    "patch_maps": ('01', '03', '08'),
    "plot_pretraining_curve": ('01',),
    "plot_similarity_matrix": ('01', '02', '03', '04', '09'),
    "plot_token_attention": ('01', '03', '08'),
    "pretrain_losses": ('01',),
    "pretraining_data": ('01',),
    "render_scene": ('01',),
    "SHIPPED": ('01',),
    "show_patch_grid": ('01',),
    "text_states": ('01', '02'),
    "tokenize": ('01', '03'),
    "tokenize_text_only": ('01', '09'),
    "batch_breakdown": ('02',),
    "batch_order": ('02', '08'),
    "coverage_at_k": ('02',),
    "evaluate_filter": ('02', '08'),
    "filter_data": ('02', '04', '05', '06', '07', '08', '09'),
    "filter_topk": ('02', '04', '05', '06', '07'),
    "load_filter": ('02', '03'),
    "paper_vs_run": ('02', '05', '06', '07'),
    "plot_coverage_vs_k": ('02', '05'),
    "plot_softmax_vs_temperature": ('02',),
    "plot_training_loss": ('02', '04', '09'),
    "stage1_inputs": ('02', '08'),
    "train_stage1": ('02',),
    "trained_filter": ('02', '04', '05', '06', '07', '08'),
    "trained_filter_history": ('02',),
    "attention_by_hand": ('03',),
    "dual_cross_attention": ('03',),
    "dual_layer_states": ('03',),
    "DualEncoderLayer": ('03',),
    "load_reranker": ('03',),
    "plot_per_layer": ('03',),
    "stream_similarity": ('03',),
    "streams_identical": ('03',),
    "BxBObjective": ('04',),
    "evaluate_reranker": ('04', '05', '06', '07'),
    "feature_store": ('04',),
    "hard_pools": ('04',),
    "plot_qualitative": ('04', '06'),
    "plot_recall_vs_k": ('04', '05'),
    "qualitative_items": ('04', '06'),
    "reranker_from_filter": ('04',),
    "server_files": ('04',),
    "stage2_batch_order": ('04',),
    "stage2_inputs": ('04',),
    "train_stage2": ('04',),
    "trained_reranker": ('04', '05', '06', '07'),
    "TrainingZt": ('04',),
    "validate_cirr_submission": ('04',),
    "variant_config": ('04', '07'),
    "inference_times": ('05',),
    "k_table": ('05',),
    "plot_time_vs_k": ('05',),
    "positions_of": ('05',),
    "target_positions": ('05',),
    "at_k": ('06',),
    "edit_types": ('06', '07'),
    "explorer": ('06',),
    "gain_counts": ('06',),
    "plot_rank_shift": ('06',),
    "query_item": ('06',),
    "rank_shift_by_initial": ('06',),
    "rank_table": ('06',),
    "recall_by_group": ('06', '07'),
    "target_gain": ('06',),
    "ABLATIONS": ('07',),
    "check_findings_seed0": ('07',),
    "DualEncoderReranker": ('07',),
    "findings": ('07',),
    "plot_epoch_losses": ('07',),
    "plot_findings": ('07',),
    "shifted_references": ('07',),
    "shipped_study": ('07', '08', '09'),
    "usable_ks": ('07',),
    "words_hidden": ('07',),
    "CalaObjective": ('08',),
    "check_seed0": ('08', '09'),
    "FilterObjective": ('08',),
    "logit_breakdown": ('08',),
    "plot_hinge": ('08',),
    "plot_logit_matrices": ('08',),
    "plot_study": ('08',),
    "STUDIES": ('08', '09'),
    "study_config": ('08', '09'),
    "table": ('08',),
    "to_display": ('08',),
    "trained_cala": ('08',),
    "budget_queries": ('09',),
    "build_zeroshot": ('09',),
    "caption_embeddings": ('09',),
    "evaluate_zeroshot": ('09',),
    "image_prompt_recall": ('09',),
    "insert_pseudo_words": ('09',),
    "is_tiny": ('09',),
    "markdown": ('09',),
    "mine_hard_negatives": ('09',),
    "nearest_words": ('09',),
    "placeholder_id": ('09',),
    "plot_zeroshot_study": ('09',),
    "prompts": ('09',),
    "query_alignment": ('09',),
    "short": ('09',),
    "synthetic_captions": ('09',),
    "trained_zeroshot": ('09',),
    "trained_zeroshot_history": ('09',),
    "training_free_baselines": ('09',),
    "zeroshot_rows": ('09',),
}

STUDENT_ONLY = ("check",)            # used by the student edition's exercise cells only

__all__ = list(USED_IN) + list(STUDENT_ONLY)
