"""``speakerid model list|download|install|info``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..embedding import weights
from .common import JsonOpt, download_progress, emit_json, handle_errors, show_progress

app = typer.Typer(
    help="List, download, install and inspect embedding models.", no_args_is_help=True
)

Sha256Opt = Annotated[
    Optional[str], typer.Option("--sha256", help="Expected sha256 (overrides the pinned value).")
]


@app.command("list")
@handle_errors
def list_models(json_out: JsonOpt = False) -> None:
    """Known and installed models.

    \b
    Example:
      speakerid model list
    """
    rows = []
    for name in sorted(set(weights.KNOWN_MODELS) | set(weights.installed_models())):
        known = weights.KNOWN_MODELS.get(name)
        path = weights.installed_path(name)
        rows.append(
            {
                "name": name,
                "installed": path is not None,
                "path": str(path) if path else None,
                "model_id": known.model_id if known else None,
                "revision": known.revision if known else None,
                "sha256": known.sha256 if known else None,
                "description": known.description if known else "custom checkpoint",
            }
        )
    for name in sorted(weights.BUNDLED_MODELS):
        path = weights.bundled_path(name)
        if path is not None:
            card = weights.model_card(name)
            rows.append(
                {
                    "name": name,
                    "installed": True,
                    "path": str(path),
                    "model_id": None,
                    "revision": None,
                    "sha256": card.get("sha256"),
                    "description": f"bundled: {card.get('summary', 'demo model')}",
                }
            )
    if json_out:
        emit_json(rows)
        return
    for r in rows:
        mark = "installed" if r["installed"] else "not installed"
        typer.echo(f"{r['name']:<24} {mark:<14} {r['description']}")


@app.command("download")
@handle_errors
def download(
    name: Annotated[str, typer.Argument(help="A known model name.")],
    sha256: Sha256Opt = None,
    force: Annotated[bool, typer.Option("--force", help="Download again even if cached.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Download a known model from ModelScope into the cache (verifying its checksum).

    \b
    Example:
      speakerid model download eres2netv2
    """
    path = weights.download(
        name, progress=download_progress(show_progress(json_out)), sha256=sha256, force=force
    )
    if json_out:
        emit_json({"name": name, "path": str(path), "sha256": weights.sha256_file(path)})
    else:
        typer.echo(f"{name}: {path}")


@app.command("install")
@handle_errors
def install(
    path: Annotated[Path, typer.Argument(help="A checkpoint file on disk.")],
    name: Annotated[
        Optional[str], typer.Option("--name", help="Install under this name (default: file stem).")
    ] = None,
    sha256: Sha256Opt = None,
    force: Annotated[bool, typer.Option("--force", help="Accept a checksum mismatch.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Install a local checkpoint file (e.g. downloaded by hand on another machine).

    \b
    Example:
      speakerid model install pretrained_eres2netv2.ckpt --name eres2netv2
    """
    dest = weights.install(path, name=name, sha256=sha256, force=force)
    installed = name or path.stem
    if json_out:
        emit_json({"name": installed, "path": str(dest), "sha256": weights.sha256_file(dest)})
    else:
        typer.echo(f"installed {installed}: {dest}")


@app.command("info")
@handle_errors
def info(
    model: Annotated[str, typer.Argument(help="Known/installed model name or checkpoint path.")],
    json_out: JsonOpt = False,
) -> None:
    """Configuration (inferred from the weights), parameter count and checksum of a model.

    A known model that is not installed is described from the pinned table (no download).

    \b
    Example:
      speakerid model info eres2netv2
    """
    data = weights.describe(model)
    if json_out:
        emit_json(data)
        return
    for key, value in data.items():
        typer.echo(f"{key:<13} {value}")


@app.command("export-onnx")
@handle_errors
def export_onnx(
    model: Annotated[str, typer.Argument(help="Known/installed model name or checkpoint path.")],
    output: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", help="ONNX file (default: the backend's cache)."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Export a model to ONNX (what the default CPU backend runs) and check its agreement.

    \b
    Example:
      speakerid model export-onnx eres2netv2
    """
    from ..embedding import onnx_backend

    resolved = weights.resolve(model, progress=download_progress(show_progress(json_out)))
    net = weights.load_model(resolved.path)
    cached = output is None  # into the backend's cache: with its metadata, used from then on
    dest = onnx_backend.export_onnx(
        net,
        onnx_backend.cache_path(resolved.sha256) if cached else output,
        resolved.sha256 if cached else None,
    )
    if cached:  # and the trunk (window embeddings: multi-speaker guard, track)
        onnx_backend.export_frames(net, resolved.sha256)
    cosine = onnx_backend.agreement(net, onnx_backend.OnnxNetwork(dest))
    data = {
        "name": resolved.name,
        "sha256": resolved.sha256,
        "onnx": str(dest),
        "bytes": dest.stat().st_size,
        "min_cosine_vs_torch": cosine,
    }
    if json_out:
        emit_json(data)
    else:
        typer.echo(
            f"{resolved.name}: {dest} ({data['bytes']:,} bytes), min cosine vs PyTorch {cosine:.6f}"
        )
