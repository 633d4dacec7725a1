"""Chat requests whose answers by SmolLM2-135M-Instruct are the drafter's distillation data
(inputs/models/train_smollm2_drafter.py).

Two sources, interleaved so that any time budget gets both:
- stdlib: the Python stdlib's documented functions (write it / explain it / what does this code do);
- general: everyday programming questions from the topic lists below, each under several phrasings.

The held-out requests (inputs/prompts/smollm2_chat.jsonl) are never drawn, nor are their topics: the lists
below leave out word reversal, FizzBuzz, primality, list vs tuple, recursion, vowel counting, HTTP GET,
binary search, big-O notation, CSV files, git branches and merging dictionaries, so that the held-out
acceptance measures requests the drafter has not seen.
"""

from __future__ import annotations

import ast
import random
import sysconfig
from pathlib import Path

# "Write a Python function that ..." (no held-out task, nor a near copy of one)
TASKS = [
    "returns the factorial of n",
    "computes the nth Fibonacci number iteratively",
    "flattens a nested list",
    "removes duplicates from a list while keeping the order",
    "finds the largest element in a list without using max",
    "checks whether a string is a palindrome",
    "counts how often each word appears in a text",
    "converts Celsius to Fahrenheit",
    "returns the greatest common divisor of two numbers",
    "sorts a list of tuples by their second element",
    "checks whether two strings are anagrams",
    "splits a list into chunks of size n",
    "returns the sum of the digits of an integer",
    "finds the second largest number in a list",
    "capitalizes the first letter of every word",
    "converts a decimal number to binary",
    "rotates a list by k positions",
    "returns the intersection of two lists",
    "validates a simple email address",
    "computes the average of a list of numbers",
    "transposes a matrix given as a list of lists",
    "finds the longest word in a sentence",
    "checks whether a year is a leap year",
    "generates all permutations of a string",
    "computes the median of a list",
    "removes all whitespace from a string",
    "finds the most common element in a list",
    "converts a list of strings to integers, skipping bad values",
    "implements bubble sort",
    "merges two sorted lists into one sorted list",
    "checks whether brackets in a string are balanced",
    "computes the power set of a set",
    "returns the n largest values of a list",
    "converts a Roman numeral to an integer",
    "counts the lines in a text file",
    "writes a list of dictionaries to a JSON file",
    "returns the running total of a list",
    "finds all pairs in a list that sum to a target",
    "truncates a string to n characters with an ellipsis",
    "computes the dot product of two vectors",
    "groups a list of words by their first letter",
    "parses a date string like 2024-03-15 into a date object",
    "checks whether a list is sorted",
    "returns the character that appears most often in a string",
    "converts snake_case to camelCase",
    "computes compound interest",
    "implements a simple stack class with push and pop",
    "implements a queue using two stacks",
    "finds the missing number in a list of 1 to n",
    "shuffles a list without using random.shuffle",
    "retries a function call up to three times",
    "measures how long another function takes",
    "computes the area of a circle from its radius",
    "returns the unique characters of a string in order",
    "zips two lists into a dictionary",
    "returns the last n lines of a file",
    "checks whether a number is a perfect square",
    "finds the index of the first negative number",
    "builds a multiplication table as a list of lists",
    "returns every other element of a list",
]

# "Explain ... in Python" and friends
CONCEPTS = [
    "list comprehensions",
    "generators and the yield keyword",
    "decorators",
    "context managers and the with statement",
    "lambda functions",
    "the global and nonlocal keywords",
    "*args and **kwargs",
    "exceptions and try/except",
    "classes and objects",
    "inheritance",
    "the __init__ method",
    "dataclasses",
    "type hints",
    "virtual environments",
    "modules and packages",
    "iterators",
    "f-strings",
    "slicing",
    "sets",
    "the enumerate function",
    "the zip function",
    "the map and filter functions",
    "default argument values",
    "mutable and immutable objects",
    "shallow and deep copies",
    "the if __name__ == '__main__' idiom",
    "async and await",
    "threads",
    "the GIL",
    "unit testing with unittest",
    "pytest fixtures",
    "logging",
    "regular expressions",
    "reading and writing text files",
    "JSON serialization",
    "pip and requirements files",
    "properties",
    "static methods and class methods",
    "magic methods like __len__ and __repr__",
    "closures",
    "string formatting",
    "integer division and the modulo operator",
    "floating point rounding errors",
    "the collections module's Counter",
    "defaultdict",
    "namedtuples",
    "the itertools module",
    "the pathlib module",
    "sorting with a key function",
    "garbage collection",
]

# "What is the difference between A and B?"
PAIRS = [
    ("== and is", "Python"),
    ("a process and a thread", "computing"),
    ("a stack and a queue", "data structures"),
    ("append and extend", "Python lists"),
    ("a shallow copy and a deep copy", "Python"),
    ("an array and a linked list", "data structures"),
    ("TCP and UDP", "networking"),
    ("SQL and NoSQL databases", "software"),
    ("compiled and interpreted languages", "programming"),
    ("a class and an instance", "Python"),
    ("break and continue", "Python loops"),
    ("a function and a method", "Python"),
    ("str and repr", "Python"),
    ("a set and a frozenset", "Python"),
    ("local and global variables", "Python"),
    ("synchronous and asynchronous code", "programming"),
    ("RAM and disk storage", "computers"),
    ("a compiler and an interpreter", "programming"),
    ("HTTP and HTTPS", "the web"),
    ("a for loop and a while loop", "Python"),
    ("sort() and sorted()", "Python"),
    ("an abstract class and an interface", "programming"),
    ("unit tests and integration tests", "software testing"),
    ("a library and a framework", "software"),
    ("pass by value and pass by reference", "programming"),
]

# General computing questions
QUESTIONS = [
    "What is a hash table and how does it work?",
    "What is an API?",
    "How does DNS turn a domain name into an IP address?",
    "What is a database index and why does it make queries faster?",
    "What is the difference between a bug and an exception?",
    "How does garbage collection work in simple terms?",
    "What is a REST API?",
    "What does a compiler do?",
    "What is object-oriented programming?",
    "What is a race condition?",
    "What is a deadlock and how can it be avoided?",
    "What is caching and why is it useful?",
    "What is a linked list?",
    "What is a binary tree?",
    "How does a for loop work in Python?",
    "What is version control?",
    "What is a pull request?",
    "What is continuous integration?",
    "What is a container, like Docker?",
    "What is the difference between memory and storage?",
    "How do public and private keys work?",
    "What is a unit test?",
    "What is an operating system?",
    "What is a CPU cache?",
    "What is a URL made of?",
    "What is JSON?",
    "What is a regular expression?",
    "What is a virtual machine?",
    "What is the cloud?",
    "What is machine learning, in two sentences?",
    "How does sorting by merge sort work?",
    "How does quicksort work?",
    "What is a graph in computer science?",
    "What is breadth-first search?",
    "What is dynamic programming?",
    "What is a heap?",
    "What is an algorithm?",
    "What is a variable?",
    "Why is indentation important in Python?",
    "What is a syntax error?",
]

# "How do I ... in Python?"
HOWTOS = [
    "sort a dictionary by its values",
    "check if a key exists in a dictionary",
    "remove an item from a list",
    "read a text file line by line",
    "get the current date and time",
    "convert a string to a number",
    "join a list of strings",
    "split a string on commas",
    "find the length of a list",
    "copy a list",
    "loop over a dictionary",
    "create a directory",
    "list the files in a folder",
    "handle a division by zero",
    "generate a random number",
    "round a number to two decimals",
    "check the type of a variable",
    "count the items in a list",
    "pause a program for a second",
    "read user input",
    "convert a list to a set",
    "find the index of an item in a list",
    "replace text in a string",
    "parse command-line arguments",
    "write to a file",
    "check if a file exists",
    "get the maximum value in a dictionary",
    "remove duplicates from a string",
    "format a number with commas",
    "define a class with a constructor",
    "iterate over two lists at once",
    "create a dictionary from two lists",
    "raise a custom exception",
    "sum a list of numbers",
    "get the first and last items of a list",
    "convert a dictionary to JSON",
    "strip punctuation from a string",
    "compare two lists",
    "flatten a list of lists",
]

TASK_PHRASES = [
    "Write a Python function that {t}.",
    "Write a short Python function that {t}, with a docstring.",
    "Show a Python function that {t} and explain it briefly.",
]
CONCEPT_PHRASES = [
    "Explain {c} in Python.",
    "What are {c} in Python? Give a short example.",
    "Explain {c} to a beginner, with a short example.",
]
PAIR_PHRASES = [
    "What is the difference between {a} in {ctx}?",
    "Explain the difference between {a} in {ctx}, with an example.",
]
HOWTO_PHRASES = [
    "How do I {h} in Python?",
    "Show me how to {h} in Python.",
]


def general_requests(seed: int) -> list[str]:
    """Every topic under every phrasing, in a seeded shuffle."""
    out = [p.format(t=t) for t in TASKS for p in TASK_PHRASES]
    out += [p.format(c=c) for c in CONCEPTS for p in CONCEPT_PHRASES]
    out += [p.format(a=a, ctx=ctx) for a, ctx in PAIRS for p in PAIR_PHRASES]
    out += list(QUESTIONS)
    out += [p.format(h=h) for h in HOWTOS for p in HOWTO_PHRASES]
    random.Random(seed).shuffle(out)
    return out


def stdlib_requests(n: int, seed: int) -> list[str]:
    """Chat requests about the stdlib's documented functions."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo"}
    items = []
    for path in sorted(root.rglob("*.py")):
        if skip & set(path.relative_to(root).parts):
            continue
        try:
            src = path.read_text(encoding="utf-8")
            tree = ast.parse(src)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        mod = ".".join(path.relative_to(root).with_suffix("").parts)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                doc = ast.get_docstring(node)
                if doc and 20 < len(doc.splitlines()[0]) < 160:
                    body = "\n".join(src.splitlines()[node.lineno - 1 : node.lineno + 5])
                    items.append((mod, node, doc.splitlines()[0].strip(), body))
    rng = random.Random(seed)
    rng.shuffle(items)
    templates = [
        lambda m, nd, d, b: f"Write a Python function named {nd.name} that does this: {d}",
        lambda m, nd, d, b: f"Explain what `{m}.{nd.name}` does in Python and when to use it.",
        lambda m, nd, d, b: f"What does this Python code do?\n```python\n{b}\n```",
        lambda m, nd, d, b: f"{d} How would I do that in Python? Show a short example.",
        lambda m, nd, d, b: f"Explain this code step by step:\n```python\n{b}\n```",
        lambda m, nd, d, b: f"Give a simple example of using the `{m}` module.",
    ]
    return [templates[i % len(templates)](*it) for i, it in enumerate(items[:n])]


def training_requests(n: int, seed: int, held_out: list[str]) -> list[str]:
    """n requests, general and stdlib alternating while both last, none of them held out."""
    general, stdlib = general_requests(seed), stdlib_requests(n, seed)
    mixed = [r for pair in zip(general, stdlib) for r in pair]
    mixed += general[len(stdlib) :] + stdlib[len(general) :]
    held = set(held_out)
    return [r for r in mixed if r not in held][:n]
