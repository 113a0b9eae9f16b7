"""The module card (README.md) and manifest.json written into every version."""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json

import tensorflow as tf

import signatures
from hub_export.export.elmo_module import KERAS_ENDPOINTS, ElmoModule, ExportConfig
from hub_export.model.options import BiLMOptions


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def manifest(name: str, version: int, options: BiLMOptions, config: ExportConfig,
             source: dict, module: ElmoModule) -> dict:
    """Everything the card says, as data."""
    trainable = module.module_trainable_variables
    signature_table = []
    for sig in signatures.SIGNATURES.values():
        signature_table.append({
            "name": sig.NAME,
            "aliases": list(sig.ALIASES),
            "inputs": {k: {"dtype": s.dtype.name, "shape": [d for d in s.shape.as_list()]}
                       for k, s in sig.INPUT_SPECS.items()},
            "doc": sig.DOC,
        })
    return {
        "name": name,
        "version": version,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "options": options.to_dict(),
        "export_flags": dataclasses.asdict(config),
        "signatures": signature_table,
        "outputs": [{"name": o.name, "dtype": o.dtype.name, "shape": o.shape_text(), "doc": o.doc}
                    for o in module.output_specs],
        "keras_endpoints": sorted(KERAS_ENDPOINTS),
        "trainable_variables": [{"name": v.name, "shape": v.shape.as_list()} for v in trainable],
        "trainable_scalars": int(sum(v.shape.num_elements() for v in trainable)),
        "versions": {"hub_export": _version("hub_export"), "tensorflow": tf.__version__},
    }


def render(m: dict) -> str:
    """The module card, in Markdown."""
    o = m["options"]
    lines = [f"# {m['name']} version {m['version']}", ""]
    if m["source"].get("recipe"):
        lines += ["This is hub_export's built-in default model: a small biLM (about 5 MB of "
                  "weights) trained by hub_export's own trainer on the State of the Union "
                  "addresses, so that a fresh checkout exports something meaningful. It is far "
                  "smaller and trained on far less text than the original ELMo: use it to try "
                  "the pipeline and for light English tasks, and export a larger model with "
                  "`--options/--weights` for real work. How it was made is under Recipe.", ""]
    lines += [
        "ELMo deep contextualized word representations (Peters et al., 2018), as a TF2 "
        "SavedModel made by hub_export from an options.json + weights.hdf5 biLM. It computes "
        "a character CNN token representation, a {}-layer biLSTM in each direction, and "
        "`elmo`, a learned mix of the layers. The module is stateless: a sentence's outputs "
        "do not depend on the rest of the batch.".format(o["lstm"]["n_layers"]),
        "",
        "```python",
        "import tensorflow as tf",
        "import tensorflow_hub as hub",
        "elmo = hub.load(PATH)",
        'out = elmo.signatures["default"](default=tf.constant(["the cat sat"]))',
        'out = elmo(tf.constant(["the cat sat"]))  # reusable SavedModel, fine-tunable',
        "```",
        "",
        "## Signatures",
        "",
        "| signature | inputs |",
        "| --- | --- |",
    ]
    for sig in m["signatures"]:
        names = ", ".join(f"`{n}`" for n in [sig["name"], *sig["aliases"]])
        lines.append(f"| {names} | {sig['doc']} |")
    lines += ["", "Every signature, `__call__` and the Keras endpoints "
              f"({', '.join('`' + e + '`' for e in m['keras_endpoints'])}) return:", "",
              "| output | dtype | shape | what |", "| --- | --- | --- | --- |"]
    for out in m["outputs"]:
        lines.append(f"| `{out['name']}` | {out['dtype']} | {out['shape']} | {out['doc']} |")
    flags = m["export_flags"]
    lines += [
        "", "Positions past a sentence's length are 0 in every per-token output.",
        "",
        "## Fine-tuning",
        "",
        f"{m['trainable_scalars']} trainable values: "
        + ", ".join(f"`{v['name']}` {v['shape']}" for v in m["trainable_variables"][:6])
        + (" ..." if len(m["trainable_variables"]) > 6 else "")
        + "; everything else is frozen.",
        f"Dropout on `elmo` when training: {flags['dropout']}. "
        f"L2 coefficient on the mix weights: {flags['l2_coef']}. "
        f"Layer norm before mixing: {flags['layer_norm']} (per sentence). "
        + (f"`elmo` and `default` are projected to {flags['projection_dim']} by a trainable "
           "`output_projection`." if flags["projection_dim"] else ""),
        "",
        "## Source",
        "",
        f"- model: {m['source']['model']}",
        f"- weights sha256: `{m['source']['weights_sha256']}`",
        *([f"- token cache: {m['source']['token_cache']['size']} words from "
           f"`{m['source']['token_cache']['vocab']}` (sha256 "
           f"`{m['source']['token_cache']['vocab_sha256']}`): their token representations are "
           "looked up, other tokens go through the char CNN; the outputs are the same"]
          if m["source"].get("token_cache") else []),
        f"- export flags: `{flags}`",
        f"- hub_export {m['versions']['hub_export']}, TensorFlow {m['versions']['tensorflow']}, "
        f"exported {m['created']}",
        "",
        *(_recipe_lines(m["source"]["recipe"]) if m["source"].get("recipe") else []),
        "## Options",
        "",
        "```json",
    ]
    lines += [json.dumps(o, indent=2), "```", ""]
    return "\n".join(lines)


def _recipe_lines(r: dict) -> list[str]:
    """The built-in model's recipe (its recipe.json) as a card section."""
    corpus, result = r["corpus"], r["result"]
    return [
        "## Recipe",
        "",
        f"- corpus: {corpus['description']}; package `{corpus['package']}` from the npm "
        f"registry, fetched at build time only ({corpus['fetch']}); {corpus['license']}",
        f"- preprocessing: {r['preprocessing']}",
        f"- split: {corpus['split']}; {corpus['train_tokens']:,} training words, "
        f"{corpus['held_out_tokens']:,} held-out words, vocabulary {corpus['vocab_size']:,}",
        "- commands:",
        "",
        "```bash",
        *r["commands"],
        "```",
        "",
        f"- seed {r['seed']}; {result['steps']:,} steps ({result['epochs']} epochs) in "
        f"{result['training_minutes']:.0f} minutes on {result['machine']}",
        f"- held-out perplexity (mean of the forward and backward LMs, full softmax): "
        f"**{result['held_out_perplexity']:.1f}**; a unigram model of the same vocabulary: "
        f"{result['unigram_perplexity']:.1f}",
        "",
    ]
