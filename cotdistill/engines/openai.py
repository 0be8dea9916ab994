"""Any OpenAI-compatible chat-completions server (vLLM, SGLang, llama.cpp server, Ollama, `cotdistill serve`).

Each request is one chat completion through the official `openai` client; `concurrency` of them
are in flight at once (threads), and the client retries connection errors, 429s and 5xxs with
back-off. The server renders the prompt with its own chat template and knows nothing of the
answer-stop rule, so it may generate past the answer; the text is cut here, with the same
`apply_stops` as the hf engine, so both give the same text and stop reason. Token counts are the
server's `usage` (what it generated, the part after the answer included).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from cotdistill.engines.base import Completion, OnResult, Request, apply_stops
from cotdistill.errors import CotdistillError


def check_base_url(url: str) -> str:
    """`url` if it is an http(s) URL with a host and no credentials in it (keys go in an environment variable)."""
    from cotdistill.checks import check_url

    return check_url(url, "--base-url")


class OpenAIEngine:
    """`model` is the name the server serves the model under."""

    name = "openai"

    def __init__(self, model: str, *, base_url: str, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8,
                 timeout: float = 600.0, retries: int = 3):
        import openai

        self.model, self.base_url, self.concurrency = model, check_base_url(base_url), concurrency
        # Local servers take any key; the client insists on a non-empty one.
        self._key = os.environ.get(api_key_env) or "EMPTY"
        self.client = openai.OpenAI(base_url=base_url, api_key=self._key, max_retries=retries, timeout=timeout)

    def generate(self, requests: list[Request], *, max_new_tokens: int, answer_stop: bool = True,
                 stop: list[str] | None = None, temperature: float = 0.0, top_p: float = 1.0, num_beams: int = 1,
                 seed: int | None = None, on_result: OnResult | None = None) -> list[Completion]:
        """Completions in request order; `on_result` runs on this thread as each one arrives. A request
        that still fails after the retries stops the call (those answered so far were reported)."""
        if num_beams != 1:
            raise CotdistillError("beam search is not available through an OpenAI-compatible server; use --engine hf")
        params: dict[str, Any] = {"max_tokens": max_new_tokens, "temperature": temperature}
        if top_p != 1.0:
            params["top_p"] = top_p
        if seed is not None:
            params["seed"] = seed
        stop = [s for s in stop or [] if s]
        if stop:
            params["stop"] = stop
        results: list[Completion | None] = [None] * len(requests)
        pool = ThreadPoolExecutor(self.concurrency)
        try:
            futures = {pool.submit(self._one, r, params, answer_stop, stop): i for i, r in enumerate(requests)}
            for fut in as_completed(futures):
                i = futures[fut]
                results[i] = fut.result()
                if on_result is not None:
                    on_result(i, results[i])
        finally:  # a failure or Ctrl-C sends nothing more; requests in flight end within the timeout
            pool.shutdown(wait=False, cancel_futures=True)
        return results  # type: ignore[return-value]

    def close(self) -> None:
        self.client.close()

    def _one(self, request: Request, params: dict[str, Any], answer_stop: bool, stop: list[str]) -> Completion:
        import openai

        try:
            resp = self.client.chat.completions.create(model=self.model, messages=request.messages, **params)
        except openai.NotFoundError as e:
            raise CotdistillError(f"model {self.model!r} is not served at {self.base_url}: {self._says(e)}") from None
        except openai.APIStatusError as e:
            raise CotdistillError(f"server {self.base_url} answered {e.status_code}: {self._says(e)}") from None
        except openai.APIError as e:  # connection refused, timeout, a body that is not a completion
            raise CotdistillError(f"server {self.base_url}: {self._says(e)}") from None
        if not getattr(resp, "choices", None):
            raise CotdistillError(f"server {self.base_url} answered without a completion")
        choice = resp.choices[0]
        reason = "length" if choice.finish_reason == "length" else "stop"
        text, reason = apply_stops(choice.message.content or "", reason, answer_stop=answer_stop, stop=stop)
        usage = resp.usage
        return Completion(text, getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0,
                          reason, prompt="\n".join(str(m.get("content", "")) for m in request.messages))

    def _says(self, e: Exception) -> str:
        """The error's first line, with the key taken out (servers sometimes echo it back)."""
        text = (str(e).splitlines() or [type(e).__name__])[0]
        return text.replace(self._key, "***") if self._key != "EMPTY" else text
