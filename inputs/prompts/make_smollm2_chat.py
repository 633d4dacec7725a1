"""Write inputs/prompts/smollm2_chat.jsonl: short coding/explanation requests with SmolLM2's chat template
already applied (system prompt, user turn, open assistant turn), so dsi-mpi feeds the instruct model exactly
what `apply_chat_template(..., add_generation_prompt=True)` gives, with no config key for templates.

    python inputs/prompts/make_smollm2_chat.py [--model inputs/models/smollm2-135m-instruct]

The stored text tokenizes to the same ids as apply_chat_template(tokenize=True) (checked here). These
requests are held out from the drafter's distillation data (inputs/models/train_smollm2_drafter.py).
"""

import argparse
import json
from pathlib import Path

REQUESTS = [
    ("reverse-words", "Write a Python function that reverses the order of words in a sentence."),
    ("fizzbuzz", "Write a Python program that prints FizzBuzz for the numbers 1 to 20."),
    ("is-prime", "Write a Python function that checks whether a number is prime."),
    ("list-vs-tuple", "Explain the difference between a list and a tuple in Python."),
    ("recursion", "Explain recursion to a beginner, with a short example."),
    ("count-vowels", "Write a Python function that counts the vowels in a string."),
    ("http-get", "What happens when a browser sends an HTTP GET request?"),
    ("binary-search", "Write a binary search function in Python and explain how it works."),
    ("big-o", "What does O(n log n) mean? Give an example of an algorithm with that complexity."),
    ("read-csv", "Show how to read a CSV file in Python and print each row."),
    ("git-branch", "Explain what a git branch is and why it is useful."),
    ("dict-merge", "How do I merge two dictionaries in Python?"),
]

HERE = Path(__file__).resolve().parent


def templated(tokenizer, request: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": request}], add_generation_prompt=True, tokenize=False
    )


def main() -> None:
    from transformers import AutoTokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(HERE.parent / "models" / "smollm2-135m-instruct"))
    ap.add_argument("--out", type=Path, default=HERE / "smollm2_chat.jsonl")
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(args.model)
    lines = []
    for pid, request in REQUESTS:
        text = templated(tok, request)
        ids = tok.apply_chat_template(
            [{"role": "user", "content": request}], add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        assert tok(text)["input_ids"] == list(ids), pid
        lines.append(json.dumps({"id": pid, "prompt": text}) + "\n")
    args.out.write_text("".join(lines))
    print(f"wrote {args.out} ({len(lines)} prompts)")


if __name__ == "__main__":
    main()
