#!/usr/bin/env python3
"""Makes the checkpoint-layout fixtures of tests/data/checkpoints from the dev golden
bundle's tiny LLaVA-1.5 (original layout) and its tiny CLIP tower.

    python3 -m venv /tmp/fx && /tmp/fx/bin/pip install torch transformers peft \
        sentencepiece safetensors numpy
    /tmp/fx/bin/python scripts/make_checkpoint_fixtures.py \
        --golden models/demo-src --out tests/data/checkpoints

Every folder it writes is a layout met in the wild, holding the SAME weights as the golden
checkpoint (or those weights merged with a LoRA adapter), written by the libraries that
write them for real (transformers `save_pretrained`, PEFT `save_pretrained`, `torch.save`):

- llava-hf/        LlavaForConditionalGeneration as llava-hf/llava-1.5-7b-hf holds it:
                   sparse config (text_config / vision_config), keys `language_model.model.*`,
                   `language_model.lm_head`, `multi_modal_projector.linear_{1,2}`,
                   `vision_tower.vision_model.*` (transformers' default, original format),
                   vocabulary padded to a multiple of 64 with `<image>` and `<pad>` rows drawn
                   around the mean row exactly as transformers' convert_llava_weights_to_hf
                   does; decoder fp16, tower fp32 (as the golden CLIP is).
- llava-hf-new-keys/ the same model saved with `save_original_format=False` (the keys of
                   transformers 5's module tree: `model.language_model.*`, `lm_head.weight`,
                   `model.multi_modal_projector.*`, `model.vision_tower.*`).
- vicuna-tiny/     the golden decoder alone as a LlamaForCausalLM (Vicuna's layout): the
                   base of LLaVA's own LoRA fine-tunes.
- llava-lora/      the output of LLaVA's finetune_lora.sh: adapter_config.json (PEFT LoRA on
                   the 7 decoder projections, base lmsys/vicuna-7b-v1.5), adapter_model.bin,
                   non_lora_trainables.bin (a new projector, `base_model.model.model.mm_projector.*`),
                   config.json (the llava config); no tokenizer (it comes from the base).
- llava-lora-merged/ the PEFT-merged reference of llava-lora on vicuna-tiny: base loaded in
                   fp32, `merge_and_unload()` (fp32 arithmetic), every tensor cast back to the
                   base's dtype (fp16) and saved in the original LLaVA layout with the new
                   projector.
- hf-lora/         a PEFT adapter on the llava-hf model (base llava-hf/llava-1.5-7b-hf):
                   rsLoRA, every linear layer of the decoder, projector and vision tower,
                   adapter weights stored as bfloat16, adapter_model.safetensors.
- hf-lora-merged/  its PEFT-merged reference (fp32 arithmetic, each tensor back in the base's
                   dtype: fp16 decoder and projector, fp32 tower), llava-hf layout.
- zip64/           the golden checkpoint as ONE pytorch_model.bin whose zip uses ZIP64
                   records everywhere (local and central extra fields, ZIP64 end of central
                   directory and locator), as torch.save writes shards over 4 GB; norms stored
                   as FloatStorage beside the HalfStorage of the rest, as real shards mix them.

The script checks what it wrote: each layout reloads through transformers / torch with the
golden values, the merged references equal W + scale * B @ A recomputed here.
"""

import argparse
import json
import os
import shutil
import struct
import zipfile
import zlib

import torch
from safetensors.torch import load_file, save_file

import peft
import transformers
from transformers import LlamaConfig, LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration

PAD_SHAPE = 64
HF_BASE = "llava-hf/llava-1.5-7b-hf"
VICUNA_BASE = "lmsys/vicuna-7b-v1.5"


def golden_llava(golden):
    d = os.path.join(golden, "llava-v1.5-tiny")
    index = json.load(open(os.path.join(d, "pytorch_model.bin.index.json")))
    sd = {}
    for shard in sorted(set(index["weight_map"].values())):
        sd.update(torch.load(os.path.join(d, shard), map_location="cpu", weights_only=True))
    return d, json.load(open(os.path.join(d, "config.json"))), sd


def golden_clip(golden):
    d = os.path.join(golden, "clip-vit-tiny-patch14-336")
    sd = load_file(os.path.join(d, "model.safetensors"))
    return d, json.load(open(os.path.join(d, "config.json"))), sd


def fresh(path):
    if os.path.exists(path):
        shutil.rmtree(path)
    os.makedirs(path)
    return path


def drop_extras(path, keep):
    """Removes what save_pretrained writes beside the weights that the layout does not need."""
    for name in os.listdir(path):
        if name not in keep:
            os.remove(os.path.join(path, name))


# ---------------------------------------------------------------- llava-hf


def hf_config(llava_cfg, clip_cfg, vocab):
    """A sparse llava-hf config like the Hub's: only what differs from transformers' defaults."""
    v = clip_cfg["vision_config"]
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "image_token_index": llava_cfg["vocab_size"],
        "pad_token_id": llava_cfg["vocab_size"] + 1,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "text_config": {
            "model_type": "llama",
            "hidden_size": llava_cfg["hidden_size"],
            "intermediate_size": llava_cfg["intermediate_size"],
            "num_hidden_layers": llava_cfg["num_hidden_layers"],
            "num_attention_heads": llava_cfg["num_attention_heads"],
            "max_position_embeddings": llava_cfg["max_position_embeddings"],
            "rms_norm_eps": llava_cfg["rms_norm_eps"],
            "vocab_size": vocab,
        },
        "vision_config": {
            "hidden_size": v["hidden_size"],
            "image_size": v["image_size"],
            "intermediate_size": v["intermediate_size"],
            "model_type": "clip_vision_model",
            "num_attention_heads": v["num_attention_heads"],
            "num_hidden_layers": v["num_hidden_layers"],
            "patch_size": v["patch_size"],
            "projection_dim": v["projection_dim"],
        },
        "vocab_size": vocab,
    }


def padded_rows(table, new_rows, generator):
    """convert_llava_weights_to_hf.py: new rows ~ N(mean row, 1e-5 * covariance)."""
    pre = table.float()
    mu = pre.mean(dim=0)
    n = pre.size(0)
    sigma = ((pre - mu).T @ (pre - mu)) / n
    dist = torch.distributions.multivariate_normal.MultivariateNormal(mu, covariance_matrix=1e-5 * sigma)
    torch.manual_seed(int(generator.initial_seed()))
    return torch.stack([dist.sample() for _ in range(new_rows)]).to(table.dtype)


def legacy_hf_state(llava_sd, clip_sd, vocab, seed):
    """The golden weights under llava-hf's original-format keys, vocabulary padded."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, t in llava_sd.items():
        if k.startswith("model.mm_projector."):
            idx = k.split(".")[2]
            sd["multi_modal_projector.linear_%d.%s" % ({"0": 1, "2": 2}[idx], k.split(".")[-1])] = t
        elif k == "lm_head.weight":
            sd["language_model.lm_head.weight"] = t
        elif k.startswith("model."):
            sd["language_model." + k] = t
    for key in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight"):
        t = sd[key]
        sd[key] = torch.cat([t, padded_rows(t, vocab - t.size(0), g)])
    for k, t in clip_sd.items():
        if k.startswith("vision_model.") and "position_ids" not in k:
            sd["vision_tower." + k] = t
    return sd


def make_hf(out, golden, llava_cfg, llava_sd, clip_dir, clip_cfg, clip_sd):
    vocab = -(-(llava_cfg["vocab_size"] + 2) // PAD_SHAPE) * PAD_SHAPE
    cfg = hf_config(llava_cfg, clip_cfg, vocab)
    stage = fresh(os.path.join(out, ".stage-hf"))
    json.dump(cfg, open(os.path.join(stage, "config.json"), "w"), indent=2)
    save_file(legacy_hf_state(llava_sd, clip_sd, vocab, 1234), os.path.join(stage, "model.safetensors"))
    model = LlavaForConditionalGeneration.from_pretrained(stage, dtype=torch.float32)
    shutil.rmtree(stage)
    # The decoder and projector in fp16 (as the golden), the tower in fp32 (as the golden CLIP).
    model.model.language_model.half()
    model.lm_head.half()
    model.model.multi_modal_projector.half()
    for name, new_keys in (("llava-hf", False), ("llava-hf-new-keys", True)):
        d = fresh(os.path.join(out, name))
        model.save_pretrained(d, save_original_format=not new_keys)
        drop_extras(d, {"config.json", "model.safetensors"})
        # The Hub's sparse config, not the full one save_pretrained writes.
        json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
        shutil.copy(os.path.join(golden, "llava-v1.5-tiny", "tokenizer.model"), d)
        shutil.copy(os.path.join(clip_dir, "preprocessor_config.json"), d)
        check_hf(d, llava_sd, clip_sd)
    return vocab


def check_hf(d, llava_sd, clip_sd):
    """Reloads through transformers: the golden values at their places."""
    m = LlavaForConditionalGeneration.from_pretrained(d, dtype=torch.float32)
    sd = m.state_dict()
    n = llava_sd["lm_head.weight"].size(0)
    assert torch.equal(sd["lm_head.weight"][:n], llava_sd["lm_head.weight"].float())
    assert torch.equal(
        sd["model.language_model.layers.1.mlp.down_proj.weight"], llava_sd["model.layers.1.mlp.down_proj.weight"].float()
    )
    assert torch.equal(sd["model.multi_modal_projector.linear_2.bias"], llava_sd["model.mm_projector.2.bias"].float())
    k = "vision_model.encoder.layers.2.self_attn.q_proj.weight"
    assert torch.equal(sd["model.vision_tower.encoder.layers.2.self_attn.q_proj.weight"], clip_sd[k]), k
    keys = load_file(os.path.join(d, "model.safetensors")).keys()
    print(d, len(keys), "tensors, e.g.", sorted(keys)[0], "/", sorted(keys)[-1])


# ---------------------------------------------------------------- LoRA


def randomize_lora(model, seed, std_a, std_b, round_to=None):
    """PEFT's B starts at zero (no change): give A and B seeded values so the merge matters."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if "lora_A" in name or "lora_B" in name:
            std = std_a if "lora_A" in name else std_b
            v = torch.randn(p.shape, generator=g) * std
            if round_to is not None:
                v = v.to(round_to).float()
            with torch.no_grad():
                p.copy_(v)


def write_adapter_config(path, cfg):
    """PEFT writes target_modules from a set (order varies run to run): sorted here."""
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    json.dump(cfg, open(path, "w"), indent=2)


def merged_like_base(merged_sd, base_dtypes):
    """merge_and_unload's fp32 result, each tensor in the dtype the base holds it."""
    return {k: v.to(base_dtypes[k]).contiguous() for k, v in merged_sd.items() if k in base_dtypes}


def check_merge(merged, base, adapter_sd, prefix_map, scale):
    """merged == round(W + scale * (B @ A)) for every adapted weight (float32 arithmetic)."""
    n = 0
    for key, a in adapter_sd.items():
        if ".lora_A." not in key:
            continue
        b = adapter_sd[key.replace(".lora_A.", ".lora_B.")].float()
        wkey = prefix_map(key.split(".lora_A.")[0]) + ".weight"
        w = base[wkey].float()
        want = (w + (b @ a.float()) * scale).to(base[wkey].dtype)
        assert torch.equal(merged[wkey], want), wkey
        n += 1
    assert n > 0
    return n


def make_vicuna(out, golden, llava_cfg, llava_sd):
    cfg = {k: v for k, v in llava_cfg.items() if not k.startswith("mm_") and k not in ("use_mm_proj",)}
    cfg.update({"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    for k in ("image_aspect_ratio", "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "tokenizer_model_max_length",
              "tokenizer_padding_side"):
        cfg.pop(k, None)
    d = fresh(os.path.join(out, "vicuna-tiny"))
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.items() if k != "architectures"}))
    lm = {k: v for k, v in llava_sd.items() if not k.startswith("model.mm_projector.")}
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in lm.items()}, strict=False)
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    model.half().save_pretrained(d)
    drop_extras(d, {"config.json", "model.safetensors"})
    shutil.copy(os.path.join(golden, "llava-v1.5-tiny", "tokenizer.model"), d)
    return d


def make_llava_lora(out, golden, llava_cfg, llava_sd, vicuna):
    """LLaVA's finetune_lora.sh output on the vicuna-tiny base, and its PEFT-merged reference."""
    base = LlamaForCausalLM.from_pretrained(vicuna, dtype=torch.float32)
    lcfg = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        lora_dropout=0.05,
        bias="none",
        task_type="CAUSAL_LM",
        init_lora_weights=False,
    )
    pm = peft.get_peft_model(base, lcfg)
    randomize_lora(pm, 11, 0.2, 0.05)
    d = fresh(os.path.join(out, "llava-lora"))
    pm.save_pretrained(d, safe_serialization=False)
    acfg_path = os.path.join(d, "adapter_config.json")
    acfg = json.load(open(acfg_path))
    acfg["base_model_name_or_path"] = VICUNA_BASE
    write_adapter_config(acfg_path, acfg)
    drop_extras(d, {"adapter_config.json", "adapter_model.bin"})
    # A new projector, as LLaVA trains it beside the adapter (fp16, LLaVA's save dtype here).
    g = torch.Generator().manual_seed(12)
    proj = {}
    for k, t in llava_sd.items():
        if k.startswith("model.mm_projector."):
            proj["base_model.model." + k] = (t.float() + torch.randn(t.shape, generator=g) * 0.01).half()
    torch.save(proj, os.path.join(d, "non_lora_trainables.bin"))
    cfg = dict(llava_cfg)
    cfg["_name_or_path"] = "./checkpoints/llava-v1.5-tiny-lora"
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)

    # The reference: PEFT merge in fp32 on the fp32-loaded base, saved in the base dtype.
    base = LlamaForCausalLM.from_pretrained(vicuna, dtype=torch.float32)
    merged = peft.PeftModel.from_pretrained(base, d).merge_and_unload()
    base_sd = load_file(os.path.join(vicuna, "model.safetensors"))
    sd = merged_like_base(merged.state_dict(), {k: v.dtype for k, v in base_sd.items()})
    adapter_sd = torch.load(os.path.join(d, "adapter_model.bin"), weights_only=True)
    n = check_merge(sd, base_sd, adapter_sd, lambda m: m[len("base_model.model."):], 8 / 4)
    for k, t in proj.items():
        sd[k[len("base_model.model."):]] = t
    m = fresh(os.path.join(out, "llava-lora-merged"))
    save_file(sd, os.path.join(m, "model.safetensors"), metadata={"format": "pt"})
    json.dump(llava_cfg, open(os.path.join(m, "config.json"), "w"), indent=2)
    shutil.copy(os.path.join(golden, "llava-v1.5-tiny", "tokenizer.model"), m)
    print(d, "->", m, n, "merged weights")


def make_hf_lora(out, hf_dir):
    """A PEFT adapter on the llava-hf model (rsLoRA, all linear layers), and its merged reference."""
    base = LlavaForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32)
    lcfg = peft.LoraConfig(
        r=8,
        lora_alpha=4,
        use_rslora=True,
        target_modules="all-linear",
        lora_dropout=0.0,
        init_lora_weights=False,
    )
    pm = peft.get_peft_model(base, lcfg)
    randomize_lora(pm, 21, 0.2, 0.05, round_to=torch.bfloat16)
    d = fresh(os.path.join(out, "hf-lora"))
    pm.save_pretrained(d)
    drop_extras(d, {"adapter_config.json", "adapter_model.safetensors"})
    acfg_path = os.path.join(d, "adapter_config.json")
    acfg = json.load(open(acfg_path))
    acfg["base_model_name_or_path"] = HF_BASE
    write_adapter_config(acfg_path, acfg)
    ad_path = os.path.join(d, "adapter_model.safetensors")
    adapter_sd = load_file(ad_path)
    # Stored as bfloat16 (values already bf16-exact, so PEFT's fp32 merge sees the same).
    save_file({k: v.to(torch.bfloat16) for k, v in adapter_sd.items()}, ad_path, metadata={"format": "pt"})

    base = LlavaForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32)
    merged = peft.PeftModel.from_pretrained(base, d).merge_and_unload()
    # Back to the base's dtypes: fp16 decoder and projector, fp32 tower.
    merged.model.language_model.half()
    merged.lm_head.half()
    merged.model.multi_modal_projector.half()
    m = fresh(os.path.join(out, "hf-lora-merged"))
    merged.save_pretrained(m)
    drop_extras(m, {"model.safetensors"})
    for f in ("config.json", "tokenizer.model", "preprocessor_config.json"):
        shutil.copy(os.path.join(hf_dir, f), m)
    n = check_merge(
        load_file(os.path.join(m, "model.safetensors")),
        load_file(os.path.join(hf_dir, "model.safetensors")),
        adapter_sd,
        lambda mod: legacy_hf_key(mod[len("base_model.model."):]),
        4 / 8**0.5,
    )
    print(d, "->", m, n, "merged weights, e.g.", sorted(adapter_sd)[0])


def legacy_hf_key(key):
    """transformers 5's module path -> llava-hf's original-format key."""
    for new, old in (
        ("model.language_model.", "language_model.model."),
        ("model.vision_tower.", "vision_tower.vision_model."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("lm_head", "language_model.lm_head"),
    ):
        if key.startswith(new):
            return old + key[len(new):]
    raise KeyError(key)


# ---------------------------------------------------------------- ZIP64


def zip64_rewrite(src, dst):
    """Rewrites a torch.save zip with ZIP64 records everywhere, data aligned to 64 bytes."""
    with zipfile.ZipFile(src) as z:
        entries = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    out = bytearray()
    central = bytearray()
    for name, data in entries:
        nb = name.encode()
        crc = zlib.crc32(data) & 0xFFFFFFFF
        offset = len(out)
        z64 = struct.pack("<HHQQ", 0x0001, 16, len(data), len(data))
        # Padding extra field ('FB', as PyTorch's writer) so the data starts on 64 bytes.
        base = offset + 30 + len(nb) + len(z64) + 4
        pad = (-base) % 64
        extra = z64 + struct.pack("<HH", 0x4246, pad) + b"Z" * pad
        out += struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 45, 0, 0, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(nb), len(extra)
        )
        out += nb + extra + data
        cz64 = struct.pack("<HHQQQ", 0x0001, 24, len(data), len(data), offset)
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50, 45, 45, 0, 0, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(nb), len(cz64), 0, 0, 0, 0,
            0xFFFFFFFF,
        )
        central += nb + cz64
    cd_offset = len(out)
    out += central
    eocd64 = len(out)
    n = len(entries)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(central), cd_offset)
    out += struct.pack("<IIQI", 0x07064B50, 0, eocd64, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    open(dst, "wb").write(out)


def make_zip64(out, golden, llava_sd):
    d = fresh(os.path.join(out, "zip64"))
    sd = {k: (v.float() if k.endswith("norm.weight") else v) for k, v in llava_sd.items()}
    # torch.save names the zip's folder after the file: write it as pytorch_model.bin.
    plain = os.path.join(fresh(os.path.join(out, ".stage-zip")), "pytorch_model.bin")
    torch.save(sd, plain)
    zip64_rewrite(plain, os.path.join(d, "pytorch_model.bin"))
    shutil.rmtree(os.path.dirname(plain))
    for f in ("config.json", "tokenizer.model"):
        shutil.copy(os.path.join(golden, "llava-v1.5-tiny", f), d)
    back = torch.load(os.path.join(d, "pytorch_model.bin"), weights_only=True)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    with zipfile.ZipFile(os.path.join(d, "pytorch_model.bin")) as z:
        assert z.testzip() is None
    print(d, len(sd), "tensors, ZIP64")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--golden", required=True, help="the dev golden bundle's checkpoint/ folder")
    ap.add_argument("--out", required=True, help="tests/data/checkpoints")
    args = ap.parse_args()
    torch.manual_seed(0)
    print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)
    os.makedirs(args.out, exist_ok=True)
    _, llava_cfg, llava_sd = golden_llava(args.golden)
    clip_dir, clip_cfg, clip_sd = golden_clip(args.golden)
    make_hf(args.out, args.golden, llava_cfg, llava_sd, clip_dir, clip_cfg, clip_sd)
    vicuna = make_vicuna(args.out, args.golden, llava_cfg, llava_sd)
    make_llava_lora(args.out, args.golden, llava_cfg, llava_sd, vicuna)
    make_hf_lora(args.out, os.path.join(args.out, "llava-hf"))
    make_zip64(args.out, args.golden, llava_sd)


if __name__ == "__main__":
    main()
