"""Self-checks for the notebooks' exercises: `check("02.3", answer)` says whether a student's answer
is right and, when it is not, gives a hint without the answer (docs/course/outline.md).

The expected value is never stored: each check computes it from the package when called (the
shipped models, the synthetic world), so a check follows the code and cannot go stale. Only
exercises whose answer is a number, a set or a tuple have a check; the others have a model answer
in the solutions notebooks (course/solutions/).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from cirtutor.config import get_preset
from cirtutor.data.registry import open_dataset
from cirtutor.engine.stage1 import filter_topk, rank_with_filter
from cirtutor.errors import CirtutorError
from cirtutor.evaluation import coverage_at_k
from cirtutor.models import DualEncoderReranker
from cirtutor.trained import filter_data, trained_filter


@dataclass(frozen=True)
class Exercise:
    """One checkable exercise: how to compute its answer, how close an answer must be, a hint."""
    question: str
    answer: Callable[[], Any]           # computes the expected value when a check runs
    hint: str
    tolerance: float = 0.0              # for numbers: |answer - expected| <= tolerance


def subset_holds_target(preset: str = "tiny") -> int:
    """Exercise 00.2: how many validation queries have their target among their own subset members."""
    val = open_dataset(get_preset(preset).data, "val", load_images=False)
    return sum(q["target"] in q["subset"] for q in val.queries)


def smallest_covering_k(shares=(90.0, 95.0), preset: str = "tiny") -> tuple[int, ...]:
    """Exercise 02.3: the smallest K whose top-K lists of the trained filter hold the target of at least
    each share (%) of the validation queries."""
    cfg = get_preset(preset)
    data = filter_data(cfg, verbose=False)
    filt, _ = trained_filter(cfg, data=data, verbose=False)
    labels = np.concatenate([t.labels for t in filter_topk(filt, data.val, data.stores["val"], k=200)])
    curve = {k: coverage_at_k(labels, k) for k in range(1, labels.shape[1] + 1)}
    return tuple(min((k for k, c in curve.items() if c >= share), default=-1) for share in shares)


def modules_without_encoder_t(preset: str = "tiny") -> set[str]:
    """Exercise 03.3: the modules of layer 0 that the w/o Encoder-t variant (streams="z_t") does not have."""
    cfg = get_preset(preset).model
    names = lambda model: {n for n, _ in model.text_encoder.encoder.layer[0].named_modules() if n}  # noqa: E731
    both = names(DualEncoderReranker(cfg))
    return both - names(DualEncoderReranker(dataclasses.replace(cfg, streams="z_t")))


def r10_gain_without_reference(preset: str = "tiny_fashioniq") -> tuple[float, ...]:
    """Exercise 05.3: how many points the trained filter's R@10 gains in each Fashion-IQ category (the paper's order)
    when each query's reference is removed from its list, as CIRR does: both rankings made afresh."""
    cfg = get_preset(preset)
    data = filter_data(cfg, verbose=False)
    filt, _ = trained_filter(cfg, data=data, verbose=False)
    gains = []
    for g in data.val.retrieval_groups():
        targets = np.array([data.val.queries[i]["target"] for i in g.indices])[:, None]
        r10 = [100 * (rank_with_filter(filt, data.val, data.stores["val"], g.gallery, indices=g.indices, top_k=10,
                                       remove_reference=drop) == targets).any(axis=1).mean() for drop in (False, True)]
        gains.append(float(r10[1] - r10[0]))
    return tuple(gains)


EXERCISES = {
    "00.2": Exercise("queries whose target is among their own subset (an int)", subset_holds_target,
                     "count over `val.queries`: each query has 'target' and 'subset' (a list of names)"),
    "02.3": Exercise("the smallest K covering 90 % and 95 % of the queries (a tuple of two ints)", smallest_covering_k,
                     "use coverage['trained'] (K -> %) from section 11 and take the first K at or above each share"),
    "03.3": Exercise("the names of layer 0's modules that disappear without Encoder-t (a set of str)",
                     modules_without_encoder_t,
                     "compare {n for n, _ in layers[0].named_modules()} of the two models"),
    "05.3": Exercise("the filter's R@10 gain per category without the reference, in points (a tuple: dress, shirt, "
                     "toptee)", r10_gain_without_reference,
                     "a reference ranked above the target frees one place: the target at position p moves to p - 1",
                     tolerance=0.05),
}


def _close(answer, expected, tolerance: float) -> bool:
    if isinstance(expected, (set, frozenset)):
        return set(answer) == expected if isinstance(answer, (set, frozenset, list, tuple)) else False
    if isinstance(expected, tuple):
        return (isinstance(answer, (tuple, list)) and len(answer) == len(expected)
                and all(_close(a, e, tolerance) for a, e in zip(answer, expected)))
    try:
        return math.isclose(float(answer), float(expected), rel_tol=0.0, abs_tol=tolerance)
    except (TypeError, ValueError):
        return answer == expected


def check(exercise: str, answer) -> bool:
    """Whether `answer` is right for `exercise` ("NN.k": notebook NN, exercise k). Prints "correct", or
    a hint that does not give the answer away."""
    if exercise not in EXERCISES:
        raise CirtutorError(f"no self-check for exercise {exercise!r}; checks exist for {', '.join(EXERCISES)} "
                            "(the others have model answers in course/solutions/)")
    ex = EXERCISES[exercise]
    with contextlib.redirect_stdout(io.StringIO()):          # loading messages are not the check's
        expected = ex.answer()
    ok = _close(answer, expected, ex.tolerance)
    print(f"exercise {exercise}: " + ("correct" if ok else f"not yet ({ex.question}). Hint: {ex.hint}"))
    return ok
