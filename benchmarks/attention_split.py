"""How many cache positions should one decode-attention program walk? TPOT per split length.

Run on a GPU (about a minute on an H100):

    python benchmarks/attention_split.py [--splits 128 256 512 0] [--gens 3]

The fused decode attention (``benchlib.llm.kernels.decode_attention_``) gives each query head one
program per ``split_len`` cache positions and merges their softmax states in a second launch
(flash-decoding); ``0`` means one program walks the whole cache. For the Llama 3.2 1B shape,
bf16, batch 1, at the benchmark's 128 in / 256 out and the seed's T2 (512 / 128) and T3
(2048 / 512) lengths, it captures the fused decode step in a CUDA graph, replays it for every
output token after a prefill, and prints the mean step time (CUDA events around all replays of a
generation, median of ``--gens``). ``kernels.ATTENTION_SPLIT_LEN`` is the default it informs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib.llm import SHAPES, InputSpec  # noqa: E402
from benchlib.llm.model import ReferenceModel, Session, aligned_seq_len  # noqa: E402
from benchlib.llm.reference import capture_graph, prompt_tensors  # noqa: E402

LENGTHS = ((128, 256), (512, 128), (2048, 512))


def step_ms(torch, model, prompt_len: int, output_len: int, split_len: int, gens: int) -> float:
    """Median over generations of the mean graph-replayed decode step, in ms."""
    session = Session(model, 1, prompt_len + output_len, output_len, fused=True,
                      attention_split_len=split_len or aligned_seq_len(prompt_len + output_len))
    prompts = prompt_tensors(InputSpec(1, prompt_len, output_len, model.shape.vocab, seed=42).batch_at(0), "cuda")
    with torch.inference_mode():
        session.reset()
        graph = capture_graph(session.decode_step)
        means = []
        for _ in range(gens + 1):  # the first generation warms up
            session.prefill(*prompts)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(output_len - 1):
                graph.replay()
            end.record()
            end.synchronize()
            means.append(start.elapsed_time(end) / (output_len - 1))
    return statistics.median(means[1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", type=int, nargs="+", default=[128, 256, 512, 0],
                        help="cache positions per program, multiples of 128; 0: one program per head")
    parser.add_argument("--gens", type=int, default=3)
    args = parser.parse_args()

    import torch

    model = ReferenceModel(SHAPES["llama-1b"], "bf16", "cuda", seed=42)
    print(f"{torch.cuda.get_device_name()}  llama-1b bf16 batch 1, fused kernels; mean decode step, ms")
    print(f"{'in / out':<12}" + "".join(f"{'split ' + str(s) if s else 'one program':>14}" for s in args.splits))
    for prompt_len, output_len in LENGTHS:
        times = [step_ms(torch, model, prompt_len, output_len, split, args.gens) for split in args.splits]
        print(f"{f'{prompt_len} / {output_len}':<12}" + "".join(f"{t:>14.3f}" for t in times))
    return 0


if __name__ == "__main__":
    sys.exit(main())
