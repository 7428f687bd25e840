"""`blt-jax serve` as users run it: the installed command started from a fresh directory with a relative
checkpoint path, on a free port, driven by the real OpenAI client (and raw HTTP where a client would
hide what is sent): completions plain and streamed, equal to `blt-jax generate` whatever shares the
batch, seeded sampling, bad requests, a full queue, a client that goes away, SIGTERM."""

import concurrent.futures
import contextlib
import json
import signal
import socket
import time
import urllib.error
import urllib.request

import pytest
from user import blt_jax, start

openai = pytest.importorskip("openai")

ROWS, QUEUE, MAX_PROMPT, MAX_TOKENS = 4, 4, 64, 6000  # long enough that busy rows stay busy for seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""


def post(port: int, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_ready(proc, port: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}: {proc.stderr.read()[-3000:]}")
        status, _ = get(port, "/health")
        if status == 200:
            return
        assert status in (0, 503), status
        time.sleep(0.2)
    raise AssertionError("the server did not become ready")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small BLT with entropy patching and its entropy LM, saved where the user works. Its EOS logit
    is the mean of two bytes' logits, so greedy decoding never ends a completion early: requests run
    for their whole budget, which the tests of full rows need."""
    import jax
    import numpy as np
    from user import TINY

    from blt_jax.api import BLTModel
    from blt_jax.experiment import load_experiment
    from blt_jax.models import model_config_from_dict
    from blt_jax.tokenizer import EOS_ID, OFFSET

    work = tmp_path_factory.mktemp("serve_work")
    config = model_config_from_dict(load_experiment(TINY).model)
    model = BLTModel.random(config, seed=1)
    params = jax.tree_util.tree_map(np.asarray, model.params)
    kernel = params["local_decoder"]["output"]["kernel"].copy()  # [D, V]
    kernel[:, EOS_ID] = (kernel[:, OFFSET + ord("a")] + kernel[:, OFFSET + ord("b")]) / 2
    params["local_decoder"]["output"]["kernel"] = kernel
    BLTModel(config, params, model.entropy_params).save(str(work / "model"))
    return work


@contextlib.contextmanager
def serving(cwd, checkpoint: str, *flags):
    """`blt-jax serve --checkpoint CHECKPOINT FLAGS` on a free port in `cwd`, once ready: (port, process);
    killed on exit if it is still running."""
    port = free_port()
    proc = start("serve", "--checkpoint", checkpoint, "--port", port, *flags, cwd=cwd)
    try:
        wait_ready(proc, port)
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(model_dir):
    with serving(
        model_dir,
        "model",
        "--max-rows",
        ROWS,
        "--max-queue",
        QUEUE,
        "--max-prompt-bytes",
        MAX_PROMPT,
        "--max-tokens",
        MAX_TOKENS,
    ) as running:
        yield running


def client(port: int):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=300)


def generated(model_dir, prompt: str, max_new: int) -> str:
    """What `blt-jax generate --temperature 0` prints for the prompt (its trailing newline dropped)."""
    result = blt_jax(
        "generate",
        "--checkpoint",
        "model",
        "--prompt",
        prompt,
        "--max-new-bytes",
        max_new,
        "--temperature",
        "0",
        cwd=model_dir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.endswith("\n")
    return result.stdout[:-1]


def test_a_completion_plain_and_streamed_equals_generate(server, model_dir):
    port, _ = server
    api = client(port)
    assert [m.id for m in api.models.list().data] == ["model"]
    done = api.completions.create(model="model", prompt="Hello, world", max_tokens=40, temperature=0)
    choice = done.choices[0]
    assert choice.text == generated(model_dir, "Hello, world", 40)
    assert choice.finish_reason in ("length", "stop")
    assert done.usage.prompt_tokens == len(b"Hello, world") and done.usage.completion_tokens <= 40
    if choice.finish_reason == "length":
        assert done.usage.completion_tokens == 40
    pieces = list(
        api.completions.create(model="model", prompt="Hello, world", max_tokens=40, temperature=0, stream=True)
    )
    assert len(pieces) > 1  # streamed as it was generated, not in one piece
    assert "".join(p.choices[0].text for p in pieces) == choice.text
    assert pieces[-1].choices[0].finish_reason == choice.finish_reason
    # A stop string ends the text before it; a list of prompts gives a choice per prompt.
    if len(choice.text) > 6:
        stop = choice.text[4:6]
        cut = api.completions.create(model="model", prompt="Hello, world", max_tokens=40, temperature=0, stop=[stop])
        assert cut.choices[0].text == choice.text[: choice.text.find(stop)]
        assert cut.choices[0].finish_reason == "stop"
    both = api.completions.create(model="model", prompt=["Hello, world", "Hi"], max_tokens=12, temperature=0)
    assert [c.index for c in both.choices] == [0, 1]
    assert both.choices[0].text == generated(model_dir, "Hello, world", 12)


def test_concurrent_requests_each_equal_generate(server, model_dir):
    """8 requests of different lengths at once over 4 rows: they join and leave a running batch, and
    each completion is what `generate` gives for its prompt alone."""
    port, _ = server
    api = client(port)
    jobs = [("a" * (i + 1) + " prompt " * (i % 3), 8 + 9 * i) for i in range(8)]

    def one(job):
        prompt, max_tokens = job
        return (
            api.completions.create(model="model", prompt=prompt, max_tokens=max_tokens, temperature=0).choices[0].text
        )

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(one, jobs))
    from blt_jax.api import from_pretrained

    model = from_pretrained(str(model_dir / "model"))
    for (prompt, max_tokens), text in zip(jobs, got):
        assert text == model.generate(prompt, max_new_bytes=max_tokens, temperature=0.0), prompt
    assert got[2] == generated(model_dir, jobs[2][0], jobs[2][1])  # and the command agrees with the API


def test_seeded_sampling_is_reproducible(server):
    port, _ = server
    api = client(port)

    def sampled(seed):  # top_k is not an OpenAI field: clients send it as an extra one
        return (
            api.completions.create(
                model="model",
                prompt="Once upon",
                max_tokens=24,
                temperature=0.8,
                top_p=0.9,
                seed=seed,
                extra_body={"top_k": 50},
            )
            .choices[0]
            .text
        )

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        first = list(pool.map(sampled, [7, 7, 8, 9]))
    assert first[0] == first[1] == sampled(7)
    assert len({first[0], first[2], first[3]}) > 1  # other seeds draw other bytes


def test_bad_requests_get_400_and_the_server_keeps_serving(server):
    port, _ = server
    cases = [
        ({"max_tokens": 4}, "prompt"),
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"prompt": "x", "temperature": "hot"}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "top_k": -2}, "top_k"),
        ({"prompt": "x", "max_tokens": MAX_TOKENS + 1}, "max_tokens"),
        ({"prompt": "x" * (MAX_PROMPT + 1)}, "prompt"),
        ({"prompt": "x", "n": 2}, "n"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ]
    for body, param in cases:
        status, answer = post(port, body)
        assert status == 400, (body, answer)
        assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["param"] == param, answer
        assert answer["error"]["message"]
    status, answer = post(port, b"{not json")
    assert status == 400 and "JSON" in answer["error"]["message"]
    with pytest.raises(openai.BadRequestError):
        client(port).completions.create(model="model", prompt="x", temperature=3)
    status, answer = post(port, {"prompt": "still here", "max_tokens": 4, "temperature": 0})
    assert status == 200 and answer["choices"][0]["finish_reason"] in ("length", "stop")


def test_a_full_queue_gets_429_and_a_client_that_leaves_frees_its_row(server):
    port, _ = server
    api = client(port)
    streams = [
        api.completions.create(model="model", prompt=f"long {i}", max_tokens=MAX_TOKENS, temperature=0, stream=True)
        for i in range(ROWS)
    ]
    for s in streams:  # every row is generating
        next(iter(s))
    with concurrent.futures.ThreadPoolExecutor(QUEUE) as pool:
        waiting = [
            pool.submit(
                lambda i=i: api.completions.create(model="model", prompt=f"queued {i}", max_tokens=8, temperature=0)
            )
            for i in range(QUEUE)
        ]
        deadline = time.monotonic() + 30
        while f"blt_jax_queue_length {QUEUE}" not in get(port, "/metrics")[1]:
            assert time.monotonic() < deadline and not any(w.done() for w in waiting)
            time.sleep(0.05)
        with pytest.raises(openai.RateLimitError) as info:
            api.completions.create(model="model", prompt="one too many", max_tokens=8, temperature=0)
        assert "busy" in info.value.body["message"]
        for s in streams:  # the clients go away mid-stream: their rows are freed for the queued requests
            s.response.close()
        for w in waiting:
            assert w.result(timeout=120).choices[0].finish_reason == "length"
    metrics = get(port, "/metrics")[1]
    cancelled = int(metrics.split('outcome="cancelled"} ')[1].split()[0])
    assert cancelled >= 1, metrics
    assert 'outcome="rejected"} 1' in metrics and "blt_jax_bytes_per_second" in metrics


def test_a_plain_request_whose_client_leaves_is_dropped(server):
    """A non-streamed request's handler is not cancelled when its client goes away; the server notices
    (it asks every 0.5 s) and drops the request: here from the queue, as every row is busy."""
    port, _ = server
    api = client(port)

    def metric(name: str) -> int:
        text = get(port, "/metrics")[1]
        return int(float(text.split(name + " ")[1].split()[0]))

    streams = [
        api.completions.create(model="model", prompt=f"busy {i}", max_tokens=MAX_TOKENS, temperature=0, stream=True)
        for i in range(ROWS)
    ]
    try:
        for s in streams:
            next(iter(s))
        cancelled = metric('blt_jax_requests_total{outcome="cancelled"}')
        body = json.dumps({"prompt": "gone", "max_tokens": 8, "temperature": 0}).encode()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            deadline = time.monotonic() + 30
            while metric("blt_jax_queue_length") != 1:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        deadline = time.monotonic() + 30  # the client has gone: the request leaves the queue
        while (
            metric("blt_jax_queue_length") != 0
            or metric('blt_jax_requests_total{outcome="cancelled"}') != cancelled + 1
        ):
            assert time.monotonic() < deadline, get(port, "/metrics")[1]
            time.sleep(0.1)
        assert metric("blt_jax_rows_busy") == ROWS  # the streams were not disturbed
    finally:
        for s in streams:
            s.response.close()


def test_sigterm_finishes_running_completions_and_exits_0(model_dir):
    with serving(model_dir, "model", "--max-rows", 2, "--max-prompt-bytes", 32, "--max-tokens", 200) as (port, proc):
        api = client(port)
        stream = api.completions.create(model="model", prompt="Hello", max_tokens=200, temperature=0, stream=True)
        pieces = iter(stream)
        text = next(pieces).choices[0].text
        proc.send_signal(signal.SIGTERM)
        reasons = []
        for piece in pieces:  # the running completion ends normally
            text += piece.choices[0].text
            reasons.append(piece.choices[0].finish_reason)
        assert reasons[-1] in ("length", "stop")
        assert proc.wait(timeout=120) == 0
        assert "stopped" in proc.stderr.read()
        assert get(port, "/health")[0] == 0  # no longer listening


def test_bad_arguments_end_in_one_line(model_dir):
    for args, expected in (
        (["--checkpoint", "no_such_model"], "no_such_model"),
        (["--checkpoint", "model", "--max-rows", "0"], "--max-rows must be >= 1"),
    ):
        result = blt_jax("serve", *args, "--port", free_port(), cwd=model_dir, timeout=300)
        assert result.returncode == 2, result.stderr[-2000:]
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("blt-jax serve: error:") and expected in lines[0], lines


def test_strict_mode_refuses_unknown_fields():
    """`--strict`: a field the server does not know is an error naming it; by default it is ignored (as
    most OpenAI-compatible servers do, so clients that send extras keep working)."""
    from blt_jax.serve.app import BadRequest, Limits, parse_completion

    body = {"prompt": "x", "max_tokens": 4, "temprature": 0}
    assert parse_completion(body, Limits(16, 8), 260).prompts == ("x",)
    with pytest.raises(BadRequest, match="unknown field: temprature") as info:
        parse_completion(body, Limits(16, 8, strict=True), 260)
    assert info.value.param == "temprature"
    assert parse_completion({"prompt": "x", "user": "me", "stream": True}, Limits(16, 8, strict=True), 260).stream


def test_a_request_holds_back_what_a_stop_string_could_start_and_decodes_utf8_across_chunks():
    """The scheduler's side of a request, without HTTP or a model: text is emitted as it becomes final;
    a character split between chunks waits for its last byte; while a stop string could be starting,
    its first characters are held back; the stop string and what follows never reach the client."""
    import numpy as np

    from blt_jax.inference.batching import RowSpec
    from blt_jax.inference.vocabulary import byte_vocabulary
    from blt_jax.serve.scheduler import Request
    from blt_jax.tokenizer import EOS_ID, OFFSET

    def ids(data: bytes):
        return np.array([b + OFFSET for b in data], np.int32)

    def run(chunks, stop=(), max_new=100):
        sent = []
        request = Request(RowSpec(ids(b"x")), max_new, tuple(stop), lambda text, reason: sent.append((text, reason)))
        reasons = [request.feed(chunk, byte_vocabulary()) for chunk in chunks]
        return sent, reasons

    snow = "é".encode()  # two bytes
    sent, reasons = run([ids(b"ab" + snow[:1]), ids(snow[1:] + b"cd"), np.array([EOS_ID, 70], np.int32)])
    assert sent == [("ab", None), ("écd", None), ("", "stop")] and reasons == [None, None, "stop"]
    sent, _ = run([ids(b"hello EN"), ids(b"D there")], stop=["END"])  # the stop string spans two chunks
    assert sent == [("hello ", None), ("", "stop")]
    sent, _ = run([ids(b"abcdef")], stop=["xyz"], max_new=4)  # the budget ends it; nothing is held back then
    assert sent == [("abcd", "length")]
    sent, _ = run([ids(b"ab\xff")], max_new=3)  # a byte that does not decode: U+FFFD, as generate prints it
    assert sent == [("ab\ufffd", "length")]


def test_a_token_lm_request_counts_bytes_and_cuts_the_token_that_crosses_its_budget():
    """A token LM's ids stand for several bytes each: the budget (`max_tokens`) still counts bytes, a
    token that crosses it is cut there, a special id prints nothing, and its own EOS ends the text."""
    import numpy as np

    from blt_jax.inference.batching import RowSpec
    from blt_jax.inference.vocabulary import Vocabulary
    from blt_jax.serve.scheduler import Request

    vocabulary = Vocabulary(
        (b"", b"", b"", b"hello", b" wor", b"ld", "\u00e9t\u00e9".encode()), 1, 2, lambda data: np.array([1], np.int32)
    )

    def run(chunks, max_new=100):
        sent = []
        request = Request(
            RowSpec(np.array([1], np.int32)), max_new, (), lambda text, reason: sent.append((text, reason))
        )
        reasons = [request.feed(np.array(chunk, np.int32), vocabulary) for chunk in chunks]
        return sent, reasons, request.generated

    assert run([[3, 4], [5, 0, 2, 3]]) == ([("hello wor", None), ("ld", "stop")], [None, "stop"], 11)
    assert run([[3, 4, 5]], max_new=7) == ([("hello w", "length")], ["length"], 7)
    sent, _, generated = run([[6]], max_new=4)  # cut inside a character: its first byte is U+FFFD
    assert sent == [("\u00e9t\ufffd", "length")] and generated == 4


def test_numbers_must_be_finite_and_top_k_is_capped():
    """JSON parsers accept NaN and Infinity; a NaN top_p or temperature would pass every comparison and
    reach the sampler. A top_k past the vocabulary means all of it (it once overflowed int32 in the
    decoding thread and took every running request down)."""
    from blt_jax.serve.app import BadRequest, Limits, parse_completion

    for field in ("temperature", "top_p", "max_tokens", "top_k"):
        for value in (float("nan"), float("inf")):
            with pytest.raises(BadRequest, match="finite|integer") as info:
                parse_completion({"prompt": "x", field: value}, Limits(16, 8), 260)
            assert info.value.param == field
    assert parse_completion({"prompt": "x", "temperature": 1, "top_k": 2**40}, Limits(16, 8), 260).top_k == 260
    assert parse_completion({"prompt": "x", "logit_bias": {}}, Limits(16, 8), 260).prompts == ("x",)  # clients' default


def _ascii_only_llama(directory):
    """A random Llama-family directory (transformers' own layout and tokenizer.json) whose output head
    rows are zero for every id that is special or not printable ASCII: greedy decoding then only picks
    text tokens (a random model would otherwise print bytes that do not decode, which text cannot
    compare), and never ends at EOS. Returns the transformers model."""
    import teachers
    import tokenizers
    import torch
    from transformers import LlamaForCausalLM

    model = teachers.save_random(LlamaForCausalLM, teachers.llama_config(tie=False), directory)
    texts = [f"the {i}th line of a small text, with words and numbers {i * 7}\n" for i in range(200)]
    tok = teachers.byte_level_tokenizer(texts, 300, str(directory / "tokenizer.json"))
    printable = {chr(c) for c in range(33, 127)} | {"\u0120"}  # GPT-2's byte table: ASCII as itself, space as U+0120
    with torch.no_grad():
        for i in range(model.config.vocab_size):
            token = tok.id_to_token(i)
            if token is None or token in ("<s>", "</s>") or not set(token) <= printable:
                model.lm_head.weight[i] = 0.0
    model.save_pretrained(directory)
    assert isinstance(tok, tokenizers.Tokenizer)
    return model, tok


def test_a_llama_family_directory_is_served_and_its_greedy_completions_equal_transformers(tmp_path):
    """`blt-jax serve --checkpoint <a Hugging Face Llama directory>` serves a token LM through the same
    continuous batching (its own cached decoder, its tokenizer's pieces as bytes): three concurrent
    greedy completions of prompts of different lengths equal transformers' `generate` for each prompt
    alone, cut at the byte budget (`max_tokens` counts bytes for every model)."""
    import torch

    work = tmp_path / "work"
    work.mkdir()
    model, tok = _ascii_only_llama(work / "llama-tiny")
    with serving(work, "llama-tiny", "--max-rows", 2, "--max-prompt-bytes", 64, "--max-tokens", 64) as (port, proc):
        api = client(port)
        assert [m.id for m in api.models.list().data] == ["llama-tiny"]
        prompts = ["the 3th line", "numbers 14 and a much longer prompt than the others", "x"]
        budget = 30

        def one(prompt):
            return api.completions.create(model="llama-tiny", prompt=prompt, max_tokens=budget, temperature=0)

        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(one, prompts))
        streamed = list(
            api.completions.create(model="llama-tiny", prompt=prompts[0], max_tokens=budget, temperature=0, stream=True)
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, proc.stderr.read()[-3000:]
    for prompt, answer in zip(prompts, answers):
        ids = tok.encode(prompt).ids  # BOS first, by the tokenizer's own template
        with torch.no_grad():
            # The mask is given: BOS is id 0, which transformers would otherwise take for padding.
            out = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=budget,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=1,
            )
        text = tok.decode(out[0, len(ids) :].tolist())
        assert "\ufffd" not in text and text.isascii()
        expected = text.encode()[:budget].decode()
        choice = answer.choices[0]
        assert choice.text == expected, prompt
        assert choice.finish_reason == "length" and answer.usage.completion_tokens == budget
        assert answer.usage.prompt_tokens == len(prompt.encode())
    assert "".join(p.choices[0].text for p in streamed) == answers[0].choices[0].text
