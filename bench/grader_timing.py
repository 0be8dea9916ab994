"""Grader time on degenerate (runaway) responses, issue 14: python bench/grader_timing.py

Each input is graded under every answer kind; a run longer than 20 s is stopped and reported."""

import signal
import time

from cotdistill.grade import extract_answer

CASES = {
    "70KB unclosed boxed": "\\boxed{" * 10000,
    "1MB unclosed boxed": "\\boxed{" * 150000,
    "1MB 'the answer is'": "The answer is " * 75000,
    "1MB digits": "1 " * 500000,
    "1MB $": "$" * 1000000,
    "1MB (A)": "(A) " * 250000,
    "1MB \\(": "\\(" * 500000,
}


def _stop(*_):
    raise TimeoutError


def main() -> None:
    signal.signal(signal.SIGALRM, _stop)
    for name, text in CASES.items():
        for kind in ("number", "math", "choice", "boolean"):
            t = time.perf_counter()
            signal.alarm(20)
            try:
                extract_answer(text, kind)
                print(f"{name:22s} {kind:8s} {time.perf_counter() - t:8.3f} s", flush=True)
            except TimeoutError:
                print(f"{name:22s} {kind:8s}  > 20 s (stopped)", flush=True)
            signal.alarm(0)


if __name__ == "__main__":
    main()
