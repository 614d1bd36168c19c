"""The labelled-text sources, WordNet glosses (Debian ``wordnet-base``; noun lexicographer file, 26
classes) and fortunes (Debian ``fortunes``; the fortune file as the category), and the text corpus of
tokenizer training and MLM, the union of every source's texts.

Layout::

    wordnet/<split>.jsonl, wordnet/labels.json     gloss -> noun lexicographer file (26 classes)
    fortunes/<split>.jsonl, fortunes/labels.json   fortune text -> fortune file name
    text/<split>.txt                               one text per line, deduplicated

The split of a gloss or fortune is a stable hash of its key (80/10/10).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from training.data.formats import LabeledTextRecord
from training.data.source_writing import Limits, hash_order, write_labeled_splits

WORDNET_DIR = Path("/usr/share/wordnet")
FORTUNES_DIR = Path("/usr/share/games/fortunes")


# lexicographer file numbers of nouns (WordNet's lexnames file); 26 categories
NOUN_LEXNAMES: dict[int, str] = {
    3: "noun.Tops",
    4: "noun.act",
    5: "noun.animal",
    6: "noun.artifact",
    7: "noun.attribute",
    8: "noun.body",
    9: "noun.cognition",
    10: "noun.communication",
    11: "noun.event",
    12: "noun.feeling",
    13: "noun.food",
    14: "noun.group",
    15: "noun.location",
    16: "noun.motive",
    17: "noun.object",
    18: "noun.person",
    19: "noun.phenomenon",
    20: "noun.plant",
    21: "noun.possession",
    22: "noun.process",
    23: "noun.quantity",
    24: "noun.relation",
    25: "noun.shape",
    26: "noun.state",
    27: "noun.substance",
    28: "noun.time",
}


@dataclass(frozen=True)
class WordNetSynset:
    offset: str
    lexname: str
    words: tuple[str, ...]
    gloss: str


def read_wordnet_nouns(path: Path = WORDNET_DIR / "data.noun") -> list[WordNetSynset]:
    """Noun synsets of a WordNet ``data.noun`` file (the licence header lines start with spaces)."""
    synsets: list[WordNetSynset] = []
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.startswith(" ") or not line.strip():
                continue
            head, sep, gloss = line.partition(" | ")
            fields = head.split()
            if not sep or len(fields) < 5:
                raise ValueError(f"{path}:{lineno}: not a WordNet data line")
            lex = int(fields[1])
            if lex not in NOUN_LEXNAMES:
                raise ValueError(f"{path}:{lineno}: lexicographer file {lex} is not a noun category")
            n_words = int(fields[3], 16)
            words = tuple(fields[4 + 2 * k].replace("_", " ") for k in range(n_words))
            synsets.append(WordNetSynset(fields[0], NOUN_LEXNAMES[lex], words, " ".join(gloss.split())))
    return synsets


def write_wordnet(
    out_dir: Path,
    *,
    path: Path = WORDNET_DIR / "data.noun",
    limits: Limits | None = None,
    progress: bool = True,
) -> dict[str, int]:
    synsets = read_wordnet_nouns(path)
    rows = (
        (s.offset, {"text": s.gloss, "label": s.lexname, "words": list(s.words), "id": s.offset})
        for s in tqdm(synsets, desc="wordnet", disable=not progress, leave=False)
    )
    return write_labeled_splits(out_dir, rows, sorted(NOUN_LEXNAMES.values()), limits)


# --- fortunes --------------------------------------------------------------------------------------

FORTUNE_MAX_CHARS = 400
# categories left with fewer entries than this cannot appear in every split, so they are dropped
FORTUNE_MIN_CATEGORY_SIZE = 20
_FORTUNE_SEPARATOR = re.compile(r"^%\s*$", re.MULTILINE)


def read_fortunes(
    root: Path = FORTUNES_DIR,
    *,
    max_chars: int = FORTUNE_MAX_CHARS,
    min_category_size: int = FORTUNE_MIN_CATEGORY_SIZE,
) -> list[LabeledTextRecord]:
    """Fortune entries labelled with their file name, whitespace collapsed to single spaces.

    Skips sub-folders (the ``off/`` offensive set), ``.dat`` indexes and ``.u8`` copies; drops entries
    longer than ``max_chars``, texts filed under more than one category (their label is ambiguous),
    and categories with fewer than ``min_category_size`` remaining entries.
    """
    seen: dict[str, set[str]] = {}
    order: list[tuple[str, str]] = []
    for path in sorted(root.iterdir()):
        if not path.is_file() or path.suffix in {".dat", ".u8"} or path.name.startswith("."):
            continue
        raw = path.read_bytes()
        try:
            content = raw.decode("utf-8")
        except UnicodeDecodeError:  # a few historic fortune files are Latin-1
            content = raw.decode("latin-1")
        for entry in _FORTUNE_SEPARATOR.split(content):
            text = " ".join(entry.split())
            if not text or len(text) > max_chars:
                continue
            if text not in seen:
                seen[text] = set()
                order.append((text, path.name))
            seen[text].add(path.name)
    records = [LabeledTextRecord(text, cat) for text, cat in order if len(seen[text]) == 1]
    sizes: dict[str, int] = {}
    for r in records:
        sizes[r.label] = sizes.get(r.label, 0) + 1
    return [r for r in records if sizes[r.label] >= min_category_size]


def write_fortunes(
    out_dir: Path, *, root: Path = FORTUNES_DIR, limits: Limits | None = None, progress: bool = True
) -> dict[str, int]:
    records = read_fortunes(root)
    labels = sorted({r.label for r in records})
    rows = ((f"{r.label}\n{r.text}", {"text": r.text, "label": r.label}) for r in records)
    return write_labeled_splits(out_dir, rows, labels, limits)


def write_text_corpus(
    out_dir: Path,
    parts: Mapping[str, Callable[[str], Iterable[str]]],
    splits: Iterable[str] = ("train", "val"),
) -> dict[str, int]:
    """``<split>.txt``: the union of ``parts[name](split)`` texts, one per line, deduplicated and in a
    fixed pseudo-random order (so streaming readers see sources interleaved)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for split in splits:
        lines: dict[str, None] = {}
        for produce in parts.values():
            for text in produce(split):
                line = " ".join(text.split())
                if line:
                    lines.setdefault(line, None)
        ordered = sorted(lines, key=hash_order)
        (out_dir / f"{split}.txt").write_text("".join(f"{t}\n" for t in ordered), encoding="utf-8")
        counts[split] = len(ordered)
    return counts
