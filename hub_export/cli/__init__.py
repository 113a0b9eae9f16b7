"""`python -m hub_export [COMMAND] [--flag value ...]`: one absl flag set per command.

The main job takes no command word (`python -m hub_export --version 3`); the other
commands are named first (`python -m hub_export embed --module ...`). Each command's
module under `hub_export/cli/` defines its flags (`define`) on a `flags.FlagValues` of
its own, so `<command> --help` lists only that command's flags, with its own defaults,
and a flag means one thing within a command; `check` refuses what absl alone cannot (a
missing flag, flags that go together) before TensorFlow is imported, so that a usage
error is instant; `main` does the work. Flags are spelt with dashes, as the README
writes them (`--batch-size`); the underscore spelling and `--no-<flag>` for a boolean
are accepted too.

Exit status: 0 done, 1 a usage error (a flag's form, a missing or unknown flag or
command), 2 bad input (a file, key or value that is wrong; an output the OS refused),
130 interrupted.

A run prints hub_export's own lines only (progress, results, notes, errors): TensorFlow's
start-up log, library warnings and absl log lines come back with --verbose or
HUB_EXPORT_VERBOSE=1.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import textwrap
import warnings
from types import ModuleType

from absl import flags
from absl import logging as absl_logging

from hub_export.atomic import ReportedStream, drop_unwritable_streams, failure_message
from hub_export.errors import HubExportError, UsageError

PROG = "python -m hub_export"
# Set to anything but "" or "0": the same as --verbose.
VERBOSE_ENV = "HUB_EXPORT_VERBOSE"


def _commands() -> dict[str, ModuleType]:
    from hub_export.cli import (
        dump_token_embeddings,
        dump_weights,
        embed,
        evaluate,
        export,
        serving_config,
        train,
    )

    return {"export": export, "serving-config": serving_config, "embed": embed,
            "dump-token-embeddings": dump_token_embeddings, "train": train,
            "evaluate": evaluate, "dump-weights": dump_weights}


def overview() -> str:
    """What `python -m hub_export --help` prints: the commands, one line each."""
    commands = _commands()
    width = max(map(len, commands))
    lines = [f"usage: {PROG} [COMMAND] [--flag value ...]", "",
             "Turns ELMo biLM weights (options.json + weights.hdf5) into TF Hub-style "
             "SavedModels, and works with them.", "", "commands:"]
    for name, module in commands.items():
        default = " (the default: no command word)" if name == "export" else ""
        lines.append(f"  {name:<{width}}  {module.SUMMARY}{default}")
    lines += ["", f"Run '{PROG} COMMAND --help' for a command's flags, e.g. "
                  f"'{PROG} export --help'.",
              f"Example: {PROG} --version 3   (the built-in default model -> exported/elmo/3/)"]
    return "\n".join(lines) + "\n"


def command_help(name: str, module: ModuleType, fv: flags.FlagValues) -> str:
    """What `<command> --help` prints: its usage line, what it does, and its flags."""
    word = "" if name == "export" else f" {name}"
    lines = [f"usage: {PROG}{word} [--flag value ...]", "", module.SUMMARY + ".", ""]
    lines += [f"  {PROG}{word} {example}" for example in module.EXAMPLES]
    lines += ["", "flags:"]
    for flag_name in fv:
        flag = fv[flag_name]
        if flag.boolean:
            head = f"--[no-]{flag_name}"
        else:
            head = f"--{flag_name}={_metavar(flag)}"
        default = flag.default
        if isinstance(default, list):
            default = ",".join(map(str, default))
        if flag.boolean:
            default = "on" if default else "off"
        # absl starts an enum's help with "<a|b|c>: "; the head shows the choices already.
        text = re.sub(r"^<[^>]*>: ", "", flag.help)
        text += "" if default is None else f" (default: {default})"
        lines.append(f"  {head}")
        lines += textwrap.wrap(text, width=88, initial_indent="      ",
                               subsequent_indent="      ")
    lines += ["  --help", "      This help."]
    return "\n".join(lines) + "\n"


def _metavar(flag: flags.Flag) -> str:
    choices = getattr(flag.parser, "enum_values", None)
    if choices:
        return "{" + "|".join(choices) + "}"
    kind = flag.flag_type()
    if kind.startswith("int"):
        return "N"
    if kind == "float":
        return "X"
    if kind.startswith("list") or kind.startswith("comma"):
        return "A,B,..."
    return "VALUE"


def flag_values(module: ModuleType) -> flags.FlagValues:
    """A command's flags: its own, then --quiet (if it has none) and --verbose."""
    fv = flags.FlagValues()
    module.define(fv)
    if "quiet" not in fv:  # every command takes it, so that scripts can pass it to any
        flags.DEFINE_bool("quiet", False, "Print nothing but the result (this command shows "
                          "no progress anyway).", flag_values=fv)
    flags.DEFINE_bool("verbose", False, "Also print what TensorFlow and the libraries log "
                      f"(C++ start-up lines, warnings, absl log lines); the same as "
                      f"{VERBOSE_ENV}=1.", flag_values=fv)
    return fv


def _normalise(argv: list[str], fv: flags.FlagValues) -> list[str]:
    """Accepts `--flag_name` for `--flag-name`, and `--no-flag` for a boolean's `--noflag`."""
    out = []
    for arg in argv:
        body, sep, value = arg.partition("=")
        if body.startswith("--") and body != "--":
            name = body[2:].replace("_", "-")
            if name.startswith("no-") and name[3:] in fv and fv[name[3:]].boolean:
                arg = f"--no{name[3:]}{sep}{value}"
            elif name in fv:
                arg = f"--{name}{sep}{value}"
        out.append(arg)
    return out


def _usage(message: str, command: str | None) -> int:
    """A usage error: the problem and the help to read, exit status 1."""
    where = f"'{PROG} {command} --help' for its flags" if command else (
        f"'{PROG} --help' for the commands")
    print(f"error: {message}\nRun {where}.", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    """Runs the command line `argv` (without the program name); returns the exit status."""
    commands = _commands()
    args = list(argv)
    if args and not args[0].startswith("-"):
        name = args.pop(0)
        if name not in commands:
            return _usage(f"unknown command {name!r}; the commands are "
                          f"{', '.join(commands)}", None)
    else:
        if any(a in ("--help", "-h", "--helpfull", "-?") for a in args):
            sys.stdout.write(overview())
            return 0
        name = "export"
    module = commands[name]
    fv = flag_values(module)
    if any(a in ("--help", "-h", "--helpfull", "-?") for a in args):
        sys.stdout.write(command_help(name, module, fv))
        return 0
    args = getattr(module, "normalise", lambda a: a)(_normalise(args, fv))
    try:
        rest = fv([PROG] + args)
    except flags.Error as e:
        return _usage(str(e), name)
    if rest[1:]:
        return _usage(f"unexpected argument {rest[1]!r} (flags take the form --flag value; "
                      f"the command word comes first)", name)
    try:
        module.check(fv)  # what absl cannot check alone, still before TensorFlow loads
    except UsageError as e:
        return _usage(str(e), name)
    # Every command reports bad input, and what the OS refuses (a full disk, a read-only
    # or unwritable folder; stdout or stderr redirected to a full disk too), the same way:
    # one line naming it, exit status 2.
    streams = sys.stdout, sys.stderr
    sys.stdout = ReportedStream(sys.stdout, "standard output")
    sys.stderr = ReportedStream(sys.stderr, "standard error")
    try:
        # Flags checked: now TensorFlow (every command's work needs it), so that a usage
        # error never waits for it.
        load_tensorflow(verbose_requested(fv.verbose))
        status = module.main(fv)
        sys.stdout.flush()
        return status
    except HubExportError as e:
        message = str(e)
    except Exception as e:
        message = failure_message(e) or _tensorflow_message(e)
        if message is None:
            raise
    finally:
        sys.stdout, sys.stderr = streams
    with contextlib.suppress(OSError):  # stderr itself may be on the full disk
        print(f"error: {message}", file=sys.stderr, flush=True)
    drop_unwritable_streams()
    return 2


def _tensorflow_message(e: Exception) -> str | None:
    """An error TensorFlow raised that no command turned into a message of its own (with
    the quiet log, its C++ lines are not printed): its class and first line."""
    tf = sys.modules.get("tensorflow")
    if tf is None or not isinstance(e, tf.errors.OpError):
        return None
    lines = (e.message or "").strip().splitlines()
    return f"TensorFlow {type(e).__name__}: {lines[0] if lines else e}"


def verbose_requested(flag: bool, environ=os.environ) -> bool:
    """--verbose, or HUB_EXPORT_VERBOSE set to anything but "" or "0"."""
    return flag or environ.get(VERBOSE_ENV, "") not in ("", "0")


def load_tensorflow(verbose: bool) -> None:
    """Imports TensorFlow; unless `verbose`, without its log lines, library warnings and
    absl log lines.

    TensorFlow reads TF_CPP_MIN_LOG_LEVEL once, when it loads: 3 keeps its C++ log to
    FATAL, which drops the oneDNN and CPU-feature notices and, on a machine without a GPU,
    cuInit's "E0000 ... failed call to cuInit: ... UNKNOWN ERROR (303)". Two lines come
    before that setting applies ("Could not find cuda drivers" from cudart_stub, each
    after absl's "All log messages before absl::InitializeLog() ..."), written by C++
    code straight to file descriptor 2 while TensorFlow's libraries load: the import
    runs with that descriptor on /dev/null. Errors still reach the user: TensorFlow
    raises them as Python exceptions, which `main` prints as one line.
    """
    if verbose:
        import tensorflow  # noqa: F401
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.simplefilter("ignore")
    # Libraries that warn through the root logger (Apache Beam's start-up notes); our own
    # notes have a handler of their own (`run`).
    logging.getLogger().setLevel(logging.ERROR)
    if "tensorflow" not in sys.modules:
        with _stderr_to_devnull():
            import tensorflow  # noqa: F401
    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
    absl_logging.set_verbosity(absl_logging.ERROR)


@contextlib.contextmanager
def _stderr_to_devnull():
    """File descriptor 2 on /dev/null for the duration (Python's sys.stderr included)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def require(fv: flags.FlagValues, command: str, names: tuple[str, ...], example: str) -> None:
    """Raises UsageError naming the flags among `names` that were not given."""
    missing = [f"--{name}" for name in names if fv[name].value is None]
    if missing:
        word = "" if command == "export" else f"{command} "
        raise UsageError(f"{command} needs {', '.join(missing)}, e.g. {PROG} {word}{example}")


def run() -> None:
    """The console entry point (`hub-export`, `python -m hub_export`)."""
    # Our own notes (e.g. "n_characters 261 read as 262") go to stderr; TensorFlow's
    # INFO chatter about saving does not.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("note: %(message)s"))
    ours = logging.getLogger("hub_export")
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    sys.exit(main(sys.argv[1:]))
