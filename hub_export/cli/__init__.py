"""`python -m hub_export [COMMAND] [--flag value ...]`: one absl flag set per command.

The main job takes no command word (`python -m hub_export --version 3`); the other
commands are named first (`python -m hub_export embed --module ...`). Each command's
module under `hub_export/cli/` defines its flags (`define`) on a `flags.FlagValues` of
its own, so `<command> --help` lists only that command's flags, with its own defaults,
and a flag means one thing within a command. Flags are spelt with dashes, as the README
writes them (`--batch-size`); the underscore spelling and `--no-<flag>` for a boolean
are accepted too.

Exit status: 0 done, 1 a usage error (a flag's form, a missing or unknown flag or
command), 2 bad input (a file, key or value that is wrong; an output the OS refused),
130 interrupted.
"""

from __future__ import annotations

import logging
import re
import sys
import textwrap
from types import ModuleType

from absl import flags

from hub_export.errors import HubExportError

PROG = "python -m hub_export"


class UsageError(Exception):
    """A command line that does not say what to do: a flag's form, a missing flag."""


def _commands() -> dict[str, ModuleType]:
    from hub_export.cli import (dump_token_embeddings, dump_weights, embed, evaluate, export,
                                serving_config, train)

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
    fv = flags.FlagValues()
    module.define(fv)
    if "quiet" not in fv:  # every command takes it, so that scripts can pass it to any
        flags.DEFINE_bool("quiet", False, "Print nothing but the result (this command shows "
                          "no progress anyway).", flag_values=fv)
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
        return module.main(fv)
    except UsageError as e:
        return _usage(str(e), name)
    except HubExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


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
