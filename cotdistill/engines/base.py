"""What every generation engine takes and returns, and the project's answer-stop rule.

An engine turns chat requests into completions: `generate(requests, ...)` is the batching unit
(the hf engine batches and sorts them itself; the openai engine keeps `concurrency` of them in
flight) and reports each completion through `on_result` as soon as it exists, so a caller can
write results as they come. `apply_stops` is the one place that says where a completion ends:
engines that stop generating by themselves (hf) and engines that can only cut the text a server
returned (openai) both end their text with it, so they agree on the text and the stop reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

# "The answer is X" closed by a sentence end followed by more text, or a newline. A bare final
# "." is not enough: "The answer is 3." may still become "3.5".
ANSWER_STATED = re.compile(r"the\s*answer\s*is\b[^\n]*?(?:[.!](?=\s)|\n)", re.I)

FinishReason = Literal["answer", "stop", "length"]


@dataclass
class Request:
    """One prompt, as chat messages ([{"role": "user", "content": question}] for a question).

    The hf engine renders one user message with `students.build_prompt` (the prompt training
    used) and longer conversations with the chat template; the openai engine sends the messages.
    """

    messages: list[dict[str, str]]

    @classmethod
    def question(cls, text: str) -> Request:
        return cls([{"role": "user", "content": text}])


@dataclass
class Completion:
    """One generation. finish_reason: "answer" (answer stated; the answer-stop rule ended it),
    "stop" (end-of-turn/EOS token or a stop string) or "length" (max_new_tokens reached).
    completion_tokens counts every generated token, an end token included (hf), or the server's
    `usage` count (openai; 0 when the server sends none)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    # the prompt as the engine knows it: rendered template text (hf), the messages' text (openai: the server renders)
    prompt: str = field(default="", repr=False, compare=False)


OnResult = Callable[[int, Completion], None]


class Engine(Protocol):
    """Prompts in, completions out. `requests[i]` gives `result[i]` and one `on_result(i, c)` call."""

    name: str

    def generate(self, requests: list[Request], *, max_new_tokens: int, answer_stop: bool = True,
                 stop: list[str] | None = None, temperature: float = 0.0, top_p: float = 1.0, num_beams: int = 1,
                 seed: int | None = None, on_result: OnResult | None = None) -> list[Completion]: ...

    def close(self) -> None: ...


def apply_stops(text: str, reason: FinishReason, *, answer_stop: bool, stop: list[str] | None = None
                ) -> tuple[str, FinishReason]:
    """The text cut where generation ends and why: at the first stop string ("stop"), then, under
    the answer-stop rule, right after the sentence that states the answer ("answer")."""
    cuts = [i for i in (text.find(s) for s in stop or [] if s) if i >= 0]
    if cuts:
        text, reason = text[: min(cuts)], "stop"
    m = ANSWER_STATED.search(text) if answer_stop else None
    if m:
        return text[: m.end()], "answer"
    return text, reason
