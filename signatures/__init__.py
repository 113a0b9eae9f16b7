"""The public contract of an exported module: its signatures and their outputs.

The exporter, the tests and the generated module card all read it from here.
"""

from signatures import default, tokens
from signatures.outputs import OutputSpec, output_specs

# Signature name -> the module that defines its inputs and how they become tokens.
SIGNATURES = {default.NAME: default, tokens.NAME: tokens}


def signature_names() -> list[str]:
    """Every signature an export carries, aliases included."""
    names = []
    for module in SIGNATURES.values():
        names += [module.NAME, *module.ALIASES]
    return names


__all__ = ["SIGNATURES", "OutputSpec", "output_specs", "signature_names", "default", "tokens"]
