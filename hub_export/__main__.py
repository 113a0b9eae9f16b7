"""`python -m hub_export`: see `hub_export.cli` (one module per command).

    python -m hub_export --version 3                 export the built-in default model
    python -m hub_export --help                      the commands, one line each
    python -m hub_export COMMAND --help              a command's flags
"""

from hub_export.cli import run

if __name__ == "__main__":
    run()
