"""`cotdistill teach` (a teacher writes verified rationales) and `cotdistill serve` (an OpenAI-compatible endpoint)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from cotdistill.cli.app import DataDir, app

EXIT_INCOMPLETE = 3  # the run finished but some requests failed after all retries


@app.command("teach")
def teach_cmd(
    dataset: Annotated[str, typer.Option(help="Benchmark (svamp, gsm8k, aqua, math, csqa, obqa, strategyqa) or a JSONL of {question, gold, kind}.")],
    teacher: Annotated[str, typer.Option(help="openai:MODEL (OpenAI-compatible endpoint) or hf:MODEL (local model or alias).")],
    level: Annotated[int, typer.Option(help="Granularity 1 (most condensed) .. 6 (every step).")],
    out: Annotated[Path, typer.Option(help="Supervision JSONL to write (plus <stem>.all.jsonl and <out>.provenance.json).")],
    format: Annotated[str, typer.Option("--format", help="cot, subquestions, rar or symbolic.")] = "cot",
    split: Annotated[str, typer.Option(help="Benchmark split.")] = "train",
    limit: Annotated[Optional[int], typer.Option(help="First N questions only.")] = None,
    samples: Annotated[int, typer.Option(help="Rationales per question (needs --temperature > 0 when > 1).")] = 1,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(help="Sampling seed; sample i uses seed + i.")] = None,
    max_tokens: Annotated[int, typer.Option(help="New-token limit per rationale.")] = 512,
    keep: Annotated[str, typer.Option(help="correct (verified only) or all.")] = "correct",
    reask: Annotated[int, typer.Option(help="Extra sampling rounds for questions with no correct rationale.")] = 0,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once (openai:).")] = 8,
    rpm: Annotated[Optional[float], typer.Option(help="Requests-per-minute limit (openai:).")] = None,
    timeout: Annotated[float, typer.Option(help="Per-request timeout in seconds (openai:).")] = 120.0,
    retries: Annotated[int, typer.Option(help="Retries per request after the first try (openai:).")] = 5,
    backoff: Annotated[float, typer.Option(help="First back-off delay in seconds, doubled per retry, jittered.")] = 1.0,
    batch_size: Annotated[int, typer.Option(help="Questions per local generate() batch (hf:).")] = 8,
    price_in: Annotated[Optional[float], typer.Option(help="Price per 1M prompt tokens (cost accounting).")] = None,
    price_out: Annotated[Optional[float], typer.Option(help="Price per 1M completion tokens.")] = None,
    cache: Annotated[Optional[Path], typer.Option(help="SQLite request cache file (default: teach.sqlite in the folder $COTDISTILL_CACHE, else ~/.cache/cotdistill).")] = None,
    base_url: Annotated[Optional[str], typer.Option(envvar="OPENAI_BASE_URL", show_envvar=True, help="OpenAI-compatible endpoint.")] = None,
    api_key: Annotated[Optional[str], typer.Option(help="API key (default: $OPENAI_API_KEY, preferred: flags show in process lists); never printed or written.", show_default=False)] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Have a teacher write a rationale per question at one granularity level and format; keep the verified ones."""
    from cotdistill.teach import make_config, teach

    cfg = make_config(
        dataset=dataset, teacher=teacher, level=level, format=format, out=out, split=split, limit=limit,
        samples=samples, temperature=temperature, top_p=top_p, seed=seed, max_tokens=max_tokens, keep=keep,
        reask=reask, concurrency=concurrency, rpm=rpm, timeout=timeout, retries=retries, backoff=backoff,
        batch_size=batch_size, price_in=price_in, price_out=price_out, cache=cache, base_url=base_url,
        api_key=api_key, data_dir=data_dir, progress=not no_progress,
    )
    result = teach(cfg)
    print(f"{result.out}: {result.summary}")
    if result.failures:
        print(
            f"warning: {len(result.failures)} requests failed after all retries (first: {result.failures[0]}); "
            f"they are listed in {result.all_out}; re-run the same command to retry only those",
            file=sys.stderr,
        )
        sys.exit(EXIT_INCOMPLETE)  # SystemExit: main() passes it through (a typer.Exit code would be dropped)


@app.command("serve")
def serve_cmd(
    model: Annotated[str, typer.Option(help="Student or distilled model: alias, local folder, .gguf or HF id.")],
    port: Annotated[int, typer.Option(help="TCP port 1-65535 (0 = any free port; the URL is printed when ready).")] = 8000,
    host: Annotated[str, typer.Option(help="Address to listen on (beyond loopback, set --api-key).")] = "127.0.0.1",
    name: Annotated[Optional[str], typer.Option(help="Model name clients ask for (default: --model as given).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Default new-token limit when a request sets none (<= the model's context).")] = 256,
    max_batch: Annotated[int, typer.Option(help="Rows (requests x n) generated together at most.")] = 32,
    batch_wait_ms: Annotated[float, typer.Option(help="How long to collect concurrent requests into one batch.")] = 10.0,
    max_queue: Annotated[int, typer.Option(help="Requests waiting for a batch at most; more get 503 + Retry-After.")] = 256,
    max_body_bytes: Annotated[int, typer.Option(help="Larger request bodies get 413 unread.")] = 1_000_000,
    max_connections: Annotated[int, typer.Option(help="Open connections at most; more get 503.")] = 1000,
    api_key: Annotated[Optional[str], typer.Option(envvar="COTDISTILL_API_KEY", show_envvar=True, show_default=False,
                                                   help="Key clients must send as 'Authorization: Bearer KEY'.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No per-request log lines.")] = False,
) -> None:
    """Serve a model over the OpenAI chat-completions protocol (POST /v1/chat/completions, GET /v1/models, GET /health)."""
    from cotdistill.serve import make_serve_config, serve

    serve(make_serve_config(model=model, port=port, host=host, name=name, max_tokens=max_tokens, max_batch=max_batch,
                            batch_wait_ms=batch_wait_ms, max_queue=max_queue, max_body_bytes=max_body_bytes,
                            max_connections=max_connections, api_key=api_key, quiet=quiet))
