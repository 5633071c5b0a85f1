"""GGUF files (what llama.cpp and Ollama users have) as a start: `model.init_from=model.gguf`.

transformers reads them itself (`from_pretrained(folder, gguf_file=name)`, through the `gguf`
package): the config and the tokenizer, with its chat template, come from the file's metadata, and
the weights are dequantized to float32. The model it returns is marked as quantized and refuses
`save_pretrained`, so it is rebuilt from its config here: a plain model, whose `final/` is a plain
safetensors checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textgen_cli.core.errors import UserError

GGUF_SUFFIX = ".gguf"


def gguf_file_of(path: Path) -> Path | None:
    """The GGUF file `path` names: the file itself, or the one `.gguf` in a folder without a
    config.json (a save_pretrained folder is read as one, whatever else it holds); None otherwise."""
    if path.is_file():
        return path if path.suffix.lower() == GGUF_SUFFIX else None
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    found = sorted(p for p in path.iterdir() if p.suffix.lower() == GGUF_SUFFIX and p.is_file())
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise UserError(f"checkpoint '{path}': {len(found)} GGUF files ({names}); expected one: name the file itself")
    return found[0] if found else None


def _reader(file: Path):
    from gguf import GGUFReader

    try:
        return GGUFReader(file)
    except Exception as exc:  # a damaged or foreign file: ValueError, struct errors, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint '{file}': not a readable GGUF file: {first}") from exc


def undequantizable_types(file: Path) -> dict[str, list[str]]:
    """The tensor types of `file` that the gguf package cannot dequantize (type name -> the tensors
    stored in it). transformers dequantizes with that package (its own kernels cover fewer types),
    so one small tensor of each type is tried: the package, not a list kept here, decides."""
    from gguf.quants import dequantize

    by_type: dict[Any, list[Any]] = {}
    for tensor in _reader(file).tensors:
        by_type.setdefault(tensor.tensor_type, []).append(tensor)
    unreadable: dict[str, list[str]] = {}
    for tensor_type, tensors in by_type.items():
        smallest = min(tensors, key=lambda tensor: tensor.n_bytes)
        try:
            dequantize(smallest.data, tensor_type)
        except NotImplementedError:
            unreadable[tensor_type.name] = [tensor.name for tensor in tensors]
    return unreadable


def check_dequantizable(file: Path) -> None:
    """A file with a tensor type that cannot be dequantized stops here, before minutes of loading."""
    unreadable = undequantizable_types(file)
    if unreadable:
        kinds = "; ".join(
            f"{name} ({names[0]}" + (f" and {len(names) - 1} more)" if len(names) > 1 else ")")
            for name, names in unreadable.items()
        )
        raise UserError(
            f"checkpoint '{file}': quantization type {kinds} cannot be read: transformers (through the gguf package) "
            "cannot dequantize it; convert the file to another type (e.g. Q8_0, Q4_K or F16 with llama.cpp's llama-quantize)"
        )


def plain_model(model, role):
    """The same weights in a model built from the config alone: transformers marks a model loaded
    from GGUF as quantized (its config carries a `quantization_config`) and then refuses to save it,
    although its weights are plain float32 tensors by now."""
    import copy

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    rebuilt = role.model_class().from_config(config, dtype=model.dtype)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    rebuilt.tie_weights()  # tied input and output embeddings share one tensor again
    return rebuilt.eval()
