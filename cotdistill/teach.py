"""The teacher: write a rationale for each training question, verify it, keep the correct ones.

Flow: load questions (a benchmark or the user's own JSONL) -> render the prompt of the chosen
granularity level and format (cotdistill/prompts/) -> one request per (question, sample), each
looked up in the SQLite cache first -> ask the teacher for the rest (`openai:` an OpenAI-compatible
endpoint through the official async client, or `hf:` a local model) -> grade every rationale
against the gold answer -> write the supervision JSONL, every verdict (`<out stem>.all.jsonl`) and
provenance, atomically at the end.

Durability comes from the cache: each response is committed as it arrives, so an interrupted run
re-run with the same arguments sends only the requests that never got an answer.
"""

import asyncio
import json
import os
import random
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from hashlib import sha256
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from cotdistill.benchmarks import DATASETS, Example
from cotdistill.benchmarks._files import iter_json_lines, read_text
from cotdistill.checks import check_out_file, check_url, url_secrets
from cotdistill.cache import ResponseCache, canonical_json, default_cache_path, request_key
from cotdistill.errors import CotdistillError
from cotdistill.prompts import TeacherPrompt, check_level_format, teacher_prompt
from cotdistill.provenance import atomic_write_text, write_provenance

DEFAULT_BASE_URL = "https://api.openai.com/v1"
KINDS = ("number", "choice", "boolean", "math")


class TeachConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="benchmark name (svamp, gsm8k, ...) or a JSONL file of {question, gold, kind[, id, choices]}")
    teacher: str = Field(description="openai:MODEL (OpenAI-compatible endpoint) or hf:MODEL (local model; alias, folder, .gguf)")
    level: int = Field(ge=1, le=6, description="granularity: 1 = most condensed ... 6 = every step")
    format: str = Field(default="cot", description="rationale format: cot, subquestions, rar, symbolic")
    out: Path = Field(description="the supervision JSONL to write")
    split: str = Field(default="train", description="benchmark split")
    limit: int | None = Field(default=None, ge=1, description="first N questions only")
    samples: int = Field(default=1, ge=1, description="rationales per question")
    temperature: float = Field(default=0.0, ge=0, le=2, description="sampling temperature (0 = greedy)")
    top_p: float = Field(default=1.0, gt=0, le=1, description="nucleus sampling mass")
    seed: int | None = Field(default=None, description="sampling seed (sample i uses seed + i)")
    max_tokens: int = Field(default=512, ge=1, description="new-token limit per rationale")
    keep: Literal["correct", "all"] = Field(default="correct", description="which samples go into the output")
    reask: int = Field(default=0, ge=0, description="extra samples, one round each, for questions with no correct one")
    concurrency: int = Field(default=8, ge=1, description="requests in flight at once (openai:)")
    rpm: float | None = Field(default=None, gt=0, description="requests-per-minute limit (openai:)")
    timeout: float = Field(default=120.0, gt=0, description="per-request timeout in seconds (openai:)")
    retries: int = Field(default=5, ge=0, description="retries per request after the first try (openai:)")
    backoff: float = Field(default=1.0, ge=0, description="first back-off delay in seconds; doubles per retry, with jitter")
    max_backoff: float = Field(default=60.0, ge=0, description="longest wait between tries (also caps Retry-After)")
    stop_after_failures: int = Field(default=10, ge=1, description="stop the run after this many requests in a row failed")
    batch_size: int = Field(default=8, ge=1, description="questions per generate() batch (hf:)")
    price_in: float | None = Field(default=None, ge=0, description="price per 1M prompt tokens, for cost accounting")
    price_out: float | None = Field(default=None, ge=0, description="price per 1M completion tokens")
    cache: Path | None = Field(default=None, description="SQLite cache file (default: teach.sqlite in the folder $COTDISTILL_CACHE, else ~/.cache/cotdistill)")
    base_url: str | None = Field(default=None, description="endpoint (default $OPENAI_BASE_URL, then api.openai.com)")
    api_key: SecretStr | None = Field(default=None, exclude=True, description="API key (default $OPENAI_API_KEY); never written")
    data_dir: Path | None = Field(default=None, description="data directory")
    progress: bool = Field(default=True, description="show a progress bar on stderr")
    allow_partial: bool = Field(default=False, description="in a study: a run whose requests failed after all retries "
                                "still counts as done; the shortfall is recorded in results and report (default: the cell fails)")


def make_config(**kwargs: Any) -> TeachConfig:
    """TeachConfig from keyword arguments; a bad value becomes one CotdistillError line."""
    try:
        return TeachConfig(**kwargs)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise CotdistillError(f"teach option --{where.replace('_', '-')}: {err['msg']}") from None


# ----------------------------------------------------------------------------- questions


def load_questions(cfg: TeachConfig) -> list[Example]:
    """The questions to teach, each with a gold answer (verification needs one)."""
    path = Path(cfg.dataset).expanduser()
    if path.suffix == ".jsonl" or path.is_file():
        questions = _question_file(path, cfg.limit)
    else:
        from cotdistill.benchmarks import load_benchmark

        examples = load_benchmark(cfg.dataset, cfg.split, cfg.data_dir, cfg.limit)
        questions = examples
        for q in questions:
            if not str(q.gold or "").strip():
                raise CotdistillError(f"dataset {cfg.dataset}/{cfg.split} question {q.id} has no gold answer to verify against")
    if not questions:
        raise CotdistillError(f"dataset {cfg.dataset} ({cfg.split}) has no questions")
    return questions


def _question_file(path: Path, limit: int | None) -> list[Example]:
    if not path.is_file():
        raise CotdistillError(f"question file {path} does not exist")
    out: list[Example] = []
    for n, row in iter_json_lines(read_text(path), str(path)):
        if not str(row.get("question") or "").strip():
            raise CotdistillError(f"{path}:{n}: needs a non-empty 'question'")
        gold = row.get("gold", row.get("answer"))
        if gold is None or not str(gold).strip():
            raise CotdistillError(f"{path}:{n}: no gold answer ('gold'); teach verifies every rationale against it")
        kind = row.get("kind")
        if kind not in KINDS:
            raise CotdistillError(f"{path}:{n}: 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
        choices = row.get("choices")
        if choices is not None and not (isinstance(choices, dict) and all(
                isinstance(k, str) and isinstance(v, (str, int, float)) for k, v in choices.items())):
            raise CotdistillError(f"{path}:{n}: 'choices' must be an object {{letter: option text}}, got {choices!r:.60}")
        choices = {k: str(v) for k, v in choices.items()} if choices else None
        out.append(Example(str(row.get("id", f"{path.stem}/{n}")), path.stem, str(row["question"]), str(gold), kind, choices))
        if limit and len(out) >= limit:
            break
    return out


# ----------------------------------------------------------------------------- teachers


@dataclass(frozen=True)
class Teacher:
    kind: Literal["openai", "hf"]
    model: str
    endpoint: str  # sanitised base URL (no credentials, no query) or "local"
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.model}"


def _sanitise_url(url: str) -> str:
    """The endpoint as recorded and shown: no credentials, no query string."""
    parts = urlsplit(check_url(url, "--base-url", allow_credentials=True))
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return f"{parts.scheme}://{host}{parts.path.rstrip('/')}"


def resolve_teacher(cfg: TeachConfig) -> Teacher:
    kind, sep, model = cfg.teacher.partition(":")
    if not sep or not model or kind not in ("openai", "hf"):
        raise CotdistillError(f"teacher {cfg.teacher!r} must be openai:MODEL or hf:MODEL")
    if kind == "hf":
        return Teacher("hf", model, "local")
    key = cfg.api_key.get_secret_value() if cfg.api_key else os.environ.get("OPENAI_API_KEY", "")
    if not key.strip():
        raise CotdistillError(
            "no API key for teacher {}: set OPENAI_API_KEY or --api-key (any non-empty value for a local server)".format(cfg.teacher)
        )
    base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    return Teacher("openai", model, _sanitise_url(base_url), base_url, key)


def redact(text: str, secret: str | None) -> str:
    """`text` with every occurrence of the API key and of any credentials in the base URL replaced
    (servers sometimes echo them back)."""
    for s in [secret, *url_secrets(os.environ.get("OPENAI_BASE_URL")), *_URL_SECRETS]:
        if s:
            text = text.replace(s, "***")
    return text


_URL_SECRETS: list[str] = []  # credentials of the --base-url in use (teach() fills it)


# ----------------------------------------------------------------------------- jobs


@dataclass
class Job:
    question: Example
    sample: int
    messages: list[dict[str, str]]
    request: dict[str, Any]  # what the cache key is made of
    key: str
    response: dict[str, Any] | None = None  # {"content", "finish_reason", "usage"}
    cached: bool = False
    error: str | None = None


def _params(cfg: TeachConfig, sample: int) -> dict[str, Any]:
    return {
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "max_tokens": cfg.max_tokens,
        "seed": None if cfg.seed is None else cfg.seed + sample,
    }


def make_job(cfg: TeachConfig, teacher: Teacher, prompt: TeacherPrompt, q: Example, sample: int) -> Job:
    messages = [{"role": "user", "content": prompt.render(q.question)}]
    request = {
        "teacher": teacher.kind,
        "endpoint": teacher.endpoint,
        "model": teacher.model,
        "messages": messages,
        "params": _params(cfg, sample),
        "sample": sample,
    }
    return Job(q, sample, messages, request, request_key(request))


@dataclass
class Counts:
    requests_sent: int = 0  # HTTP attempts (retries included) or local generations
    answered: int = 0  # new responses this run
    cached: int = 0  # responses taken from the cache
    failed: int = 0
    retried: int = 0
    kept: int = 0
    rejected: int = 0
    new_prompt_tokens: int = 0
    new_completion_tokens: int = 0
    prompt_tokens: int = 0  # over all responses used, cached included
    completion_tokens: int = 0
    consecutive_failures: int = 0


# ----------------------------------------------------------------------------- openai: teacher


class RateLimiter:
    """Spaces request starts at least 60/rpm seconds apart (across all concurrent tasks)."""

    def __init__(self, rpm: float | None):
        self.interval = 60.0 / rpm if rpm else 0.0
        self.next_at = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self.lock:
            now = time.monotonic()
            start = max(now, self.next_at)
            self.next_at = start + self.interval
        await asyncio.sleep(start - now)


class RequestFailed(Exception):
    """A request that will not succeed by retrying (or ran out of tries); recorded, the run goes on."""


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential back-off with jitter: base * 2^attempt, capped, times a factor in [0.5, 1)."""
    return min(cap, base * 2**attempt) * (0.5 + random.random() / 2)


def retry_after(headers: Any, cap: float) -> float | None:
    """Seconds the server asked us to wait (Retry-After-Ms, Retry-After seconds or HTTP date)."""
    if headers is None:
        return None
    try:
        if headers.get("retry-after-ms"):
            return min(cap, max(0.0, float(headers["retry-after-ms"]) / 1000))
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return min(cap, max(0.0, float(value)))
        except ValueError:
            return min(cap, max(0.0, parsedate_to_datetime(value).timestamp() - time.time()))
    except (TypeError, ValueError):
        return None


def parse_completion(resp: Any) -> dict[str, Any]:
    """The parts of a chat completion we keep; ValueError if the response is not a usable one."""
    from openai.types.chat import ChatCompletion

    if not isinstance(resp, ChatCompletion):
        raise ValueError(f"response is not a chat completion ({type(resp).__name__})")
    choices = getattr(resp, "choices", None)
    if not choices or not isinstance(getattr(choices[0].message, "content", None), str):
        raise ValueError("response has no message content")
    if not choices[0].message.content.strip():  # retried like a fault (a rejected empty answer would be cached)
        raise ValueError("empty completion")
    usage = getattr(resp, "usage", None)
    return {
        "content": choices[0].message.content,
        "finish_reason": choices[0].finish_reason,
        "usage": {
            "prompt_tokens": int(getattr(usage, "prompt_tokens", 0) or 0),
            "completion_tokens": int(getattr(usage, "completion_tokens", 0) or 0),
        },
    }


async def call_with_retries(
    call: Callable[[], Awaitable[Any]], cfg: TeachConfig, counts: Counts, limiter: RateLimiter, key: str | None
) -> Any:
    """Run `call` until it succeeds: retry 429 (honouring Retry-After), 5xx, timeouts, dropped
    connections and malformed responses with exponential back-off; raise RequestFailed when a retry
    cannot help or the tries run out, CotdistillError when the whole run cannot go on (401/403/404)."""
    import openai

    last = "no attempt"
    for attempt in range(cfg.retries + 1):
        await limiter.wait()
        counts.requests_sent += 1
        wait: float | None = None
        try:
            return await call()
        except openai.RateLimitError as e:
            last, wait = "HTTP 429 rate limited", retry_after(e.response.headers, cfg.max_backoff)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise CotdistillError(f"teacher rejected the API key (HTTP {e.status_code}); check --api-key / OPENAI_API_KEY") from None
        except openai.NotFoundError as e:
            raise CotdistillError(f"teacher endpoint answered HTTP 404: {redact(_message(e), key)}") from None
        except openai.APIStatusError as e:
            last = f"HTTP {e.status_code}: {redact(_message(e), key)}"
            if e.status_code < 500 and e.status_code not in (408, 409):
                raise RequestFailed(last) from None  # a bad request stays bad
        except openai.APITimeoutError:
            last = f"no answer within the {cfg.timeout:g} s timeout"
        except openai.APIConnectionError as e:
            last = f"connection failed ({type(e.__cause__ or e).__name__})"
        except (ValueError, openai.APIResponseValidationError) as e:  # JSONDecodeError is a ValueError
            last = f"malformed response: {redact(str(e), key)[:200]}"
        if attempt < cfg.retries:
            counts.retried += 1
            await asyncio.sleep(wait if wait is not None else backoff_delay(attempt, cfg.backoff, cfg.max_backoff))
    raise RequestFailed(f"gave up after {cfg.retries + 1} tries: {last}")


def _message(e: Any) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
    return str(getattr(e, "message", e))[:300]


def _client(teacher: Teacher, timeout: float) -> Any:
    from openai import AsyncOpenAI

    # max_retries=0: retries, back-off and Retry-After are ours (call_with_retries), so they are counted.
    return AsyncOpenAI(api_key=teacher.api_key, base_url=teacher.base_url, max_retries=0, timeout=timeout)


async def preflight(teacher: Teacher, cfg: TeachConfig) -> None:
    """Before any paid request: the endpoint answers, accepts the key and knows the model."""
    import openai

    client = _client(teacher, min(cfg.timeout, 30.0))  # listing models is quick; don't hang on a dead host
    try:
        models = await client.models.list()
        ids = [m.id for m in models.data]
    except openai.APIConnectionError as e:
        raise CotdistillError(
            f"cannot reach teacher endpoint {teacher.endpoint} ({type(e.__cause__ or e).__name__}); check --base-url / OPENAI_BASE_URL"
        ) from None
    except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
        raise CotdistillError(
            f"teacher endpoint {teacher.endpoint} rejected the API key (HTTP {e.status_code}); check --api-key / OPENAI_API_KEY"
        ) from None
    except openai.NotFoundError:
        print(f"warning: {teacher.endpoint} has no /models list; cannot check model {teacher.model!r} first", file=sys.stderr)
        return
    except openai.APIStatusError as e:
        raise CotdistillError(f"teacher endpoint {teacher.endpoint} answered HTTP {e.status_code} to /models: {redact(_message(e), teacher.api_key)}") from None
    except ValueError as e:
        raise CotdistillError(f"teacher endpoint {teacher.endpoint} sent a malformed /models answer ({e})") from None
    finally:
        await client.close()
    known = set(ids) | {i.removeprefix("models/") for i in ids}  # Gemini lists "models/NAME"
    if teacher.model not in known:
        shown = ", ".join(sorted(ids)[:10]) or "none"
        raise CotdistillError(f"teacher model {teacher.model!r} is not served at {teacher.endpoint}; it has: {shown}")


async def run_openai(jobs: list[Job], teacher: Teacher, cfg: TeachConfig, cache: ResponseCache, counts: Counts, bar: Any) -> None:
    """Ask for every job concurrently (bounded), committing each answer to the cache on arrival."""
    client = _client(teacher, cfg.timeout)
    sem = asyncio.Semaphore(cfg.concurrency)
    limiter = RateLimiter(cfg.rpm)
    stop: list[CotdistillError] = []

    async def one(job: Job) -> None:
        async with sem:
            if stop:
                return
            params = {k: v for k, v in job.request["params"].items() if v is not None}
            call = lambda: _create(client, teacher.model, job.messages, params, cfg.timeout)  # noqa: E731
            try:
                job.response = await call_with_retries(call, cfg, counts, limiter, teacher.api_key)
            except RequestFailed as e:
                job.error = str(e)
                counts.failed += 1
                counts.consecutive_failures += 1
                if counts.consecutive_failures >= cfg.stop_after_failures and not stop:
                    stop.append(CotdistillError(
                        f"stopped: {counts.consecutive_failures} teacher requests in a row failed (last: {e}); "
                        "every answered request is cached, re-run the same command to resume"
                    ))
            except CotdistillError as e:
                stop.append(e)
            else:
                cache.put(job.key, job.request, job.response)
                counts.answered += 1
                counts.consecutive_failures = 0
            bar.set_postfix(failed=counts.failed, retries=counts.retried, refresh=False)
            bar.update(1)

    try:
        await asyncio.gather(*(one(j) for j in jobs))
    finally:
        await client.close()
    if stop:
        raise stop[0]


async def _create(client: Any, model: str, messages: list, params: dict, timeout: float) -> dict[str, Any]:
    resp = await client.chat.completions.create(model=model, messages=messages, timeout=timeout, **params)
    return parse_completion(resp)


# ----------------------------------------------------------------------------- hf: teacher


def run_hf(jobs: list[Job], teacher: Teacher, cfg: TeachConfig, cache: ResponseCache, counts: Counts, bar: Any) -> None:
    """Generate locally (the hf engine), one call per sample index; each answer is cached as it arrives.
    Generation stops once the answer is stated: what follows would be trimmed away."""
    from cotdistill.engines import Completion, Request, make_engine

    engine = make_engine("hf", teacher.model, batch_size=cfg.batch_size)
    by_sample: dict[int, list[Job]] = {}
    for job in jobs:
        by_sample.setdefault(job.sample, []).append(job)
    try:
        for sample, group in sorted(by_sample.items()):
            seed = _params(cfg, sample)["seed"]

            def record(i: int, c: Completion, group: list[Job] = group) -> None:
                job = group[i]
                usage = {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens}
                job.response = {"content": c.text, "finish_reason": c.finish_reason, "usage": usage}
                cache.put(job.key, job.request, job.response)
                counts.requests_sent += 1
                counts.answered += 1
                bar.update(1)

            engine.generate([Request(j.messages) for j in group], max_new_tokens=cfg.max_tokens,
                            temperature=cfg.temperature, top_p=cfg.top_p,
                            seed=seed if seed is not None else (sample if cfg.temperature > 0 else None), on_result=record)
    finally:
        engine.close()


# ----------------------------------------------------------------------------- verification

_ANSWER_SENTENCE = re.compile(r"the\s*answer\s*is\b[^\n]*", re.I)


def trim_rationale(text: str) -> str:
    """The rationale up to the end of its first "The answer is X" sentence (small teachers ramble on)."""
    text = text.strip()
    m = _ANSWER_SENTENCE.search(text)
    if not m:
        return text
    end = re.search(r"\.(?=\s|$)", m.group(0))  # a full stop, not a decimal point
    return text[: m.start() + (end.end() if end else len(m.group(0)))].strip()


def verdict(job: Job) -> dict[str, Any]:
    """Grade one answered job: correct only if it states "The answer is X" and X matches the gold."""
    from cotdistill.grade import grade, states_answer

    q = job.question
    rationale = trim_rationale(job.response["content"])
    g = grade(rationale, q.gold, q.kind, q.choices)
    if not states_answer(rationale):
        return {"rationale": rationale, "extracted": g.extracted, "correct": False, "reason": "no 'The answer is X' sentence"}
    return {"rationale": rationale, "extracted": g.extracted, "correct": bool(g.correct), "reason": g.reason}


# ----------------------------------------------------------------------------- the run


@dataclass
class TeachResult:
    out: Path
    all_out: Path
    counts: Counts
    cost: float | None
    new_cost: float | None
    failures: list[str]

    @property
    def summary(self) -> str:
        c = self.counts
        cost = f", cost {self.new_cost:.4f} (all {self.cost:.4f})" if self.cost is not None else ""
        return (
            f"{c.kept} kept, {c.rejected} rejected, {c.failed} failed; requests: {c.answered} new, {c.cached} cached, "
            f"{c.requests_sent} sent ({c.retried} retries); new tokens {c.new_prompt_tokens} in / {c.new_completion_tokens} out{cost}"
        )


def all_path(out: Path) -> Path:
    return out.with_name(out.stem + ".all.jsonl")


def provenance_path(out: Path) -> Path:
    return out.with_name(out.name + ".provenance.json")


def teach(cfg: TeachConfig) -> TeachResult:
    """Run the teacher over the dataset; see the module docstring."""
    check_level_format(cfg.level, cfg.format)
    if cfg.samples > 1 and cfg.temperature == 0:
        raise CotdistillError("--samples > 1 needs --temperature > 0 (a greedy teacher writes the same rationale K times)")
    if cfg.reask and cfg.temperature == 0:
        raise CotdistillError("--reask needs --temperature > 0 (a greedy teacher repeats its wrong answer)")
    out = Path(cfg.out)
    if out.suffix != ".jsonl":
        raise CotdistillError(f"--out {out} must end in .jsonl")
    for path in (out, all_path(out), provenance_path(out)):
        check_out_file(path)
        if Path(cfg.dataset).exists() and path.resolve() == Path(cfg.dataset).resolve():
            raise CotdistillError(f"--out {out} would overwrite the question file {cfg.dataset}")
    teacher = resolve_teacher(cfg)
    _URL_SECRETS[:] = url_secrets(teacher.base_url)
    questions = load_questions(cfg)
    cache_path = Path(cfg.cache).expanduser() if cfg.cache else default_cache_path()
    if cfg.cache:
        check_out_file(cache_path, "--cache")
    dataset = cfg.dataset if cfg.dataset in DATASETS else None  # a question file: the kind's default dataset
    prompts = {k: teacher_prompt(k, cfg.level, cfg.format, dataset) for k in {q.kind for q in questions}}
    jobs = [make_job(cfg, teacher, prompts[q.kind], q, s) for q in questions for s in range(cfg.samples)]

    counts = Counts()
    with ResponseCache(cache_path) as cache:
        _ask(jobs, teacher, cfg, cache, counts)
        for round_ in range(cfg.reask):
            extra = _reask_jobs(jobs, cfg, teacher, prompts, round_)
            if not extra:
                break
            _ask(extra, teacher, cfg, cache, counts)
            jobs += extra
    return _write(jobs, cfg, teacher, prompts, counts)


def _ask(jobs: list[Job], teacher: Teacher, cfg: TeachConfig, cache: ResponseCache, counts: Counts) -> None:
    missing = []
    for job in jobs:
        hit = cache.get(job.key)
        # an empty answer from a server is asked again (a local model's is kept: greedy would repeat it)
        if hit is not None and (teacher.kind == "hf" or str(hit.get("content") or "").strip()):
            job.response, job.cached = hit, True
            counts.cached += 1
        else:
            missing.append(job)
    if not missing:
        return
    from tqdm import tqdm

    with tqdm(total=len(jobs), initial=len(jobs) - len(missing), unit="req", desc=f"teach {teacher.name}",
              disable=not cfg.progress, file=sys.stderr, dynamic_ncols=True) as bar:
        if teacher.kind == "openai":
            async def go() -> None:
                await preflight(teacher, cfg)
                await run_openai(missing, teacher, cfg, cache, counts, bar)

            asyncio.run(go())
        else:
            run_hf(missing, teacher, cfg, cache, counts, bar)


def _reask_jobs(jobs: list[Job], cfg: TeachConfig, teacher: Teacher, prompts: dict, round_: int) -> list[Job]:
    """One more sample for each question none of whose answered samples is correct."""
    solved, seen = set(), {}
    for job in jobs:
        seen[job.question.id] = job.question
        if job.response is not None and verdict(job)["correct"]:
            solved.add(job.question.id)
    sample = cfg.samples + round_
    return [make_job(cfg, teacher, prompts[q.kind], q, sample) for qid, q in seen.items() if qid not in solved]


def _write(jobs: list[Job], cfg: TeachConfig, teacher: Teacher, prompts: dict[str, TeacherPrompt], counts: Counts) -> TeachResult:
    kept_rows, all_rows, failures = [], [], []
    for job in jobs:
        q = job.question
        row: dict[str, Any] = {
            "question_id": q.id,
            "question": q.question,
            "gold": q.gold,
            "kind": q.kind,
            "choices": q.choices,
            "teacher": teacher.name,
            "level": cfg.level,
            "format": cfg.format,
            "sample": job.sample,
            "prompt_hash": sha256(canonical_json(job.messages).encode("utf-8")).hexdigest()[:16],
            "template_hash": prompts[q.kind].hash,
        }
        if job.response is None:
            failures.append(f"{q.id}#{job.sample}: {job.error}")
            all_rows.append({**row, "status": "failed", "error": job.error, "messages": job.messages})
            continue
        usage = job.response.get("usage") or {}
        counts.prompt_tokens += usage.get("prompt_tokens", 0)
        counts.completion_tokens += usage.get("completion_tokens", 0)
        if not job.cached:
            counts.new_prompt_tokens += usage.get("prompt_tokens", 0)
            counts.new_completion_tokens += usage.get("completion_tokens", 0)
        v = verdict(job)
        full = {**row, "rationale": v["rationale"], "extracted": v["extracted"], "correct": v["correct"],
                "reason": v["reason"], "finish_reason": job.response.get("finish_reason"), "usage": usage}
        all_rows.append({**full, "status": "answered", "raw": job.response["content"], "messages": job.messages})
        counts.kept += int(v["correct"] or cfg.keep == "all")
        counts.rejected += int(not v["correct"])
        if v["correct"] or cfg.keep == "all":
            kept_rows.append({k: full[k] for k in full if k != "reason"})

    out = Path(cfg.out)
    cost = _cost(cfg, counts.prompt_tokens, counts.completion_tokens)
    new_cost = _cost(cfg, counts.new_prompt_tokens, counts.new_completion_tokens)
    atomic_write_text(all_path(out), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in all_rows))
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept_rows))
    counts_out = {k: v for k, v in vars(counts).items() if k != "consecutive_failures"}
    config = cfg.model_dump(mode="json")
    if teacher.base_url:  # never a credential or query string from the URL
        config["base_url"] = teacher.endpoint
    write_provenance(
        provenance_path(out), config,
        teacher={"name": teacher.name, "kind": teacher.kind, "model": teacher.model, "endpoint": teacher.endpoint},
        prompts={k: {"hash": p.hash, "template": p.template, "fields": p.fields} for k, p in prompts.items()},
        counts=counts_out, cost=cost, new_cost=new_cost,
        files={"supervision": out.name, "all_samples": all_path(out).name},
        cache=str(Path(cfg.cache).expanduser() if cfg.cache else default_cache_path()),
    )
    return TeachResult(out, all_path(out), counts, cost, new_cost, failures)


def _cost(cfg: TeachConfig, prompt_tokens: int, completion_tokens: int) -> float | None:
    if cfg.price_in is None and cfg.price_out is None:
        return None
    return prompt_tokens * (cfg.price_in or 0) / 1e6 + completion_tokens * (cfg.price_out or 0) / 1e6
