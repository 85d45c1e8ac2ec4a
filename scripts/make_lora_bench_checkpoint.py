#!/usr/bin/env python3
"""Writes a LLaVA-1.5-7B-width LoRA fine-tune to measure the exporter's peak memory on it.

    python scripts/make_lora_bench_checkpoint.py --out /tmp/lora7b --layers 4
    /usr/bin/time -v target/release/vlguard-ort export --checkpoint /tmp/lora7b/adapter \
        --base /tmp/lora7b/vicuna --vision-tower /tmp/lora7b/clip --out /tmp/lora7b/model --dtype fp16

Random values, real shapes: a Vicuna-7B-shape base (hidden 4096, MLP 11008, vocab 32000,
`--layers` of its 32 layers, fp16 safetensors shards), LLaVA's LoRA output on it (rank 128,
alpha 256, the 7 projections of every layer, fp16 factors, non_lora_trainables.bin with the
1024 -> 4096 -> 4096 projector, the llava config), and a CLIP-L/14-336-width tower with
`--clip-layers` layers. The exporter streams one tensor at a time, so its peak memory is set
by the largest tensors (the 32000 x 4096 embedding, an 11008 x 4096 MLP weight being merged
with its factors), which a 7B has whatever the layer count: run two layer counts to see it.
Needs torch and safetensors (the venv of scripts/make_checkpoint_fixtures.py).
"""

import argparse
import json
import os

import torch
from safetensors.torch import save_file

H, MLP, VOCAB, HC, RANK, ALPHA = 4096, 11008, 32000, 1024, 128, 256
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def rand(*shape, std=0.02):
    return (torch.randn(*shape) * std).half()


def linear_shapes(layer):
    p = f"model.layers.{layer}"
    return {
        f"{p}.self_attn.q_proj.weight": (H, H),
        f"{p}.self_attn.k_proj.weight": (H, H),
        f"{p}.self_attn.v_proj.weight": (H, H),
        f"{p}.self_attn.o_proj.weight": (H, H),
        f"{p}.mlp.gate_proj.weight": (MLP, H),
        f"{p}.mlp.up_proj.weight": (MLP, H),
        f"{p}.mlp.down_proj.weight": (H, MLP),
    }


def write_base(d, layers):
    os.makedirs(d, exist_ok=True)
    shards, weight_map = [], {}
    first = {"model.embed_tokens.weight": rand(VOCAB, H), "lm_head.weight": rand(VOCAB, H),
             "model.norm.weight": torch.ones(H).half()}
    shards.append(first)
    for layer in range(layers):
        shard = {k: rand(*s) for k, s in linear_shapes(layer).items()}
        for n in ("input_layernorm", "post_attention_layernorm"):
            shard[f"model.layers.{layer}.{n}.weight"] = torch.ones(H).half()
        shards.append(shard)
    total = 0
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(d, name), metadata={"format": "pt"})
        for k, v in shard.items():
            weight_map[k] = name
            total += v.numel() * 2
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map},
              open(os.path.join(d, "model.safetensors.index.json"), "w"), indent=2)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H,
           "intermediate_size": MLP, "num_attention_heads": 32, "num_hidden_layers": layers,
           "rms_norm_eps": 1e-5, "vocab_size": VOCAB, "max_position_embeddings": 4096}
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
    return cfg


def write_adapter(d, layers, tokenizer):
    os.makedirs(d, exist_ok=True)
    sd = {}
    for layer in range(layers):
        for key, (out, inp) in linear_shapes(layer).items():
            module = "base_model.model." + key[: -len(".weight")]
            sd[module + ".lora_A.weight"] = rand(RANK, inp, std=0.01)
            sd[module + ".lora_B.weight"] = rand(out, RANK, std=0.001)
    save_file(sd, os.path.join(d, "adapter_model.safetensors"), metadata={"format": "pt"})
    json.dump({"peft_type": "LORA", "r": RANK, "lora_alpha": ALPHA, "target_modules": TARGETS,
               "base_model_name_or_path": "lmsys/vicuna-7b-v1.5", "task_type": "CAUSAL_LM"},
              open(os.path.join(d, "adapter_config.json"), "w"), indent=2)
    proj = {"base_model.model.model.mm_projector.0.weight": rand(H, HC),
            "base_model.model.model.mm_projector.0.bias": rand(H),
            "base_model.model.model.mm_projector.2.weight": rand(H, H),
            "base_model.model.model.mm_projector.2.bias": rand(H)}
    torch.save(proj, os.path.join(d, "non_lora_trainables.bin"))
    cfg = {"architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava", "hidden_size": H,
           "intermediate_size": MLP, "num_attention_heads": 32, "num_hidden_layers": layers,
           "rms_norm_eps": 1e-5, "vocab_size": VOCAB, "max_position_embeddings": 4096,
           "mm_hidden_size": HC, "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2,
           "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_use_im_start_end": False}
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
    if tokenizer:
        os.symlink(os.path.abspath(tokenizer), os.path.join(d, "..", "vicuna", "tokenizer.model"))


def write_clip(d, layers):
    os.makedirs(d, exist_ok=True)
    sd = {"vision_model.embeddings.class_embedding": rand(HC).float(),
          "vision_model.embeddings.patch_embedding.weight": rand(HC, 3, 14, 14).float(),
          "vision_model.embeddings.position_embedding.weight": rand(577, HC).float(),
          "vision_model.pre_layrnorm.weight": torch.ones(HC), "vision_model.pre_layrnorm.bias": torch.zeros(HC)}
    for layer in range(layers):
        p = f"vision_model.encoder.layers.{layer}"
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[f"{p}.self_attn.{n}.weight"] = rand(HC, HC).float()
            sd[f"{p}.self_attn.{n}.bias"] = rand(HC).float()
        sd[f"{p}.mlp.fc1.weight"], sd[f"{p}.mlp.fc1.bias"] = rand(4 * HC, HC).float(), rand(4 * HC).float()
        sd[f"{p}.mlp.fc2.weight"], sd[f"{p}.mlp.fc2.bias"] = rand(HC, 4 * HC).float(), rand(HC).float()
        for n in ("layer_norm1", "layer_norm2"):
            sd[f"{p}.{n}.weight"], sd[f"{p}.{n}.bias"] = torch.ones(HC), torch.zeros(HC)
    save_file(sd, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    cfg = {"model_type": "clip_vision_model", "hidden_size": HC, "intermediate_size": 4 * HC,
           "num_attention_heads": 16, "num_hidden_layers": layers, "image_size": 336, "patch_size": 14}
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=4, help="decoder layers (a 7B has 32)")
    ap.add_argument("--clip-layers", type=int, default=3, help="tower layers (CLIP-L has 24)")
    ap.add_argument("--tokenizer", help="a SentencePiece tokenizer.model to link into the base")
    args = ap.parse_args()
    torch.manual_seed(0)
    write_base(os.path.join(args.out, "vicuna"), args.layers)
    write_adapter(os.path.join(args.out, "adapter"), args.layers, args.tokenizer)
    write_clip(os.path.join(args.out, "clip"), args.clip_layers)


if __name__ == "__main__":
    main()
