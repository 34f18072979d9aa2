"""Write a tiny random Llama that real vLLM can serve on CPU (tests/engine).

Usage (with the engine venv's python, which has torch, transformers and tokenizers):

    $ADAPTER_ENGINE_HOME/venv/bin/python tests/engine/make_tiny_model.py OUT_DIR [--no-clean-output]

No hub, no network. The output is byte-for-byte reproducible for a given
transformers/tokenizers/torch version:

- LlamaForCausalLM: hidden 64, 2 layers, 2 heads (head_dim 32: the vLLM CPU attention backend
  supports head_dim 32, 64, 80, ... but not 16), intermediate 128, max_position_embeddings 4096,
  vocab 512, float32, seed 1234.
- Byte-level BPE tokenizer trained on the small built-in text below. ``<|endoftext|>`` = 0 is
  bos/pad, ``<|im_start|>`` = 1, ``<|im_end|>`` = 2 is eos. ``<tool_call>``, ``</tool_call>``,
  ``<tool_response>``, ``</tool_response>``, ``<think>``, ``</think>`` are added as NON-special
  tokens (as in Qwen), so vLLM's hermes tool parser finds them and they survive detokenization.
- ChatML chat template (Qwen2.5 style) with Hermes tool calling
  (``<tool_call>{"name": ..., "arguments": ...}</tool_call>``), tool responses, and a Qwen3-style
  ``enable_thinking`` kwarg (``enable_thinking=false`` appends ``<think>\\n\\n</think>\\n\\n``).
- generation_config.json with ``eos_token_id: [2, 0]``.

CLEAN_OUTPUT weight trick (on by default): residual dimension 0 is held constant (every embedding
gets +0.1 there, no layer writes to it), so after the final RMSNorm h[0] is a large positive
constant and ``lm_head[:, 0]`` acts as a built-in logit bias. Tokens whose bytes include control
characters (0x00-0x1F except ``\\n``) or non-ASCII bytes (0x80-0xFF) get a bias of about -100 and
are never sampled. Without it, xgrammar lets raw control characters into JSON strings (not strict
JSON, so json_schema outputs and hermes tool-call arguments fail to parse) and lone high bytes
decode to U+FFFD. All other logits stay random (next-token distribution close to uniform).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SEED = 1234
VOCAB_SIZE = 512
HIDDEN = 64
LAYERS = 2
HEADS = 2
HEAD_DIM = 32
INTERMEDIATE = 128
MAX_POSITIONS = 4096
INIT_STD = 0.02
CLEAN_OUTPUT = True
# Residual dimension used as a constant "bias channel" by the CLEAN_OUTPUT trick.
BIAS_DIM = 0
BIAS_DIM_EMBED_OFFSET = 0.1
BLOCKED_LOGIT_BIAS = -100.0

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2
ADDED_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]
BOS_ID, IM_START_ID, EOS_ID = 0, 1, 2

# Small built-in training text: ASCII only, so every merged token is ASCII; the 256 single bytes are
# always in the vocabulary (byte-level alphabet).
CORPUS = [
    "Hello, world! Hello there. How are you today? I am fine, thank you.",
    "The quick brown fox jumps over the lazy dog. The dog sleeps in the sun.",
    "Once upon a time there was a little model that could only say random things.",
    "What is the weather like in Paris? It is sunny and warm, about 21 degrees celsius.",
    "What time is it in Tokyo? The current time is 10:42 in the morning.",
    "Why is the sky blue? Because air scatters blue light more than red light.",
    "Tell me a story about a robot who learns to paint. The robot painted the sea.",
    "Please answer in JSON with the keys name, age and city.",
    '{"name": "Alice", "age": 30, "city": "Paris"}',
    '{"answer": "yes", "count": 3, "items": ["apple", "banana", "cherry"]}',
    '{"name": "get_weather", "arguments": {"city": "Berlin", "unit": "celsius"}}',
    '{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}',
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    "for i in range(10):\n    print(i * i)\n",
    "import json\ndata = json.loads(text)\nprint(data['name'])\n",
    "The function returns a list of numbers. Each number is the square of its index.",
    "System: you are a helpful assistant. User: hi. Assistant: hello, how can I help?",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 42 100 1000 2024 3.14 -7 1e5",
    "Yes. No. Maybe. True, false, null. OK, done. Thanks! Goodbye.",
    "Translate to French: good morning. Bonjour. Good night. Bonne nuit.",
    "The capital of France is Paris. The capital of Germany is Berlin. The capital of Japan is Tokyo.",
    "Write a haiku about autumn leaves falling on a quiet river at dusk.",
    "Summarize the following text in one sentence. The text is about models and servers.",
    "A server streams tokens to the client; the client prints each token as it arrives.",
    "Count from one to ten: one, two, three, four, five, six, seven, eight, nine, ten.",
    "Error: the prompt is too long. Please reduce the length of the input prompt.",
]


def chat_template() -> str:
    """ChatML (Qwen2.5 style) + Hermes tools + tool responses + Qwen3-style enable_thinking."""
    return (
        "{%- if tools %}\n"
        "    {{- '<|im_start|>system\\n' }}\n"
        "    {%- if messages[0].role == 'system' %}\n"
        "        {{- messages[0].content + '\\n\\n' }}\n"
        "    {%- endif %}\n"
        '    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'
        'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n'
        "    {%- for tool in tools %}\n"
        '        {{- "\\n" }}\n'
        "        {{- tool | tojson }}\n"
        "    {%- endfor %}\n"
        '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and '
        "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
        '{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'
        "{%- else %}\n"
        "    {%- if messages[0].role == 'system' %}\n"
        "        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}\n"
        "    {%- endif %}\n"
        "{%- endif %}\n"
        "{%- for message in messages %}\n"
        "    {%- if message.content is string %}\n"
        "        {%- set content = message.content %}\n"
        "    {%- else %}\n"
        "        {%- set content = '' %}\n"
        "    {%- endif %}\n"
        "    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}\n"
        "        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}\n"
        "    {%- elif message.role == 'assistant' %}\n"
        "        {{- '<|im_start|>assistant' }}\n"
        "        {%- if content %}\n"
        "            {{- '\\n' + content }}\n"
        "        {%- endif %}\n"
        "        {%- if message.tool_calls %}\n"
        "            {%- for tool_call in message.tool_calls %}\n"
        "                {%- if tool_call.function is defined %}\n"
        "                    {%- set tool_call = tool_call.function %}\n"
        "                {%- endif %}\n"
        '                {{- \'\\n<tool_call>\\n{"name": "\' + tool_call.name + \'", "arguments": \' }}\n'
        "                {%- if tool_call.arguments is string %}\n"
        "                    {{- tool_call.arguments }}\n"
        "                {%- else %}\n"
        "                    {{- tool_call.arguments | tojson }}\n"
        "                {%- endif %}\n"
        "                {{- '}\\n</tool_call>' }}\n"
        "            {%- endfor %}\n"
        "        {%- endif %}\n"
        "        {{- '<|im_end|>\\n' }}\n"
        "    {%- elif message.role == 'tool' %}\n"
        "        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}\n"
        "            {{- '<|im_start|>user' }}\n"
        "        {%- endif %}\n"
        "        {{- '\\n<tool_response>\\n' + content + '\\n</tool_response>' }}\n"
        "        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}\n"
        "            {{- '<|im_end|>\\n' }}\n"
        "        {%- endif %}\n"
        "    {%- endif %}\n"
        "{%- endfor %}\n"
        "{%- if add_generation_prompt %}\n"
        "    {{- '<|im_start|>assistant\\n' }}\n"
        "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
        "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
        "    {%- endif %}\n"
        "{%- endif %}\n"
    )


def build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(ADDED_TOKENS),
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeat the corpus so frequencies (not line order) drive the merges.
    tok.train_from_iterator(CORPUS * 4, trainer=trainer, length=len(CORPUS) * 4)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED_TOKENS])
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    return tok


def byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode (the ByteLevel pre-tokenizer's alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def blocked_token_ids(tok: Tokenizer) -> list[int]:
    """Token ids whose bytes contain 0x00-0x1F (except newline) or 0x80-0xFF."""
    dec = byte_decoder()
    bad = set(range(0x00, 0x20)) - {0x0A} | set(range(0x80, 0x100))
    special = set(SPECIAL_TOKENS) | set(ADDED_TOKENS)
    blocked = []
    for token, idx in sorted(tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1]):
        if token in special:
            continue
        raw = bytes(dec[ch] for ch in token)
        if any(b in bad for b in raw):
            blocked.append(idx)
    return blocked


def build_model(blocked: list[int], clean_output: bool) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=MAX_POSITIONS,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=BOS_ID,
        torch_dtype="float32",
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    # Our own init, independent of transformers' init code: N(0, 0.02) for matrices, 1 for norms.
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float32) * INIT_STD)
        if clean_output:
            emb = model.model.embed_tokens.weight
            emb[:, BIAS_DIM] = BIAS_DIM_EMBED_OFFSET  # constant bias channel in the residual stream
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight[BIAS_DIM, :] = 0.0  # no layer writes to it
                layer.mlp.down_proj.weight[BIAS_DIM, :] = 0.0
            # Measure the post-norm value of the bias channel, then scale lm_head[:, 0] so that
            # blocked tokens get about BLOCKED_LOGIT_BIAS and the others nothing from it.
            h0 = final_bias_channel(model)
            lm = model.lm_head.weight
            lm[:, BIAS_DIM] = 0.0
            lm[blocked, BIAS_DIM] = BLOCKED_LOGIT_BIAS / h0
    return model


@torch.no_grad()
def final_bias_channel(model: LlamaForCausalLM) -> float:
    gen = torch.Generator().manual_seed(SEED + 1)
    ids = torch.randint(0, VOCAB_SIZE, (4, 64), generator=gen)
    hidden = model.model(input_ids=ids).last_hidden_state[..., BIAS_DIM]
    assert float(hidden.min()) > 1.0, f"bias channel too weak: {float(hidden.min())}"
    return round(float(hidden.mean()), 4)


@torch.no_grad()
def check_model(model: LlamaForCausalLM, blocked: list[int]) -> None:
    gen = torch.Generator().manual_seed(SEED + 2)
    ids = torch.randint(0, VOCAB_SIZE, (8, 128), generator=gen)
    logits = model(input_ids=ids).logits
    allowed = torch.ones(VOCAB_SIZE, dtype=torch.bool)
    allowed[blocked] = False
    gap = logits[..., allowed].min(-1).values - logits[..., ~allowed].max(-1).values
    assert float(gap.min()) > 50.0, f"blocked tokens are not far enough below: {float(gap.min())}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--no-clean-output", action="store_true", help="disable the CLEAN_OUTPUT weight trick")
    args = ap.parse_args(argv)
    clean_output = CLEAN_OUTPUT and not args.no_clean_output
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)

    raw_tok = build_tokenizer()
    blocked = blocked_token_ids(raw_tok)
    model = build_model(blocked, clean_output)
    if clean_output:
        check_model(model, blocked)
    model.generation_config.bos_token_id = BOS_ID
    model.generation_config.pad_token_id = BOS_ID
    model.generation_config.eos_token_id = [EOS_ID, BOS_ID]
    model.save_pretrained(out, safe_serialization=True)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw_tok,
        bos_token=SPECIAL_TOKENS[BOS_ID],
        eos_token=SPECIAL_TOKENS[EOS_ID],
        pad_token=SPECIAL_TOKENS[BOS_ID],
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = chat_template()
    tokenizer.save_pretrained(out)

    # generation_config.json is written explicitly so its content does not depend on defaults.
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": BOS_ID, "eos_token_id": [EOS_ID, BOS_ID], "pad_token_id": BOS_ID}, indent=2) + "\n"
    )
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"tiny model written to {out}: {n_params} parameters, vocab {VOCAB_SIZE}, "
        f"{len(blocked)} tokens blocked (clean_output={clean_output})"
    )
    for f in sorted(out.iterdir()):
        print(f"  {f.name} {f.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
