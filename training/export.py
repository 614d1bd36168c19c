"""`momo export NAME[:VERSION]`: write ONNX graphs (and a TorchScript program) into an artifact.

The export library is `momo.export` (into an artifact; the runtime fills its cache through
`momo.graph_writer`, the writer both share); this module only adds the command. Heavy imports (torch, onnx,
onnxruntime) stay inside the command body so `momo --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def _format_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


def format_parity(parity: dict[str, dict[str, Any]]) -> list[str]:
    """One line per format: worst abs diff, min embedding cosine, head argmax agreement."""
    lines = []
    for fmt, figures in parity.items():
        verdict = "ok" if figures.get("ok") else "FAILED"
        if fmt == "onnx-int8":
            verdict = "info (quantised, no fp32 tolerance)"
        lines.append(
            f"  {fmt:<13} max|Δ| {figures['max_abs_overall']:.2e}  min cos {figures['min_cosine']:.6f}  "
            f"argmax agree {figures['argmax_agree']:.3f}  [{verdict}]"
        )
    return lines


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        reference: Annotated[str, typer.Argument(help="NAME, NAME:VERSION, 'active' or an artifact path.")],
        store: Annotated[
            Path, typer.Option("--store", envvar="MOMO_MODEL_STORE", help="Model store directory.")
        ] = Path("model_store"),
        int8: Annotated[
            bool, typer.Option("--int8/--no-int8", help="Also write dynamically quantised int8 ONNX graphs.")
        ] = False,
        torchscript: Annotated[
            bool, typer.Option("--torchscript/--no-torchscript", help="Also write the TorchScript program.")
        ] = True,
        check_parity: Annotated[
            bool,
            typer.Option(
                "--check-parity/--no-check-parity",
                help="Compare every format with eager torch (batch 1/3/17, text lengths 1/7/max); "
                "an fp32 mismatch above 1e-4 aborts without touching the artifact.",
            ),
        ] = True,
    ) -> None:
        """Export ONNX graphs (image, text, pair; shared external weights) into the artifact directory
        and record them in its manifest."""
        from momo.artifact import ArtifactError
        from momo.export import export_artifact
        from momo.store import ModelStore, StoreError

        try:
            path = ModelStore(store).locate(None if reference == "active" else reference)
            typer.echo(f"exporting {path} ...")
            report = export_artifact(path, int8=int8, torchscript=torchscript, check_parity=check_parity)
        except (StoreError, ArtifactError, OSError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        if report.parity:
            typer.echo("parity against eager torch (max over batch 1/3/17 × text lengths 1/7/max):")
            for line in format_parity(report.parity):
                typer.echo(line)
        if not report.parity_ok:
            typer.echo("error: parity check failed; nothing was written into the artifact", err=True)
            raise typer.Exit(1)
        typer.echo(f"wrote into {path} ({', '.join(report.formats)}):")
        for name, size in sorted(report.files.items()):
            typer.echo(f"  {name:<28} {_format_bytes(size):>10}")
        typer.echo("manifest updated with the sha256 of every new file")
