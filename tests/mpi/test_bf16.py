"""Lossless in bf16 (README "Lossless in bf16"): on the packed backend si and dsi write plain decoding's tokens
exactly (its kernels are batch invariant), and every divergence from Hugging Face's own bf16 `generate` is a
near-tie of the fp32 model, measured, never hidden."""

import json

import h5py
import torch
from helpers import PROMPTS, write_job
from transformers import AutoModelForCausalLM, AutoTokenizer

from dsi_mpi.backends.near_ties import first_divergence


def test_bf16_tokens_are_plain_decodings_and_divergences_from_generate_are_near_ties(tiny_models, run_mpi, tmp_path):
    sections = {
        "models": {"dtype": "bfloat16", "backend": "packed"},
        "decoding": {"algorithms": ["nonsi", "si", "dsi"], "lookahead": "adaptive", "max_new_tokens": 24},
    }
    proc = run_mpi(["-m", "dsi_mpi", "run", write_job(tmp_path, tiny_models, **sections)], ranks=3)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tok = AutoTokenizer.from_pretrained(tiny_models["target"])
    fp32 = AutoModelForCausalLM.from_pretrained(tiny_models["target"]).eval()
    bf16 = AutoModelForCausalLM.from_pretrained(tiny_models["target"], dtype=torch.bfloat16).eval()
    with h5py.File(tmp_path / "out.h5") as f:
        backends = json.loads(f.attrs["backends"])
        assert all(b["backend"] == "packed" and b["dtype"] == "bfloat16" for b in backends if "backend" in b)
        for i, prompt in enumerate(PROMPTS):
            group = f["prompts"][f"{i:05d}"]
            tokens = {a: group[a]["tokens"][()].tolist() for a in ("nonsi", "si", "dsi")}
            assert tokens["si"] == tokens["nonsi"] == tokens["dsi"], tokens
            ids = tok(prompt["prompt"])["input_ids"]
            with torch.inference_mode():
                out = bf16.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=24, attention_mask=None)
            divergence = first_divergence(fp32, ids, tokens["nonsi"], out[0, len(ids) :].tolist())
            assert divergence is None or divergence.near_tie, divergence
