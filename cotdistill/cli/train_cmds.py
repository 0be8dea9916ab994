"""`cotdistill train` and `cotdistill eval`: parse flags (+ optional YAML), call the library, print a line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from cotdistill.cli.app import DataDir, app
from cotdistill.errors import CotdistillError

ConfigFile = Annotated[
    Optional[Path], typer.Option("--config", help="YAML file with any of these options; flags given here win.")
]
Device = Annotated[Optional[str], typer.Option(help="auto (cuda if available), cpu, cuda, cuda:N.")]
Dtype = Annotated[Optional[str], typer.Option(help="auto (bf16 where the hardware runs it natively), bf16, fp32.")]
EvalDtype = Annotated[Optional[str], typer.Option("--dtype", help="auto (fp32 on CPU, docs/numerics.md; bf16 on GPUs that have it), bf16, fp32.")]


def build_config(model_cls: type, config_file: Path | None, flags: dict[str, Any]) -> Any:
    """YAML values overlaid by the flags that were given; unknown keys and bad values -> one-line error."""
    from pydantic import ValidationError

    from cotdistill.plan.spec import read_yaml_file

    values: dict[str, Any] = {}
    if config_file is not None:
        loaded = read_yaml_file(config_file, "--config") or {}
        if not isinstance(loaded, dict):
            raise CotdistillError(f"--config {config_file} must hold a mapping of option: value")
        values.update({str(k).replace("-", "_"): v for k, v in loaded.items()})
        if values.get("trust_remote_code") and not flags.get("trust_remote_code"):
            raise CotdistillError(f"--config {config_file}: trust_remote_code: true runs code from the model's "
                                  "repository; also pass --trust-remote-code to allow it")
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        return model_cls(**values)
    except ValidationError as e:
        # an unknown key first: it is often why a required one seems missing (a typo)
        err = sorted(e.errors(), key=lambda x: x["type"] != "extra_forbidden")[0]
        where = ".".join(str(x) for x in err["loc"]) or "?"
        source = f" in {config_file}" if config_file else ""
        raise CotdistillError(f"option {where}{source}: {err['msg']}") from None


@app.command("train")
def train_cmd(
    student: Annotated[Optional[str], typer.Option(help="HF id, local folder, .gguf, or smollm2-135m / gemma3-270m.")] = None,
    data: Annotated[Optional[str], typer.Option(help="Supervision name (svamp/chatgpt/level1) or JSONL of {question, rationale}.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder.")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Epochs (paper: 3).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate (paper: 5e-5).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Effective batch size (paper: 64).")] = None,
    grad_accum: Annotated[Optional[int], typer.Option(help="Gradient-accumulation steps.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Use only the first N examples.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed (paper: 100).")] = None,
    lora: Annotated[Optional[bool], typer.Option("--lora/--full", help="LoRA adapters instead of full fine-tuning.")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Longest prompt+response in tokens.")] = None,
    save_steps: Annotated[Optional[int], typer.Option(help="Checkpoint every N optimizer steps.")] = None,
    gradient_checkpointing: Annotated[Optional[bool], typer.Option("--gradient-checkpointing", help="Recompute activations in the backward: less memory, slower.")] = None,
    group_by_length: Annotated[Optional[bool], typer.Option("--group-by-length/--random-order", help="Length-grouped batches (default) or the plain random order.")] = None,
    padding_free: Annotated[Optional[bool], typer.Option("--padding-free/--padded", help="Pack each batch into one row (default on CUDA) or pad it (default on a CPU).")] = None,
    per_device_batch: Annotated[Optional[int], typer.Option(help="Examples per device per forward (default: 8 on a CPU, the most that fits on CUDA).")] = None,
    max_forward_tokens: Annotated[Optional[int], typer.Option(help="Most positions one forward of a padded batch holds; wider ones run as row slices (default: 512 on a CPU).")] = None,
    loss_kernel: Annotated[Optional[str], typer.Option(help="auto, chunked or liger (CUDA, extra [gpu]).")] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile", help="torch.compile the model.")] = None,
    resume: Annotated[Optional[bool], typer.Option("--resume", help="Continue an unfinished run from its last checkpoint.")] = None,
    overwrite: Annotated[Optional[bool], typer.Option("--overwrite", help="Replace a different run in --out.")] = None,
    trust_remote_code: Annotated[Optional[bool], typer.Option("--trust-remote-code", help="Allow hub model code.")] = None,
    quiet: Annotated[Optional[bool], typer.Option("--quiet", help="No progress bar.")] = None,
    device: Device = None,
    dtype: Dtype = None,
    config: ConfigFile = None,
    data_dir: DataDir = None,
) -> None:
    """Fine-tune a student on teacher rationales (full fine-tuning, paper's hyper-parameters by default)."""
    flags = {k: v for k, v in locals().items() if k != "config"}
    from cotdistill.train import TrainConfig, train

    cfg = build_config(TrainConfig, config, flags)
    r = train(cfg)
    if r.already_done:
        typer.echo(f"{cfg.out}: already trained with this config (final loss {r.final_loss}); nothing to do")
        return
    typer.echo(f"trained {r.n_examples} examples ({r.truncated} truncated, {r.dropped} dropped), {r.steps} steps, "
               f"final loss {r.final_loss:.4f}, {r.tokens_per_s:.0f} tokens/s, {r.seconds:.0f} s -> {cfg.out}")


@app.command("eval")
def eval_cmd(
    model: Annotated[Optional[str], typer.Option(help="Trained run folder, HF id/folder, .gguf, or alias; with --engine openai the served model name.")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="svamp, gsm8k, aqua, math, csqa, obqa, strategyqa.")] = None,
    split: Annotated[Optional[str], typer.Option(help="Split (default test).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N questions.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Questions per generation batch.")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Longest generation.")] = None,
    beams: Annotated[Optional[int], typer.Option(help="Beam search width (1 = greedy).")] = None,
    protocol: Annotated[Optional[str], typer.Option(help="How answers are read: lenient (default) or paper (only 'The answer is X').")] = None,
    decoding: Annotated[Optional[str], typer.Option(help="greedy (default) or paper (5 beams, the paper's stops, 640 tokens).")] = None,
    batching: Annotated[Optional[str], typer.Option(help="--engine hf: auto/pruned (our loop), continuous (transformers' continuous batching) or static (generate with a static KV cache, compiled on CUDA); the last two for GPUs.")] = None,
    overwrite: Annotated[Optional[bool], typer.Option("--overwrite", help="Replace a different evaluation in --out.")] = None,
    trust_remote_code: Annotated[Optional[bool], typer.Option("--trust-remote-code", help="Allow hub model code.")] = None,
    quiet: Annotated[Optional[bool], typer.Option("--quiet", help="No progress bar.")] = None,
    engine: Annotated[Optional[str], typer.Option(help="hf (load the model here, default) or openai (a model served at --base-url).")] = None,
    base_url: Annotated[Optional[str], typer.Option(help="--engine openai: the server, e.g. http://127.0.0.1:8000/v1.")] = None,
    api_key_env: Annotated[Optional[str], typer.Option(help="--engine openai: environment variable holding the API key (default OPENAI_API_KEY).")] = None,
    device: Device = None,
    dtype: EvalDtype = None,
    config: ConfigFile = None,
    data_dir: DataDir = None,
) -> None:
    """Evaluate a model on a benchmark: accuracy with a 95 % bootstrap interval.

    The model is loaded here (--engine hf), or asked through any OpenAI-compatible server that serves it
    (--engine openai --base-url URL --model NAME: vLLM, SGLang, llama.cpp, Ollama, `cotdistill serve`),
    with the same prompts, answer-stop rule and grading."""
    flags = {k: v for k, v in locals().items() if k != "config"}
    from cotdistill.evaluate import EvalConfig, evaluate

    cfg = build_config(EvalConfig, config, flags)
    s = evaluate(cfg)
    typer.echo(f"{cfg.dataset}/{cfg.split}: accuracy {s.accuracy:.3f} [{s.ci_low:.3f}, {s.ci_high:.3f}] on {s.n} "
               f"(protocol {s.protocol}, decoding {s.decoding}), "
               f"stopped {s.stopped_share:.0%}, mean {s.mean_output_tokens:.0f} tokens, {s.tokens_per_s:.1f} tokens/s -> {cfg.out}")
