"""WordPiece tokenizer (HF `tokenizers`), trained on the project's own corpus.

Every encoded text is `[CLS] tokens… [SEP]`, so position 0 is the text CLS the encoder pools.
Outputs are numpy arrays so the ONNX serving path does not need torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from tokenizers.trainers import WordPieceTrainer

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]


@dataclass
class TextBatch:
    """input_ids and attention_mask, both (B, L) int64; L = longest item (or `pad_to`)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    num_tokens: list[int]  # real tokens per item, incl. [CLS]/[SEP] (for `usage`)
    truncated: list[bool]


class MoMoTokenizer:
    def __init__(self, tokenizer: Tokenizer):
        self._tok = tokenizer
        vocab = tokenizer.get_vocab()
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"tokenizer lacks special tokens {missing}")
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (vocab[t] for t in SPECIAL_TOKENS)

    # --- construction ----------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> MoMoTokenizer:
        tok = Tokenizer(WordPiece(unk_token=UNK))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=SPECIAL_TOKENS,
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        # HF's trainer numbers tied tokens differently from run to run; renumber canonically
        # (specials, then sorted) so a learned token set always gets the same ids. (Ties at the
        # vocabulary cut-off can still change the set itself: recipes pin a tokenizer file to
        # reproduce a model exactly.)
        learned = sorted(t for t in tok.get_vocab() if t not in SPECIAL_TOKENS)
        vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *learned])}
        tok.model = WordPiece(vocab=vocab, unk_token=UNK, continuing_subword_prefix="##")
        tok.post_processor = processors.TemplateProcessing(
            single=f"{CLS} $A {SEP}", special_tokens=[(CLS, vocab[CLS]), (SEP, vocab[SEP])]
        )
        return cls(tok)

    @classmethod
    def load(cls, path: str | Path) -> MoMoTokenizer:
        return cls(Tokenizer.from_file(str(path)))

    def save(self, path: str | Path) -> None:
        self._tok.save(str(path))

    # --- use ---------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size())

    def encode_batch(self, texts: Sequence[str], max_length: int, pad_to: int | None = None) -> TextBatch:
        """Tokenise, truncate to `max_length` (keeping the final [SEP]) and pad to the longest item."""
        encodings = self._tok.encode_batch(list(texts))
        rows: list[list[int]] = []
        truncated: list[bool] = []
        for enc in encodings:
            ids = list(enc.ids)
            truncated.append(len(ids) > max_length)
            if len(ids) > max_length:
                ids = [*ids[: max_length - 1], self.sep_id]
            rows.append(ids)
        length = max([len(r) for r in rows] + [pad_to or 0, 1])
        input_ids = np.full((len(rows), length), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(rows), length), dtype=np.int64)
        for i, ids in enumerate(rows):
            input_ids[i, : len(ids)] = ids
            attention_mask[i, : len(ids)] = 1
        return TextBatch(input_ids, attention_mask, [len(r) for r in rows], truncated)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(e.ids) for e in self._tok.encode_batch(list(texts))]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tok.decode(list(ids)))

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    @property
    def special_ids(self) -> set[int]:
        return {self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id}
