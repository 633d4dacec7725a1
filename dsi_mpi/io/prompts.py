"""Prompt sets: JSONL, one object per line: {"id": "<any string>", "prompt": "<text>"}.

Blank lines are skipped; anything else malformed is an error naming the file and line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dsi_mpi.io.config import ConfigError


@dataclass(frozen=True)
class Prompt:
    index: int  # position in the file: the key results are stored under
    id: str
    text: str


def load_prompts(path: str, limit: int = 0, shard_count: int = 1, shard_index: int = 0) -> list[Prompt]:
    """The prompts of one shard; `index` stays the position in the whole file, so shards merge cleanly."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"prompt set not found: {path}")
    prompts: list[Prompt] = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
            raise ConfigError(f'{path}:{number}: expected an object with a string "prompt"')
        if not obj["prompt"]:
            raise ConfigError(f"{path}:{number}: empty prompt")
        unknown = set(obj) - {"id", "prompt"}
        if unknown:
            raise ConfigError(f"{path}:{number}: unknown keys {sorted(unknown)} (allowed: id, prompt)")
        prompts.append(Prompt(len(prompts), str(obj.get("id", len(prompts))), obj["prompt"]))
    if not prompts:
        raise ConfigError(f"prompt set {path} holds no prompts")
    prompts = prompts[:limit] if limit else prompts
    shard = [p for p in prompts if p.index % shard_count == shard_index]
    if not shard:
        raise ConfigError(f"shard {shard_index} of {shard_count} of {path} holds no prompts ({len(prompts)} in all)")
    return shard
