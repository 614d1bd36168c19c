"""Fine-tuning: a named model version + a dataset in one of the DESIGN §4 formats -> a new version.

Tasks (dataset format -> what is trained):

- ``image_classification`` — an image folder (``root/<class>/<image>``) -> a classifier head over the
  image CLS;
- ``text_classification`` — a labelled-text JSONL (``{"text", "label"}``) -> a head over the text CLS;
- ``retrieval`` — an image–text pair JSONL (``{"image", "text"}``) -> the encoder and its two
  projections, trained with symmetric InfoNCE (ITC) and the learnable temperature;
- ``vqa`` — a VQA JSONL (``{"image", "question", "answer"}``) -> an answer head over the fused CLS.

A seeded fraction of the data (grouped by image, so no image is in both parts) is held out for
validation: it is scored before training (the *base* model: an existing compatible head, else
zero-shot with the prompt "a photo of a {label}" for images / the bare label for texts, else
chance; R@1 for retrieval), after every epoch (early stopping keeps the best weights) and at the
end. ``freeze_encoder`` trains only the head (retrieval: only the projections and temperature); the
encoder's CLS features are then computed once and cached, so a frozen run is a linear probe.

The result is registered through `ModelStore.register` (written into a hidden temp directory,
verified, then renamed: never a half-written version) with a manifest naming the parent version,
the task, the data, the hyper-parameters and the validation metrics; the new head (with its labels
and validation accuracy) goes into ``heads.json``. ONNX graphs are exported into the new version
(``momo.export.export_artifact``) so the service's ONNX runtime loads it without a cache export.

Callbacks: ``progress(step, total, metrics)`` after every optimizer step, ``should_cancel()`` before
every step (and while features are cached; `Cancelled` is raised, nothing is registered), and
``on_event(message, data)`` for milestones (data loaded, validation scores, early stop, registered).

The package: `options` (tasks, options, results, errors), `data` (dataset checks, loading, the
split), `tasks` (what is trained and scored), `loop` (`fit_task`), `registration` (the new
version), `run` (`run_finetune`, wiring them) and `cli` (`momo finetune`). Importing the package
imports neither torch nor typer.
"""

from __future__ import annotations

from training.finetune.data import check_dataset, load_dataset, split_indices
from training.finetune.loop import FitOutcome, fit_task
from training.finetune.options import TASKS, Cancelled, FinetuneError, FinetuneOptions, FinetuneResult
from training.finetune.registration import register_result
from training.finetune.run import run_finetune
from training.finetune.tasks import build_task

__all__ = [
    "TASKS",
    "Cancelled",
    "FinetuneError",
    "FinetuneOptions",
    "FinetuneResult",
    "FitOutcome",
    "build_task",
    "check_dataset",
    "fit_task",
    "load_dataset",
    "register_result",
    "run_finetune",
    "split_indices",
]
