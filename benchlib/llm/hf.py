"""The transformers backend: ``LlamaForCausalLM.generate``, what many users run.

The model is the named shape as a random-initialised ``LlamaForCausalLM`` built from a
``LlamaConfig`` after ``torch.manual_seed(seed)`` (no hub access), in the requested dtype, on the
device. Generation is greedy (``do_sample=False``) with ``min_new_tokens == max_new_tokens`` (EOS can
never end a request early), left padding with an attention mask and ``pad_token_id`` set.

Timing: a :class:`TimingStreamer` receives every new token from ``generate`` and reads
``time.perf_counter_ns`` after ``torch.cuda.synchronize()``. ``generate`` hands tokens to a
streamer with ``.cpu()``, which already waits for the device, so the stamp is when the token was on
the host; the times include that host synchronisation, as a user's streaming loop would. TTFT is
the first streamed token (prefill plus the first sampling step) from the call to ``generate``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.generation.streamers import BaseStreamer

from ..device import Device
from .base import Backend, BackendConfig, GenerationResult, RequestResult
from .inputs import Batch
from .model import ModelShape, torch_dtype

PAD_ID = 0
MAX_POSITIONS = 131072


def llama_config(shape: ModelShape) -> LlamaConfig:
    """A ``LlamaConfig`` with the shape's dimensions."""
    return LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim, max_position_embeddings=MAX_POSITIONS, rms_norm_eps=shape.norm_eps,
        rope_theta=shape.rope_theta, tie_word_embeddings=shape.tied_embeddings, pad_token_id=PAD_ID,
    )


def random_model(shape: ModelShape, dtype: str, device: str, seed: int) -> LlamaForCausalLM:
    """The shape with seeded random weights, built directly on ``device`` in ``dtype``."""
    import torch

    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(llama_config(shape), dtype=torch_dtype(dtype))
    return model.eval()


def save_random_checkpoint(shape: ModelShape, dtype: str, device: str, seed: int, directory: Path) -> Path:
    """Save the random model as a Hugging Face checkpoint (safetensors) with a placeholder tokenizer.

    Tools that insist on a tokenizer (``trtllm-bench``) get a word-level one whose token ``<i>`` is
    id ``i``; the benchmarks feed token ids, never text.
    """
    import torch

    model = random_model(shape, dtype, device, seed)
    model.save_pretrained(directory)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # hand the memory back before another framework sizes its KV cache
    _placeholder_tokenizer(shape.vocab).save_pretrained(directory)
    return directory


def _placeholder_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    tokenizer = Tokenizer(WordLevel({f"<{i}>": i for i in range(vocab)}, unk_token="<0>"))
    tokenizer.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<0>", pad_token="<0>", bos_token="<1>",
                                   eos_token="<2>")


def checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a Hugging Face checkpoint directory."""
    return json.loads((Path(path) / "config.json").read_text())


class TimingStreamer(BaseStreamer):
    """Records when each generated token reached the host; the first ``put`` is the prompt."""

    def __init__(self, synchronize: Callable[[], None]):
        self.synchronize = synchronize
        self.times_ns: list[int] = []
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.synchronize()
        self.times_ns.append(time.perf_counter_ns())

    def end(self) -> None:
        """Nothing to flush: the times are read after ``generate`` returns."""


class HfBackend(Backend):
    """Static-batch ``generate``: every request of a batch shares one token timeline."""

    def __init__(self, config: BackendConfig, device: Device):
        import torch

        self.torch, self.device, self.output_len = torch, device, config.output_len
        self.model = random_model(config.shape, config.dtype, device.torch_device, config.seed)
        sync = "torch.cuda.synchronize + " if device.is_cuda else ""
        self.clock = f"{sync}perf_counter in a generate streamer (includes the per-token host sync)"

    def _synchronize(self) -> None:
        if self.device.is_cuda:
            self.torch.cuda.synchronize(self.device.torch_device)

    def generate(self, batch: Batch) -> GenerationResult:
        torch = self.torch
        tokens, mask = batch.padded(left=True, pad_id=PAD_ID)
        input_ids = torch.from_numpy(tokens).to(self.device.torch_device)
        attention_mask = torch.from_numpy(mask).to(self.device.torch_device)
        streamer = TimingStreamer(self._synchronize)
        self._synchronize()
        start_ns, begin = time.time_ns(), time.perf_counter_ns()
        with torch.inference_mode():
            sequences = self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=self.output_len,
                min_new_tokens=self.output_len, do_sample=False, pad_token_id=PAD_ID, streamer=streamer,
            )
        offsets = (np.array(streamer.times_ns, dtype=np.int64) - begin) / 1e9
        output_ids = sequences[:, tokens.shape[1]:].cpu().numpy()
        requests = tuple(
            RequestResult(int(length), output_ids[row].copy(), offsets, start_ns)
            for row, length in enumerate(batch.lengths)
        )
        return GenerationResult(requests, shared_timeline=True)
