"""Evaluation protocols: how an answer is read from a response, and the paper's decoding settings.

Two protocols (part of an evaluation's identity; every results row says which made it):

- ``lenient`` (our default): the fallbacks documented in :mod:`cotdistill.grade` ("The answer is"
  and its variants, \\boxed{}, option phrases, the final sentence's math, option text, ...).
- ``paper``: only "[Tt]he answer is X", read exactly as the paper's released evaluation scripts
  read it (EIT-NLP/Distilling-CoT-Reasoning, commit 50be6ad9):
    * choice and true/false: ``Evaluation/reasoning_eval/run_reasoning.py::extract_answer_label``,
      the FIRST match of ``[Tt]he answer is ([A-E]|True|False)``, compared as a string with the
      label (so "The answer is yes" or "The answer is (B)" count as no answer);
    * numbers and MATH: ``Evaluation/reasoning_eval/utils.py::answer_clean`` with the trigger
      "The answer is": the text after the LAST trigger, its first number (commas removed); for
      MATH ``extract_math_answer`` with answer_flag=True: the \\boxed{} in that text, else right of
      its last "=", a number followed by a unit word keeps the number. No trigger -> no answer.
  The paper generated with vLLM stop strings (PAPER_STOP); text after the first of them is cut
  before reading, as generation would have stopped there.
"""

from __future__ import annotations

from cotdistill.errors import CotdistillError, unknown_name

PROTOCOLS = ("lenient", "paper")

# Evaluation/reasoning_eval/run_reasoning.py, main(): the stop strings of SamplingParams.
PAPER_STOP = ("USER:", "ASSISTANT:", "### Instruction:", "Response:", "<start_of_turn>", "[INST]",
              "\n\nProblem", "\nProblem", "Problem:", "<|eot_id|>", "####")

# The paper's decoding, from EIT-NLP/Distilling-CoT-Reasoning commit 50be6ad9:
#   Evaluation/reasoning_eval/run_reasoning.py:
#     SamplingParams(temperature=0, use_beam_search=True, best_of=5, max_tokens=max_length, stop=stop_tokens)
#     LLM(..., dtype=bfloat16)   (--dtype default 'bfloat16'; --model_max_length default 320)
#   Evaluation/reasoning_eval/autoevaluate.py: runs run_reasoning.py with '--model_max_length', '640'.
# vLLM's beam search with best_of=5 keeps 5 beams (length_penalty 1.0, early_stopping False: its
# defaults), i.e. transformers' generate(num_beams=5, do_sample=False, max_new_tokens=640).
PAPER_DECODING: dict = {
    "num_beams": 5,
    "do_sample": False,
    "temperature": 0.0,
    "length_penalty": 1.0,
    "early_stopping": False,
    "max_new_tokens": 640,  # autoevaluate.py's value; run_reasoning.py alone defaults to 320
    "stop": PAPER_STOP,
    "dtype": "bfloat16",
    "source": "EIT-NLP/Distilling-CoT-Reasoning@50be6ad9 Evaluation/reasoning_eval/{run_reasoning,autoevaluate}.py",
}


def check_protocol(protocol: str) -> str:
    """The protocol name, or a one-line CotdistillError naming the known ones."""
    if protocol not in PROTOCOLS:
        raise unknown_name("grading protocol", str(protocol), PROTOCOLS)
    return protocol


def cut_at_paper_stop(text: str) -> str:
    """The text up to the first of the paper's stop strings (where its generation would have ended)."""
    cut = len(text)
    for stop in PAPER_STOP:
        i = text.find(stop, 0, cut)
        if i >= 0:
            cut = i
    return text[:cut]


__all__ = ["PAPER_DECODING", "PAPER_STOP", "PROTOCOLS", "CotdistillError", "check_protocol", "cut_at_paper_stop"]
