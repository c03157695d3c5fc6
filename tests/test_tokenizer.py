"""BLIP tokenisation (docs/data_formats.md, 'Tokenisation'): shipped vocabulary, [ENC] over position 0, longest padding, no truncation."""
from cirtutor.models.tokenizer import blip_tokenizer, tokenize, tokenize_text_only


def test_vocabulary_ids():
    tok = blip_tokenizer()
    assert len(tok) == 30524
    ids = tok.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "[DEC]", "[ENC]"])
    assert ids == [0, 100, 101, 102, 103, 1996, 30522, 30523]


def test_enc_over_cls_longest_padding_uncased():
    ids, mask = tokenize(["Make it RED", "add a small blue circle at the top left"])
    assert ids[:, 0].tolist() == [30523, 30523]
    assert ids.shape == mask.shape == (2, 11)
    assert mask[0].tolist() == [1] * 5 + [0] * 6 and ids[0, 4].item() == 102 and ids[0, 5:].eq(0).all()
    assert tokenize(["make it red"])[0].tolist() == ids[:1, :5].tolist()  # lower-cased


def test_no_truncation_and_text_only_mode_keeps_cls():
    ids, _ = tokenize(["red " * 600])
    assert ids.shape == (1, 602)
    assert tokenize_text_only(["red"])[0].tolist() == [[101, 2417, 102]]
