"""prepare_all at micro scale: every source written in the standard formats, idempotent, atomic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from training.data import prepare
from training.data.formats import (
    read_image_folder,
    read_labeled_text,
    read_pairs,
    read_text_lines,
    read_text_pairs,
    read_vqa,
)
from training.data.layout import SOURCES, source_paths
from training.data.prepare import PrepareError, prepare_all, prepare_command

ALL_PACKAGES_PRESENT = all(path.exists() for pkgs in prepare.DEBIAN_PACKAGES.values() for _, path in pkgs)
pytestmark = pytest.mark.skipif(not ALL_PACKAGES_PRESENT, reason="Debian data packages not installed")


@pytest.fixture(scope="module")
def micro(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    data_dir = tmp_path_factory.mktemp("data")
    return data_dir, prepare_all(data_dir, scale="micro", install_missing=False, progress=False)


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_micro_writes_every_source_and_split(micro: tuple[Path, dict[str, Any]]) -> None:
    data_dir, summary = micro
    rows = summary["rows"]
    assert {r["source"] for r in rows} == set(SOURCES)
    for r in rows:
        assert r["count"] > 0 and not r["skipped"] and Path(r["path"]).exists(), r
        if r["source"] != "text":
            assert r["count"] <= 200
    layout = source_paths(data_dir)
    assert set(layout) == set(SOURCES)
    for source, splits in layout.items():
        for split, files in splits.items():
            for kind, path in files.items():
                assert path.exists(), (source, split, kind, path)
                if kind == "image_folder":
                    assert read_image_folder(path)
                elif kind == "pairs":
                    assert read_pairs(path)
                elif kind == "vqa":
                    assert read_vqa(path)
                elif kind == "labeled_text":
                    assert read_labeled_text(path)
                elif kind == "text_pairs":
                    assert read_text_pairs(path)
                elif kind == "text":
                    assert read_text_lines(path)
                elif kind in ("classes", "answers", "labels"):
                    assert json.loads(path.read_text())
    corpus = read_text_lines(layout["text"]["train"]["text"])
    assert len(corpus) == len(set(corpus))
    wordnet_train = {r.text for r in read_labeled_text(layout["wordnet"]["train"]["labeled_text"])}
    wordnet_test = {r.text for r in read_labeled_text(layout["wordnet"]["test"]["labeled_text"])}
    # train texts are in the corpus, test texts are not
    assert any(t in line for t in list(wordnet_train)[:5] for line in corpus)
    assert not any(
        line.endswith(": " + t) or line == t for t in wordnet_test - wordnet_train for line in corpus
    )
    # the same for the dictionary: held-out definitions are in the corpus' test split only
    definitions = {
        split: read_text_pairs(layout["gcide"][split]["text_pairs"]) for split in ("train", "test")
    }
    lines = set(corpus)
    assert all(f"{p.query}: {p.text}" in lines for p in definitions["train"])
    train_words = {p.query.lower() for p in definitions["train"]}
    assert not any(p.query.lower() in train_words for p in definitions["test"])  # split by headword
    test_corpus = set(read_text_lines(layout["text"]["test"]["text"]))
    assert all(f"{p.query}: {p.text}" in test_corpus for p in definitions["test"])
    assert not any(f"{p.query}: {p.text}" in lines for p in definitions["test"])


def test_prepare_is_idempotent(micro: tuple[Path, dict[str, Any]]) -> None:
    data_dir, first = micro
    before = _snapshot(data_dir)
    second = prepare_all(data_dir, scale="micro", install_missing=False, progress=False)
    assert all(r["skipped"] for r in second["rows"])
    assert [(r["source"], r["split"], r["count"]) for r in second["rows"]] == [
        (r["source"], r["split"], r["count"]) for r in first["rows"]
    ]
    assert _snapshot(data_dir) == before


def test_changed_parameters_or_missing_marker_rewrite_only_that_source(tmp_path: Path) -> None:
    prepare_all(tmp_path, scale="micro", install_missing=False, progress=False)
    marker = tmp_path / "fortunes" / prepare.SUCCESS
    content = json.loads(marker.read_text())
    content["params"]["limits"]["train"] = 1
    marker.write_text(json.dumps(content))
    (tmp_path / "wordnet" / prepare.SUCCESS).unlink()  # as if a run died after writing the files
    (tmp_path / ".shapes.tmp").mkdir()  # leftover of an interrupted run
    summary = prepare_all(tmp_path, scale="micro", install_missing=False, progress=False)
    rewritten = {r["source"] for r in summary["rows"] if not r["skipped"]}
    assert rewritten == {"fortunes", "wordnet"}
    assert json.loads(marker.read_text())["params"]["limits"]["train"] == 200
    assert not (tmp_path / ".fortunes.old").exists() and not (tmp_path / ".fortunes.tmp").exists()


def test_prepare_command_prints_table(
    micro: tuple[Path, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir, _ = micro
    prepare_command(data_dir, "micro", install_missing=False)
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["source", "split", "count", "status", "path"]
    assert "shapes" in out and "wordnet" in out and str(data_dir) in out


def test_unknown_scale(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown scale"):
        prepare_all(tmp_path, scale="huge", install_missing=False, progress=False)


def test_missing_package_is_reported_or_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "not-there" / "data.noun"
    monkeypatch.setattr(prepare, "DEBIAN_PACKAGES", {"wordnet": [("wordnet-base", missing)]})
    with pytest.raises(PrepareError, match="apt-get install -y wordnet-base"):
        prepare.ensure_packages(["wordnet"], install_missing=False)

    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        if "install" in cmd:  # the "installation" creates the file the source reads
            missing.parent.mkdir(parents=True, exist_ok=True)
            missing.write_text("")
        return subprocess.CompletedProcess(cmd, 1 if cmd[0] == "dpkg" else 0, stdout="", stderr="")

    monkeypatch.setattr(prepare.subprocess, "run", fake_run)
    monkeypatch.setattr(prepare.shutil, "which", lambda name: f"/usr/bin/{name}")
    prepare.ensure_packages(["wordnet", "shapes"], install_missing=True)
    install = next(c for c in calls if "install" in c)
    assert install[-1] == "wordnet-base" and "-y" in install
    assert (install[0] == "sudo") == (os.geteuid() != 0)


def test_default_data_dir_from_environment(tmp_path: Path) -> None:
    code = "from training.data.layout import DEFAULT_DATA_DIR; print(DEFAULT_DATA_DIR)"
    env = {**os.environ, "MOMO_DATA_DIR": str(tmp_path / "elsewhere")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(tmp_path / "elsewhere")
    env.pop("MOMO_DATA_DIR")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "data"


def test_cli_data_prepare(micro: tuple[Path, dict[str, Any]]) -> None:
    import typer
    from typer.testing import CliRunner

    from training.data.commands import register

    app = typer.Typer()
    register(app)
    data_dir, _ = micro
    args = ["data", "prepare", "--data-dir", str(data_dir), "--scale", "micro", "--no-install"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "kept" in result.output and "fashion_mnist" in result.output
    bad = CliRunner().invoke(
        app, ["data", "prepare", "--data-dir", str(data_dir), "--scale", "huge", "--no-install"]
    )
    assert bad.exit_code == 1 and "unknown scale" in bad.output
