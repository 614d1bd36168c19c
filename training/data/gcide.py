"""GCIDE, the GNU Collaborative International Dictionary of English (Debian ``dict-gcide``): headwords
and their definitions, the real English text of the MLM corpus and the headword ↔ definition pairs of
the text-contrastive objective (TTC).

The package holds one dictd database: ``gcide.index`` (``headword \\t offset \\t length``, numbers in
dictd's base64) and ``gcide.dict.dz`` (dictzip, readable as gzip). Many headwords point at the same
article; each article is read once. An article is blank-line separated paragraphs::

    Bell \\Bell\\, n. [AS. belle, fr. bellan to bellow.]      <- header: headword, POS, [etymology]
       1. A hollow metallic vessel, ... [1913 Webster]        <- a numbered sense
       Note: Bells have been made ...                         <- skipped (notes, synonyms, quotations)
       {Bell hanger}, a man who hangs or puts up bells.       <- a run-in phrase with its own sense

Paragraphs credited to WordNet (``[WordNet 1.5]``) are skipped: WordNet glosses are an evaluation task
(`wordnet`), and its held-out glosses must never be trained on.

:func:`write_gcide` writes ``gcide/<split>.jsonl`` of ``{"query": headword, "text": definition}``.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from training.data.source_writing import Limits, write_labeled_splits

GCIDE_DIR = Path("/usr/share/dictd")
DEFINITION_MIN_WORDS = 3
DEFINITION_MAX_CHARS = 300

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(_B64)}
_SOURCE_TAG = re.compile(r"\[(?:\d{4} Webster|Webster \d{4}[^\]]*|PJC|[A-Z][A-Za-z]* ?\d[^\]]*)\]")
_CITATION = re.compile(r"--\s?[A-Z][\w.' ]{0,40}?\.(?=\s|$)")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_HEADER = re.compile(r"^[^\\\n]+\\[^\\]*\\,?\s*(?:(?:[a-z]{1,6}\.\s?)+(?:&\s?(?:[a-z]{1,6}\.\s?)+)?)?,?\s*")
_SENSE_NUMBER = re.compile(r"^(?:\d+\.|\([a-z]\))\s+")
_PHRASE = re.compile(r"^\{([^{}]+)\}(?:,?\s*(?:or|and)?\s*\{[^{}]+\})*\s*(?:\([^()]*\))?,\s+(.+)$", re.DOTALL)
# pronunciations and run-on derived words: "(m *r s"t k), a." / "-- Dis`en*ga"ged*ness, n."
_PRONUNCIATION = re.compile(r"^\([^()]*[*\"?`][^()]*\),?\s*(?:[a-z]{1,6}\.\s?)*")
_RUN_ON = re.compile(r"--\s*\S*[*`\"]\S*,?\s*(?:[a-z]{1,6}\.\s?)*")
_SKIPPED_PARAGRAPHS = ("Note:", "Syn.", "Usage:", "--", "[")


@dataclass(frozen=True)
class Definition:
    """One sense: ``word`` (a headword or run-in phrase, as printed) and its definition ``text``."""

    word: str
    text: str


def decode_b64_number(text: str) -> int:
    """A dictd index number (big-endian base64 digits, no padding)."""
    value = 0
    for char in text:
        value = value * 64 + _B64_VALUE[char]
    return value


def _clean(text: str) -> str:
    text = _SOURCE_TAG.sub(" ", text)
    text = _RUN_ON.sub(" ", text)
    text = _CITATION.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = text.replace("{", "").replace("}", "").replace("\\", "")
    return _SENSE_NUMBER.sub("", " ".join(text.split()).strip(" ;,"))


def _keep(text: str) -> bool:
    return len(text.split()) >= DEFINITION_MIN_WORDS and len(text) <= DEFINITION_MAX_CHARS


def parse_article(article: str) -> Iterator[Definition]:
    """The senses of one article: the header's (or numbered) senses and the run-in phrases."""
    paragraphs = [p for p in re.split(r"\n\s*\n", article.strip("\n")) if p.strip()]
    if not paragraphs:
        return
    header = paragraphs[0]
    headword = header.split("\\", 1)[0].strip()
    if not headword or "\\" not in header:
        return
    for index, paragraph in enumerate(paragraphs):
        if "[WordNet" in paragraph:
            continue  # a WordNet gloss: the `wordnet` task's text
        indent = len(paragraph) - len(paragraph.lstrip(" "))
        body = paragraph.strip()
        if index == 0:
            # the header runs to its last closing bracket (inflections, etymology); the sense follows
            body = _HEADER.sub("", body, count=1)
            body = _BRACKETS.sub(" ", body).strip()
            body = _PRONUNCIATION.sub("", body).strip()
        elif indent >= 6 or body.startswith(_SKIPPED_PARAGRAPHS):
            continue  # quotations are indented deeper than senses; notes and synonym lists are no sense
        word = headword
        phrase = _PHRASE.match(body)
        if phrase is not None:
            word, body = " ".join(phrase.group(1).split()), phrase.group(2)
        body = _SENSE_NUMBER.sub("", body)
        text = _clean(body)
        if _keep(text):
            yield Definition(word, text)


def read_gcide(root: Path = GCIDE_DIR) -> list[Definition]:
    """Every sense of the dictionary, in index order, each (word, text) once."""
    with gzip.open(root / "gcide.dict.dz", "rb") as dictionary:
        raw = dictionary.read()
    seen_articles: set[tuple[int, int]] = set()
    seen: set[tuple[str, str]] = set()
    definitions: list[Definition] = []
    with (root / "gcide.index").open("r", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3 or parts[0].startswith("00-"):
                continue  # the database's own info entries
            span = (decode_b64_number(parts[1]), decode_b64_number(parts[2]))
            if span in seen_articles:
                continue
            seen_articles.add(span)
            # a few historic bytes are not UTF-8 (Windows quotes): replaced, never fatal
            article = raw[span[0] : span[0] + span[1]].decode("utf-8", errors="replace")
            for definition in parse_article(article):
                key = (definition.word.lower(), definition.text)
                if key not in seen:
                    seen.add(key)
                    definitions.append(definition)
    return definitions


def write_gcide(
    out_dir: Path, *, root: Path = GCIDE_DIR, limits: Limits | None = None, progress: bool = True
) -> dict[str, int]:
    """``<split>.jsonl`` of ``{"query": headword, "text": definition}``; the split is a hash of the
    lower-cased headword, so every sense of a word is in one split."""
    definitions = read_gcide(root)
    rows = (
        (f"gcide:{d.word.lower()}\n{d.text}", {"query": d.word, "text": d.text})
        for d in tqdm(definitions, desc="gcide", disable=not progress, leave=False)
    )
    return write_labeled_splits(out_dir, rows, [], limits, split_key=lambda key: key.split("\n", 1)[0])
