"""Exact top-K gallery search (cirtutor.evaluation.search) against the evaluation's full sort."""
import pytest
import torch
import torch.nn.functional as F

from cirtutor.evaluation import rank_gallery
from cirtutor.evaluation.search import top_k


def embeddings(n_q=7, n_g=1000, e=16):
    g = torch.Generator().manual_seed(0)
    return F.normalize(torch.randn(n_q, e, generator=g), dim=-1), F.normalize(torch.randn(n_g, e, generator=g), dim=-1)


def test_torch_top_k_across_chunks_is_the_full_sorts_head():
    q, g = embeddings()
    scores, idx = top_k(q, g, 20, backend="torch", chunk=128)                # 8 chunks
    names = [str(i) for i in range(len(g))]
    expected = rank_gallery(q, g, names, top_k=20)
    assert [[names[j] for j in row] for row in idx.tolist()] == expected.tolist()
    assert torch.allclose(scores, (q @ g.T).gather(1, idx))
    assert (scores[:, :-1] >= scores[:, 1:]).all()


def test_faiss_agrees_with_torch():
    pytest.importorskip("faiss")
    q, g = embeddings()
    assert torch.equal(top_k(q, g, 20, backend="faiss")[1], top_k(q, g, 20, backend="torch")[1])


def test_bad_inputs_say_what_was_expected():
    q, g = embeddings()
    with pytest.raises(ValueError, match="between 1 and the gallery size"):
        top_k(q, g, 1001)
    with pytest.raises(ValueError, match=r"\(Q, e\)"):
        top_k(q[:, :8], g, 5)
    with pytest.raises(ValueError, match="backend"):
        top_k(q, g, 5, backend="annoy")
