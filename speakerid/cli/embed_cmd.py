"""``speakerid embed FILE...``: print or save normalized embeddings (saved ones carry their
model in a sidecar, ``vector_files``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InvalidInputError
from .common import (
    BackendOpt,
    CompileOpt,
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    PrecisionOpt,
    ThreadsOpt,
    download_progress,
    emit_json,
    handle_errors,
    prepare_status,
    progress_bar,
    show_progress,
)


def _unique_outputs(files: list[Path], out_dir: Path) -> list[Path]:
    seen: dict[str, int] = {}
    paths = []
    for f in files:
        stem = f.stem
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        paths.append(out_dir / (f"{stem}.npy" if n == 0 else f"{stem}-{n}.npy"))
    return paths


@handle_errors
def embed(
    files: Annotated[list[Path], typer.Argument(help="Audio files (wav/flac/ogg/opus/mp3).")],
    model: ModelOpt = None,
    device: DeviceOpt = None,
    threads: ThreadsOpt = None,
    compile: CompileOpt = False,
    backend: BackendOpt = None,
    precision: PrecisionOpt = None,
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output",
            "-o",
            help="Save one <name>.npy per file here, with <name>.npy.json: the model that "
            "made it (import-embeddings checks it).",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Compute L2-normalized speaker embeddings.

    \b
    Examples:
      speakerid embed a.wav b.wav --json
      speakerid embed recordings/*.flac -o embeddings/
    """
    from ..audio.decode import load_audio
    from ..config import check_backend, check_precision
    from ..embedding.embedder import Embedder
    from ..registry import vector_files

    bars = show_progress(json_out)
    clips = [load_audio(f) for f in files]  # validate every input before any work
    embedder = Embedder(
        model,
        device=device,
        progress=download_progress(bars),
        backend=check_backend(backend) if backend else None,
        on_prepare=prepare_status(bars),
        precision=check_precision(precision) if precision else None,
    )
    with progress_bar("embedding", len(clips), bars) as advance:
        results = embedder.embed_many(clips, on_progress=advance)
    outputs = _unique_outputs(files, output) if output else [None] * len(files)
    if output:
        made_by = vector_files.Provenance.of(embedder)
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInputError(f"{output}: cannot create the folder ({exc})") from None
        for f, res, path in zip(files, results, outputs):
            source = {"file": str(f), "sha256": res.sha256, "duration": round(res.duration, 3)}
            vector_files.save(path, res.vector, made_by, source)  # + NAME.npy.json: its model
    if json_out:
        rows = []
        for f, res, path in zip(files, results, outputs):
            row = {
                "file": str(f),
                "model": res.model,
                "dim": res.dim,
                "embedding": [round(float(v), 7) for v in res.vector],
            }
            if path:
                row["output"] = str(path)
                row["provenance"] = str(vector_files.sidecar(path))
            rows.append(row)
        emit_json(rows)
        return
    for f, res, path in zip(files, results, outputs):
        if path:
            typer.echo(f"{f}\t{path}")
        else:
            typer.echo(f"{f}\t" + " ".join(f"{v:.7f}" for v in res.vector))
