"""The GCIDE reader: articles -> (headword, definition) senses; the dictd files it reads."""

from __future__ import annotations

import gzip
from pathlib import Path

from training.data import gcide
from training.data.formats import read_text_pairs
from training.data.gcide import write_gcide

BELL = """Bell \\Bell\\, n. [AS. belle, fr. bellan to bellow. See {Bellow}.]
   1. A hollow metallic vessel, usually shaped somewhat like a
      cup with a flaring mouth, giving forth a ringing sound.
      [1913 Webster]

   Note: Bells have been made of various metals.
         [1913 Webster]

         The rapid currents drive
         Towards the retreating sea their furious tide.
                                                  --Milton.

   {Bell hanger}, a man who hangs or puts up bells.

   {Bell cage}, or {Bell carriage} (Arch.), a timber frame
      constructed to carry one or more large bells.
"""

WORDNET = """Stuff \\Stuff\\, n.
   the tangible substance that goes into the makeup of a
   physical object [syn: {material}]
   [WordNet 1.5]
"""

RETREAT = """Retreat \\Re*treat"\\, v. i. [imp. & p. p. {Retreated}; p. pr. &
   vb. n. {Retreating}.]
   To make a retreat; to retire from any position or place.
   --Shak.
   [1913 Webster]
"""


def test_senses_notes_quotations_and_phrases() -> None:
    senses = list(gcide.parse_article(BELL))
    assert senses == [
        gcide.Definition(
            "Bell",
            "A hollow metallic vessel, usually shaped somewhat like a cup with a "
            "flaring mouth, giving forth a ringing sound.",
        ),
        gcide.Definition("Bell hanger", "a man who hangs or puts up bells."),
        gcide.Definition("Bell cage", "a timber frame constructed to carry one or more large bells."),
    ]


def test_header_inflections_and_citations_are_removed() -> None:
    assert list(gcide.parse_article(RETREAT)) == [
        gcide.Definition("Retreat", "To make a retreat; to retire from any position or place.")
    ]


def test_wordnet_paragraphs_are_skipped() -> None:
    # WordNet glosses are the `wordnet` evaluation task: never in the training corpus
    assert list(gcide.parse_article(WORDNET)) == []


def _database(root: Path, articles: list[str], words: list[str]) -> None:
    data = "".join(articles).encode("utf-8")
    (root / "gcide.dict.dz").write_bytes(gzip.compress(data))
    b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def enc(n: int) -> str:
        out = ""
        while True:
            out = b64[n % 64] + out
            n //= 64
            if not n:
                return out

    lines, offset = ["00-database-info\tA\tB"], 0
    for word, article in zip(words, articles, strict=True):
        size = len(article.encode("utf-8"))
        lines.append(f"{word}\t{enc(offset)}\t{enc(size)}")
        lines.append(f"{word}s\t{enc(offset)}\t{enc(size)}")  # a second headword, same article
        offset += size
    (root / "gcide.index").write_text("\n".join(lines) + "\n")


def test_read_and_write_the_dictd_database(tmp_path: Path) -> None:
    _database(tmp_path, [BELL, WORDNET, RETREAT], ["Bell", "Stuff", "Retreat"])
    assert gcide.decode_b64_number("Bz") == 64 + 51
    senses = gcide.read_gcide(tmp_path)
    assert [d.word for d in senses] == ["Bell", "Bell hanger", "Bell cage", "Retreat"]  # each article once
    counts = write_gcide(tmp_path / "out", root=tmp_path, progress=False)
    assert sum(counts.values()) == 4
    pairs = [p for split in counts for p in read_text_pairs(tmp_path / "out" / f"{split}.jsonl")]
    assert {p.query for p in pairs} == {"Bell", "Bell hanger", "Bell cage", "Retreat"}
    by_word = {
        p.query.lower(): split
        for split in counts
        for p in read_text_pairs(tmp_path / "out" / f"{split}.jsonl")
    }
    assert len(by_word) == 4
