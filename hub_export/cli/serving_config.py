"""`python -m hub_export serving-config`: TF Serving's models.config for the exports."""

from __future__ import annotations

from absl import flags

from hub_export.errors import HubExportError, UsageError

SUMMARY = ("Write <base>/models.config for TF Serving, covering the versions on disk, and "
           "<base>/batching.config for its request batching")
BATCHING_FLAGS = ("max-batch-size", "batch-timeout-micros", "num-batch-threads",
                  "max-enqueued-batches")
EXAMPLES = ("--base exported --name elmo --label stable=3",)


def define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("base", "exported", "The export root holding <name>/<version>/.",
                        flag_values=fv)
    flags.DEFINE_string("name", "elmo", "The model's directory name under --base.",
                        flag_values=fv)
    flags.DEFINE_list("versions", None, "Serve exactly these versions, e.g. 2,3 (default: "
                      "every version found).", flag_values=fv)
    flags.DEFINE_integer("latest", None, "Serve the newest N versions instead.",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_multi_string("label", None, "A version label, e.g. stable=3 (repeatable).",
                              flag_values=fv)
    flags.DEFINE_string("serving-root", None, "The path at which the server sees --base "
                        "(e.g. /models in the tensorflow/serving container); default: "
                        "--base's absolute path.", flag_values=fv)
    flags.DEFINE_bool("batching", True, "Also write <base>/batching.config, TF Serving's "
                      "--batching_parameters_file.", flag_values=fv)
    flags.DEFINE_integer("max-batch-size", None, "Sentences in one batch, and in one request "
                         "at most (default 64).", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("batch-timeout-micros", None, "How long a batch waits for more "
                         "requests, in microseconds (default 10000).", lower_bound=0,
                         flag_values=fv)
    flags.DEFINE_integer("num-batch-threads", None, "Batches run at once (default: the "
                         "server's CPU count).", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("max-enqueued-batches", None, "Batches that may wait; requests "
                         "beyond them are refused (default: TF Serving's).", lower_bound=1,
                         flag_values=fv)


def _given(fv: flags.FlagValues) -> dict:
    return {name.replace("-", "_"): fv[name].value for name in BATCHING_FLAGS
            if fv[name].value is not None}


def check(fv: flags.FlagValues) -> None:
    given = _given(fv)
    if given and not fv.batching:
        raise UsageError(f"--no-batching writes no batching.config, so "
                         f"--{next(iter(given)).replace('_', '-')} has nothing to set")


def main(fv: flags.FlagValues) -> int:
    from hub_export.serving.config import Batching, parse_labels, write_batching, write_config

    given = _given(fv)
    batching = Batching(**given)
    batching.to_proto()  # a bad value stops here, before models.config is written
    versions = None
    if fv.versions:
        if not all(v.strip().isdigit() for v in fv.versions):
            raise HubExportError(f"--versions: expected version numbers like 2,3, got "
                                 f"{','.join(fv.versions)}")
        versions = [int(v) for v in fv.versions]
    path = write_config(fv.base, name=fv.name, versions=versions, latest=fv.latest,
                        labels=parse_labels(fv.label), serving_root=fv["serving-root"].value)
    print(path)
    if fv.batching:
        print(write_batching(fv.base, batching))
    return 0
