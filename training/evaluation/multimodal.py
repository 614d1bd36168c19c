"""Multimodal tasks: zero-shot image↔text retrieval (shapes, emoji, clip art), VQA through the
artifact's "vqa" head, and ITM accuracy on held-out pairs through its "itm" head.

ITM is scored on test images, each with its own caption and one caption (drawn at random, fixed seed)
that is *false* of it (`training.losses.matching.false_caption_mask`: another class for Fashion-MNIST
and clip art, a claim the scene contradicts for shapes); chance is 0.5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.evaluation import metrics as M
from training.evaluation.common import (
    EvalSettings,
    Row,
    TaskSkipped,
    batches,
    read_jsonl,
    require,
    source_files,
    subsample,
)
from training.evaluation.extractor import Extractor

ITM_SOURCES = ("shapes", "fashion_mnist", "clipart")


def _task_retrieval(ex: Extractor, s: EvalSettings, source: str, task: str) -> list[Row]:
    jsonl = require(source_files(s.data_dir)[source][s.split]["pairs"])
    rows = read_jsonl(jsonl)
    chosen = subsample(len(rows), s.max_retrieval, s.seed)
    image_paths = [jsonl.parent / rows[i]["image"] for i in chosen]
    captions = [str(rows[i]["text"]) for i in chosen]
    if len(chosen) < 2:
        raise TaskSkipped(f"{jsonl}: fewer than 2 test pairs")
    relevance = M.relevance_from_keys(captions, captions)  # (N, N): identical captions count as hits
    images, _ = ex.images(image_paths, f"{source} images")
    texts = ex.texts(captions, f"{source} captions")
    recalls = {
        n: M.bidirectional_recall(images[n]["embedding"], texts[n]["embedding"], relevance)
        for n in ex.runtimes
    }
    chance = M.chance_bidirectional_recall(relevance)
    out = []
    for metric in [*(f"{d}_R@{k}" for d in ("i2t", "t2i") for k in M.DEFAULT_KS), "mean"]:
        out.append(
            Row(
                group="multimodal",
                task=task,
                metric="mean recall" if metric == "mean" else metric,
                model=recalls["model"][metric],
                random_init=recalls["random_init"][metric] if "random_init" in recalls else None,
                trivial=chance[metric],
                trivial_name="chance",
                n_test=len(chosen),
                primary=metric == "mean",
                protocol="zero-shot",
                note="mean of R@1/5/10 in both directions; identical captions count as hits"
                if metric == "mean"
                else "",
            )
        )
    return out


def task_shapes_retrieval(ex: Extractor, s: EvalSettings) -> list[Row]:
    """Shapes-world image↔caption retrieval on the test scenes."""
    return _task_retrieval(ex, s, "shapes", "shapes_retrieval")


def task_emoji_retrieval(ex: Extractor, s: EvalSettings) -> list[Row]:
    """Emoji image↔name retrieval on the test emoji."""
    return _task_retrieval(ex, s, "emoji", "emoji_retrieval")


def task_clipart_retrieval(ex: Extractor, s: EvalSettings) -> list[Row]:
    """Clip-art drawing↔caption retrieval on the test drawings."""
    return _task_retrieval(ex, s, "clipart", "clipart_retrieval")


def task_vqa(ex: Extractor, s: EvalSettings) -> list[Row]:
    """Shapes VQA accuracy (overall and per question type) through the artifact's "vqa" head."""
    if "vqa" not in ex.artifact.heads.heads:
        raise TaskSkipped(f"{ex.artifact.reference} has no 'vqa' head (fine-tune one, then evaluate again)")
    labels = ex.artifact.heads.heads["vqa"].labels
    paths = source_files(s.data_dir)["shapes"]
    train = read_jsonl(paths["train"]["vqa"])
    test_file = require(paths[s.split]["vqa"])
    test_all = read_jsonl(test_file)
    chosen = subsample(len(test_all), s.max_vqa, s.seed)
    test = [test_all[i] for i in chosen]
    gold = [str(q["answer"]) for q in test]
    types = [str(q.get("type") or "all") for q in test]
    unique = sorted({str(q["image"]) for q in test})
    position = {name: i for i, name in enumerate(unique)}
    pixels = np.concatenate(
        [
            ex.load_pixels([test_file.parent / u for u in unique[part]])[0]
            for part in batches(len(unique), 256)
        ]
    )
    image_index = np.asarray([position[str(q["image"])] for q in test])
    logits = ex.vqa_logits(image_index, pixels, [str(q["question"]) for q in test], "shapes vqa")
    predicted = {n: [labels[j] for j in v.argmax(axis=1)] for n, v in logits.items()}
    train_answers = [str(q["answer"]) for q in train]
    train_types = [str(q.get("type") or "all") for q in train]
    coverage = float(np.mean([g in labels for g in gold]))
    rows = [
        Row(
            group="multimodal",
            task="shapes_vqa",
            metric="accuracy",
            model=M.accuracy(predicted["model"], gold),
            random_init=M.accuracy(predicted["random_init"], gold) if "random_init" in predicted else None,
            trivial=M.majority_accuracy(train_answers, gold),
            trivial_name="majority answer",
            n_train=len(train),
            n_test=len(test),
            primary=True,
            protocol="pretrained head",
            note=f"{coverage:.0%} of test answers are in the head's vocabulary; per type, the trivial "
            "baseline is the type's majority answer",
        )
    ]
    per_type = {n: M.per_type_accuracy(p, gold, types) for n, p in predicted.items()}
    type_majority = M.per_type_majority_accuracy(train_answers, train_types, gold, types)
    for kind in sorted(set(types)):
        rows.append(
            Row(
                group="multimodal",
                task="shapes_vqa",
                metric=f"accuracy[{kind}]",
                model=per_type["model"][kind],
                random_init=per_type["random_init"][kind] if "random_init" in per_type else None,
                trivial=type_majority[kind],
                trivial_name="type majority",
                n_train=len(train),
                n_test=types.count(kind),
            )
        )
    return rows


def _itm_items(s: EvalSettings, source: str) -> tuple[list[Path], list[str], list[int]]:
    """(image paths, captions, is_match) for one source: per image its caption and a false one."""
    import torch

    from training.losses.matching import false_caption_mask

    jsonl = require(source_files(s.data_dir)[source][s.split]["pairs"])
    rows = read_jsonl(jsonl)
    chosen = [rows[i] for i in subsample(len(rows), s.max_itm, s.seed)]
    meta = {
        "category": [r.get("label") for r in chosen],
        "objects": [r.get("objects") for r in chosen],
        "claim": [r.get("claim") for r in chosen],
    }
    false_of = false_caption_mask(meta, len(chosen))  # (N, N): caption j false of image i
    generator = torch.Generator().manual_seed(s.seed)
    images: list[Path] = []
    captions: list[str] = []
    matches: list[int] = []
    for i, row in enumerate(chosen):
        candidates = torch.nonzero(false_of[i]).flatten()
        if not len(candidates):
            continue  # every other caption is true of this image
        j = int(candidates[torch.randint(len(candidates), (1,), generator=generator)])
        path = jsonl.parent / row["image"]
        images += [path, path]
        captions += [str(row["text"]), str(chosen[j]["text"])]
        matches += [1, 0]
    return images, captions, matches


def task_itm(ex: Extractor, s: EvalSettings) -> list[Row]:
    """Held-out ITM accuracy: does the "itm" head tell a caption from one false of the image?"""
    if "itm" not in ex.artifact.heads.heads:
        raise TaskSkipped(f"{ex.artifact.reference} has no 'itm' head")
    labels = ex.artifact.heads.heads["itm"].labels
    match_index = labels.index("match")
    per_source: dict[str, dict[str, float]] = {}
    sizes: dict[str, int] = {}
    correct: dict[str, list[bool]] = {n: [] for n in ex.runtimes}
    tokenizer = ex.artifact.tokenizer
    for source in ITM_SOURCES:
        images, captions, matches = _itm_items(s, source)
        if not images:
            continue
        hits: dict[str, list[bool]] = {n: [] for n in ex.runtimes}
        for part in batches(len(images), s.batch_size):
            pixels, _ = ex.load_pixels(images[part])
            text = tokenizer.encode_batch(captions[part], ex.config.max_text_len)
            gold = np.asarray(matches[part])
            for name, runtime in ex.runtimes.items():
                logits = runtime.head_logits("itm", pixels, text.input_ids, text.attention_mask)
                hits[name] += ((logits.argmax(axis=1) == match_index) == gold.astype(bool)).tolist()
        per_source[source] = {n: float(np.mean(h)) for n, h in hits.items()}
        sizes[source] = len(images)
        for name in ex.runtimes:
            correct[name] += hits[name]
    if not sizes:
        raise TaskSkipped("no ITM test pairs (run `momo data prepare`)")
    note = "each test image with its caption and a caption false of it; " + ", ".join(
        f"{k} {v['model']:.3f} (n={sizes[k]})" for k, v in per_source.items()
    )
    rows = [
        Row(
            group="multimodal",
            task="heldout_itm",
            metric="accuracy",
            model=float(np.mean(correct["model"])),
            random_init=float(np.mean(correct["random_init"])) if "random_init" in correct else None,
            trivial=0.5,
            trivial_name="chance",
            n_test=sum(sizes.values()),
            primary=True,
            protocol="pretrained head",
            note=note,
        )
    ]
    for source, values in per_source.items():
        rows.append(
            Row(
                group="multimodal",
                task="heldout_itm",
                metric=f"accuracy[{source}]",
                model=values["model"],
                random_init=values.get("random_init"),
                trivial=0.5,
                trivial_name="chance",
                n_test=sizes[source],
                protocol="pretrained head",
            )
        )
    return rows
