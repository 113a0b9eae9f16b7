"""`embed` as an Apache Beam pipeline (the `hub_export[beam]` extra), for corpora that
outgrow one machine.

The pipeline does what `embed` does, window by window, so the numbers are the same:

    windows of lines (first line, count, byte offset in the input)
      -> read those lines from the input
      -> RunInference over the exported module: one example is one window, embedded
         with `embed`'s own length-sorted batching (`ElmoWindowHandler`)
      -> each window saved as a part, `<output>.parts/part-<first line>.hdf5`

`run.json` beside the parts is the one `embed` writes, so the merge step is `embed
--resume`'s: it moves every part into the output being assembled (`corpus.store`) and
completes it in the original layout. A pipeline that died halfway is
finished the same way: `embed --resume` (locally) or the Beam command again with
`--resume` (windows already saved are not embedded again).

Workers need the module, the input and the parts folder at the same paths: on one
machine (DirectRunner) that is given; on a cluster, use paths on a file system that
every worker mounts (NFS, a bucket mounted with a FUSE driver).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import shlex
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Optional, Sequence

import numpy as np

from hub_export.corpus.embed import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_TOKENS,
    EmbedResult,
    check_module_dir,
    check_resumable,
    embed,
    embed_window,
    load_module,
    run_record,
    scan_corpus,
    start,
    start_afresh,
    writing,
)
from hub_export.corpus.store import (
    RUN_FILE,
    EmbedError,
    Store,
    Window,
    locked,
    read_part,
    write_part,
)

BEAM_MISSING = ("--runner: Apache Beam is not installed: pip install -e '.[beam]' (the "
                "hub_export[beam] extra), or leave out --runner to embed locally")


def beam_available() -> bool:
    try:
        import apache_beam  # noqa: F401
    except ImportError:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class WindowSpec:
    """Lines [first, first + count) of the input, starting at byte `offset`, but for those
    at the positions `skip` in it (saved by an earlier run)."""

    first: int
    count: int
    offset: int
    skip: tuple[int, ...] = ()


def window_specs(path: Path, n_lines: int, window: int) -> list[WindowSpec]:
    """One spec per `window` lines, with the byte offset where each starts (one pass)."""
    specs, offset, index = [], 0, 0
    with open(path, "rb") as f:
        for line in f:
            if index % window == 0:
                specs.append(WindowSpec(index, min(window, n_lines - index), offset))
            offset += len(line)
            index += 1
    return specs


def read_window(spec: WindowSpec, path: str) -> list[tuple[int, list[str]]]:
    """The (line index, tokens) of a window; the corpus was checked to be UTF-8."""
    out = []
    with open(path, "rb") as f:
        f.seek(spec.offset)
        skip = set(spec.skip)
        for k in range(spec.count):
            line = f.readline()
            if k not in skip:
                out.append((spec.first + k, line.decode("utf-8").split()))
    return out


class _NoMeter:
    def add(self, lines: int, tokens: int) -> None:
        pass


def make_handler(module: str, layers: str, batch_size: int, max_tokens: int):
    """A RunInference model handler for windows of lines (see the module doc)."""
    from apache_beam.ml.inference.base import ModelHandler, PredictionResult

    class ElmoWindowHandler(ModelHandler):
        def __init__(self):
            # One window is one example: it is already batched, by length, inside.
            super().__init__(min_batch_size=1, max_batch_size=1)
            self.module, self.layers = module, layers
            self.batch_size, self.max_tokens = batch_size, max_tokens

        def load_model(self):
            return load_module(self.module)

        def run_inference(self, batch: Sequence[list], model, inference_args: Optional[dict[str, Any]] = None
                          ) -> Iterable:
            return [PredictionResult(w, embed_window(model, w, self.layers, self.batch_size,
                                                      self.max_tokens, _NoMeter()))
                    for w in batch]

        def get_num_bytes(self, batch) -> int:
            return sum(len(tokens) for w in batch for _, tokens in w) * 8

    return ElmoWindowHandler()


def _save(result, parts: str, layers: str) -> int:
    window: Window = result.inference
    write_part(Path(parts), window, layers)
    return len(window.lines)


@contextlib.contextmanager
def _quiet_beam_logs() -> Iterator[None]:
    logger = logging.getLogger("apache_beam")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def embed_beam(module: str | os.PathLike, input: str | os.PathLike, output: str | os.PathLike,
               runner: str = "DirectRunner", beam_options: str = "", layers: str = "all",
               batch_size: int = DEFAULT_BATCH_SIZE, max_tokens: int = DEFAULT_MAX_TOKENS,
               window: int | None = None, resume: bool = False, overwrite: bool = False,
               progress: IO[str] | None = None) -> EmbedResult:
    """Runs `embed` as a Beam pipeline on `runner`, then merges the parts into `output`.

    Args:
        runner: a Beam runner name (DirectRunner, DataflowRunner, FlinkRunner, SparkRunner).
        beam_options: further pipeline options, as on a Beam command line
            (e.g. "--project=p --region=r --temp_location=gs://b/tmp").
        The rest: as for `embed.embed`.

    Raises:
        EmbedError: as `embed` does, and when Beam is not installed.
    """
    if not beam_available():
        raise EmbedError(BEAM_MISSING)
    import apache_beam as beam
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.options.pipeline_options import PipelineOptions

    output, parts, window, has_run = start(output, layers, batch_size, max_tokens, window,
                                           resume, overwrite)
    module_path = check_module_dir(module)
    if resume and output.exists() and not has_run:  # a finished run: embed checks it, no-op
        return embed(module_path, input, output, layers=layers, batch_size=batch_size,
                     max_tokens=max_tokens, window=window, resume=True, progress=progress)
    corpus = scan_corpus(input)
    # Beam parses its options with argparse, which prints and exits on an error: catch
    # that here, before any work, and say it as ours.
    said = io.StringIO()
    # Beam's DirectRunner first tries its PrismRunner, which downloads a binary from the
    # internet at run time, then falls back to the in-process FnApiRunner that runs this
    # pipeline: go to that one directly.
    beam_runner = "FnApiRunner" if runner.lower() == "directrunner" else runner
    try:
        with contextlib.redirect_stderr(said):
            options = PipelineOptions(shlex.split(beam_options) + [f"--runner={beam_runner}"])
            options.get_all_options()
    except (ValueError, SystemExit) as e:
        why = said.getvalue().strip().splitlines()[-1:] or [str(e)]
        raise EmbedError(f"--beam-options: {beam_options!r}: not valid pipeline options "
                         f"({why[0]})") from None
    run = run_record(module_path, corpus, layers, max_tokens, overwrite)

    with writing(parts):
        output.parent.mkdir(parents=True, exist_ok=True)
    with writing(parts), locked(parts):
        done = np.zeros(corpus.lines, bool)
        if resume and has_run:
            check_resumable(parts, run, json.loads((parts / RUN_FILE).read_text()))
            loaded = load_module(module_path)
            depth, width = loaded.n_layers + 1, loaded.width(layers)
            for path in sorted(parts.glob("part-*.hdf5")):
                done[read_part(path, layers, corpus.lines, depth, width, values=False).lines] = True
            # Lines a merge already moved into the output being assembled.
            store = Store(parts, layers, corpus.lines, depth, width, resume=True)
            done |= store.done
            store.close()
        else:
            start_afresh(parts, run)
    specs = []
    for spec in window_specs(corpus.path, corpus.lines, window):
        saved = np.flatnonzero(done[spec.first: spec.first + spec.count])
        if len(saved) < spec.count:
            specs.append(dataclasses.replace(spec, skip=tuple(int(k) for k in saved)))
    if progress is not None:
        progress.write(f"embed: {runner}: {len(specs)} window(s) of up to {window} lines to embed\n")
    if specs:
        handler = make_handler(str(module_path), layers, batch_size, max_tokens)
        # A failing step is reported here, in one line (a full disk under the parts is
        # said as such); Beam would also log it with its traceback.
        with _quiet_beam_logs(), writing(parts):
            with beam.Pipeline(options=options) as pipeline:
                (pipeline
                 | "Windows" >> beam.Create(specs)
                 | "Read" >> beam.Map(read_window, str(corpus.path))
                 | "Embed" >> RunInference(handler)
                 | "Save" >> beam.Map(_save, str(parts), layers))
    # The merge: every line is in a part now; `embed --resume` assembles the output
    # (replacing an old one only once the new one is complete).
    return embed(module_path, corpus.path, output, layers=layers, batch_size=batch_size,
                 max_tokens=max_tokens, window=window, resume=True, progress=progress)
