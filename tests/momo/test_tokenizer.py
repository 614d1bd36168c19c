from __future__ import annotations

import numpy as np

from momo.tokenizer import SPECIAL_TOKENS, MoMoTokenizer


def test_train_save_load_round_trip(tmp_path, sample_corpus) -> None:
    tok = MoMoTokenizer.train(sample_corpus, vocab_size=200, min_frequency=1)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    loaded = MoMoTokenizer.load(path)
    texts = ["a red circle", "A photo of a SNEAKER!", "zebra quokka"]
    a, b = tok.encode_batch(texts, 16), loaded.encode_batch(texts, 16)
    assert np.array_equal(a.input_ids, b.input_ids)
    assert loaded.decode(a.input_ids[0][1 : a.num_tokens[0] - 1]) == "a red circle"


def test_batch_encode_cls_sep_padding_truncation(test_tokenizer: MoMoTokenizer) -> None:
    batch = test_tokenizer.encode_batch(
        ["a red circle", "a small green triangle above a large yellow circle"], 8
    )
    ids, mask = batch.input_ids, batch.attention_mask
    assert ids.dtype == np.int64 and ids.shape == mask.shape == (2, 8)
    assert (ids[:, 0] == test_tokenizer.cls_id).all()
    first_len = batch.num_tokens[0]
    assert ids[0, first_len - 1] == test_tokenizer.sep_id
    assert (ids[0, first_len:] == test_tokenizer.pad_id).all() and mask[0].sum() == first_len
    # Truncation keeps the closing [SEP] and reports it.
    assert batch.truncated == [False, True]
    assert ids[1, -1] == test_tokenizer.sep_id and mask[1].all()
    # Unknown words map to [UNK], never crash.
    unk = test_tokenizer.encode_batch(["ωωω"], 8)
    assert test_tokenizer.unk_id in unk.input_ids[0]
    assert test_tokenizer.encode_batch([""], 8).num_tokens == [2]


def test_ids_are_numbered_canonically(sample_corpus) -> None:
    # HF's trainer numbers tied tokens differently from run to run; ours renumbers canonically
    # (specials first, then sorted), so one learned token set always gets the same ids.
    vocab = MoMoTokenizer.train(sample_corpus, 200, 1)._tok.get_vocab()
    ordered = [t for t, _ in sorted(vocab.items(), key=lambda item: item[1])]
    assert ordered[:5] == SPECIAL_TOKENS and ordered[5:] == sorted(ordered[5:])
