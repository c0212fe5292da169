"""The Triton source of :mod:`benchlib.llm.kernels` (imported on first use: it needs Triton).

Kernel and helper names are module globals because Triton's interpreter, which runs them in the CPU
tests, resolves the names a kernel calls among its module's globals.
"""
import triton
import triton.language as tl

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # Triton < 3.3: kernels.overlap_unavailable says so and nothing launches with PDL
    @triton.jit
    def gdc_wait():
        pass

    @triton.jit
    def gdc_launch_dependents():
        pass


@triton.jit
def wait_for_previous_kernel(OVERLAP: tl.constexpr):
    """Everything before this reads only what no earlier kernel of the step writes."""
    if OVERLAP:
        gdc_wait()  # the previous kernel has completed and its writes are visible
        gdc_launch_dependents()  # the next kernel may start its own reads-before-waiting


@triton.jit
def activation_tile(x_ptr, norm_ptr, out_ptr, rstd, offs_b, mask_b, offs_k, mask_k, K, NORM: tl.constexpr):
    """One ``[BLOCK_B, BLOCK_K]`` tile of the product's input, normalised when NORM."""
    xs = tl.load(x_ptr + offs_b[:, None] * K + offs_k[None, :],
                 mask=mask_b[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
    if NORM:
        weight = tl.load(norm_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        # rounded to the model dtype once, as the op-by-op path hands its norm output to the matmul
        xs = (xs * rstd[:, None] * weight[None, :]).to(out_ptr.dtype.element_ty).to(tl.float32)
    return xs


@triton.jit
def gemv_kernel(x_ptr, w_ptr, out_ptr, norm_ptr, res_ptr, best_ptr, best_index_ptr, N, K, eps,
                B: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                NORM: tl.constexpr, EPILOGUE: tl.constexpr, ARGMAX: tl.constexpr, OVERLAP: tl.constexpr):
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_b = tl.arange(0, BLOCK_B)
    mask_n = offs_n < N
    mask_b = offs_b < B
    lanes = tl.arange(0, BLOCK_K)
    # the first weight tile (gate and up rows for SwiGLU) is in flight before the wait
    first_mask = mask_n[:, None] & (lanes[None, :] < K)
    first = tl.load(w_ptr + offs_n[:, None] * K + lanes[None, :], mask=first_mask, other=0.0)
    if EPILOGUE == 2:  # gate rows are 0..N-1, up rows N..2N-1
        first_up = tl.load(w_ptr + (offs_n[:, None] + N) * K + lanes[None, :], mask=first_mask, other=0.0)
    wait_for_previous_kernel(OVERLAP)
    rstd = tl.full([BLOCK_B], 1.0, tl.float32)
    if NORM:
        squares = tl.zeros([BLOCK_B], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + lanes
            xs = tl.load(x_ptr + offs_b[:, None] * K + offs_k[None, :],
                         mask=mask_b[:, None] & (offs_k[None, :] < K), other=0.0).to(tl.float32)
            squares += tl.sum(xs * xs, axis=1)
        rstd = 1.0 / tl.sqrt(squares / K + eps)
    xs = activation_tile(x_ptr, norm_ptr, out_ptr, rstd, offs_b, mask_b, lanes, lanes < K, K, NORM)
    acc = tl.sum(xs[:, None, :] * first.to(tl.float32)[None, :, :], axis=2)
    acc_up = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
    if EPILOGUE == 2:
        acc_up += tl.sum(xs[:, None, :] * first_up.to(tl.float32)[None, :, :], axis=2)
    for k0 in range(BLOCK_K, K, BLOCK_K):
        offs_k = k0 + lanes
        mask_k = offs_k < K
        xs = activation_tile(x_ptr, norm_ptr, out_ptr, rstd, offs_b, mask_b, offs_k, mask_k, K, NORM)
        tile_mask = mask_n[:, None] & mask_k[None, :]
        w = tl.load(w_ptr + offs_n[:, None] * K + offs_k[None, :], mask=tile_mask, other=0.0).to(tl.float32)
        acc += tl.sum(xs[:, None, :] * w[None, :, :], axis=2)
        if EPILOGUE == 2:
            w_up = tl.load(w_ptr + (offs_n[:, None] + N) * K + offs_k[None, :], mask=tile_mask,
                           other=0.0).to(tl.float32)
            acc_up += tl.sum(xs[:, None, :] * w_up[None, :, :], axis=2)
    product_epilogue(acc, acc_up, out_ptr, res_ptr, best_ptr, best_index_ptr, offs_b[:, None] * N + offs_n[None, :],
                     mask_b[:, None] & mask_n[None, :], offs_b, mask_b, pid, BLOCK_N, EPILOGUE, ARGMAX, 1)


@triton.jit
def product_epilogue(acc, acc_up, out_ptr, res_ptr, best_ptr, best_index_ptr, out_offsets, out_mask, offs_b, mask_b,
                     pid, BLOCK_N: tl.constexpr, EPILOGUE: tl.constexpr, ARGMAX: tl.constexpr, N_AXIS: tl.constexpr):
    """SwiGLU or the residual add on the fp32 accumulator (outputs along ``N_AXIS``, batch rows along
    the other), the store in the model dtype and, with ARGMAX, this program's largest output per row
    and where: the greedy token's candidates."""
    if EPILOGUE == 2:
        acc = acc / (1.0 + tl.exp(-acc)) * acc_up
    if EPILOGUE == 1:
        acc += tl.load(res_ptr + out_offsets, mask=out_mask, other=0.0).to(tl.float32)
    rounded = acc.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + out_offsets, rounded, mask=out_mask)
    if ARGMAX:
        candidates = tl.where(out_mask, rounded.to(tl.float32), float("-inf"))
        programs = tl.num_programs(0)
        tl.store(best_ptr + offs_b * programs + pid, tl.max(candidates, axis=N_AXIS), mask=mask_b)
        tl.store(best_index_ptr + offs_b * programs + pid, pid * BLOCK_N + tl.argmax(candidates, axis=N_AXIS),
                 mask=mask_b)


@triton.jit
def transposed_input_tile(x_ptr, norm_ptr, offs_b, mask_b, offs_k, mask_k, K, NORM: tl.constexpr):
    """``x[b, k]^T`` as a ``[BLOCK_K, BLOCK_B]`` tile in the model dtype (times the norm weight when
    NORM), and each row's sum of squares of ``x`` over these columns (for the RMS)."""
    raw = tl.load(x_ptr + offs_b[None, :] * K + offs_k[:, None], mask=mask_k[:, None] & mask_b[None, :],
                  other=0.0).to(tl.float32)
    squares = tl.sum(raw * raw, axis=0)
    if NORM:
        raw = raw * tl.load(norm_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)[:, None]
    return raw.to(x_ptr.dtype.element_ty), squares


@triton.jit
def mma(weights, inputs, acc, IEEE: tl.constexpr):
    """``acc + weights @ inputs`` on tensor cores. IEEE: as exact fp32 products (fp32 models, not
    TF32; and in Triton's interpreter, whose ``tl.dot`` multiplies bf16 operands' raw bits)."""
    if IEEE:
        acc = tl.dot(weights.to(tl.float32), inputs.to(tl.float32), acc, input_precision="ieee")
    else:
        acc = tl.dot(weights, inputs, acc)
    return acc


@triton.jit
def gemm_kernel(x_ptr, w_ptr, out_ptr, norm_ptr, res_ptr, best_ptr, best_index_ptr, N, K, eps,
                B: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                NORM: tl.constexpr, EPILOGUE: tl.constexpr, ARGMAX: tl.constexpr, OVERLAP: tl.constexpr,
                IEEE: tl.constexpr):
    """The product of :func:`gemv_kernel` for a batch of rows, on tensor cores: each program computes
    ``acc[BLOCK_N, BLOCK_B] = W[n-tile, :] @ x^T``, the weight rows being the dot's M side and the
    batch (padded to BLOCK_B >= 16) its N side. The norm's 1/RMS scales the accumulator's columns at
    the end; its sum of squares is gathered from the same input tiles the product reads."""
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_b = tl.arange(0, BLOCK_B)
    mask_n = offs_n < N
    mask_b = offs_b < B
    lanes = tl.arange(0, BLOCK_K)
    # the first weight tile (gate and up rows for SwiGLU) is in flight before the wait
    first_mask = mask_n[:, None] & (lanes[None, :] < K)
    first = tl.load(w_ptr + offs_n[:, None] * K + lanes[None, :], mask=first_mask, other=0.0)
    if EPILOGUE == 2:  # gate rows are 0..N-1, up rows N..2N-1
        first_up = tl.load(w_ptr + (offs_n[:, None] + N) * K + lanes[None, :], mask=first_mask, other=0.0)
    wait_for_previous_kernel(OVERLAP)
    xs, squares = transposed_input_tile(x_ptr, norm_ptr, offs_b, mask_b, lanes, lanes < K, K, NORM)
    acc = mma(first, xs, tl.zeros([BLOCK_N, BLOCK_B], dtype=tl.float32), IEEE)
    acc_up = tl.zeros([BLOCK_N, BLOCK_B], dtype=tl.float32)
    if EPILOGUE == 2:
        acc_up = mma(first_up, xs, acc_up, IEEE)
    for k0 in range(BLOCK_K, K, BLOCK_K):
        offs_k = k0 + lanes
        mask_k = offs_k < K
        tile_mask = mask_n[:, None] & mask_k[None, :]
        w = tl.load(w_ptr + offs_n[:, None] * K + offs_k[None, :], mask=tile_mask, other=0.0)
        xs, tile_squares = transposed_input_tile(x_ptr, norm_ptr, offs_b, mask_b, offs_k, mask_k, K, NORM)
        squares += tile_squares
        acc = mma(w, xs, acc, IEEE)
        if EPILOGUE == 2:
            w_up = tl.load(w_ptr + (offs_n[:, None] + N) * K + offs_k[None, :], mask=tile_mask, other=0.0)
            acc_up = mma(w_up, xs, acc_up, IEEE)
    if NORM:
        rstd = 1.0 / tl.sqrt(squares / K + eps)
        acc = acc * rstd[None, :]
        acc_up = acc_up * rstd[None, :]
    product_epilogue(acc, acc_up, out_ptr, res_ptr, best_ptr, best_index_ptr, offs_b[None, :] * N + offs_n[:, None],
                     mask_n[:, None] & mask_b[None, :], offs_b, mask_b, pid, BLOCK_N, EPILOGUE, ARGMAX, 0)


@triton.jit
def attend(query, cached_keys, cached_values, filled, best, total, acc):
    """One online-softmax update of (running max, sum of weights, weighted values) by a cache block.
    A block with no filled slot leaves an empty state (max -inf, sum 0) as it was."""
    scores = tl.where(filled, tl.sum(query[None, :] * cached_keys.to(tl.float32), axis=1), float("-inf"))
    new_best = tl.maximum(best, tl.max(scores, axis=0))
    shift = tl.where(new_best == float("-inf"), 0.0, new_best)  # exp(-inf - -inf) would be NaN
    weights = tl.exp(scores - shift)
    rescale = tl.exp(best - shift)
    total = total * rescale + tl.sum(weights, axis=0)
    acc = acc * rescale + tl.sum(weights[:, None] * cached_values.to(tl.float32), axis=0)
    return new_best, total, acc


@triton.jit
def decode_attention_kernel(qkv_ptr, cos_ptr, sin_ptr, pos_ptr, cache_ptr, out_ptr, partial_ptr, HEADS, KV_HEADS,
                            cache_batch_stride, cache_head_stride, scale, SPLIT_LEN, D: tl.constexpr,
                            BLOCK_S: tl.constexpr, SPLITS: tl.constexpr, OVERLAP: tl.constexpr):
    head = tl.program_id(0)  # a row's heads launch together, so a KV head's query group shares its blocks in L2
    row = tl.program_id(1)
    split = tl.program_id(2)  # cache positions split * SPLIT_LEN .. + SPLIT_LEN (flash-decoding)
    kv_head = head % KV_HEADS  # query head h reads KV head h % KV_HEADS (the model's layout)
    # before the wait: the position (advanced by the previous step), the RoPE row and the split's
    # first cache block (positions < pos, written by earlier steps) - nothing this step has written
    pos = tl.load(pos_ptr + row)
    begin = split * SPLIT_LEN
    end = pos
    if SPLITS > 1:
        end = tl.minimum(begin + SPLIT_LEN, pos)
    dims = tl.arange(0, D)
    partner = dims ^ 1  # the other element of each interleaved RoPE pair
    cos = tl.load(cos_ptr + pos * D + dims).to(tl.float32)
    sin = tl.load(sin_ptr + pos * D + dims).to(tl.float32)  # (-sin, +sin) per pair
    keys = cache_ptr + row * cache_batch_stride + kv_head * cache_head_stride
    values = keys + KV_HEADS * cache_head_stride
    slots = tl.arange(0, BLOCK_S)
    first_filled = begin + slots < end
    first_at = (begin + slots)[:, None] * D + dims[None, :]
    first_keys = tl.load(keys + first_at, mask=first_filled[:, None], other=0.0)
    first_values = tl.load(values + first_at, mask=first_filled[:, None], other=0.0)
    wait_for_previous_kernel(OVERLAP)
    # the new token's key, rotated, and value: every program of a group computes them in
    # registers; the first one (head < KV_HEADS, split 0) also stores them into the cache
    token = qkv_ptr + row * (HEADS + 2 * KV_HEADS) * D
    key = token + (HEADS + kv_head) * D
    new_key = tl.load(key + dims).to(tl.float32) * cos + tl.load(key + partner).to(tl.float32) * sin
    new_key = new_key.to(cache_ptr.dtype.element_ty)
    new_value = tl.load(token + (HEADS + KV_HEADS + kv_head) * D + dims)
    if (head < KV_HEADS) & (split == 0):
        tl.store(keys + pos * D + dims, new_key)
        tl.store(values + pos * D + dims, new_value)
    query = token + head * D
    query = tl.load(query + dims).to(tl.float32) * cos + tl.load(query + partner).to(tl.float32) * sin
    query = query.to(qkv_ptr.dtype.element_ty).to(tl.float32) * scale  # rounded like a stored query
    # online softmax over the split's positions < pos; split 0 is seeded with the new token itself
    seeded = split == 0
    best = tl.where(seeded, tl.sum(query * new_key.to(tl.float32), axis=0), float("-inf"))
    total = tl.where(seeded, 1.0, 0.0)
    acc = tl.where(seeded, new_value.to(tl.float32), 0.0)
    best, total, acc = attend(query, first_keys, first_values, first_filled, best, total, acc)
    for start in range(begin + BLOCK_S, end, BLOCK_S):
        filled = start + slots < end
        at = (start + slots)[:, None] * D + dims[None, :]
        cached_keys = tl.load(keys + at, mask=filled[:, None], other=0.0)
        cached_values = tl.load(values + at, mask=filled[:, None], other=0.0)
        best, total, acc = attend(query, cached_keys, cached_values, filled, best, total, acc)
    if SPLITS == 1:
        tl.store(out_ptr + (row * HEADS + head) * D + dims, (acc / total).to(out_ptr.dtype.element_ty))
    else:  # the split's unnormalised state [acc (D), max, sum], merged by combine_splits_kernel
        partial = partial_ptr + ((row * HEADS + head) * SPLITS + split) * (D + 2)
        tl.store(partial + dims, acc)
        tl.store(partial + D, best)
        tl.store(partial + D + 1, total)


@triton.jit
def combine_splits_kernel(partial_ptr, out_ptr, HEADS, D: tl.constexpr, SPLITS: tl.constexpr,
                          BLOCK_SPLITS: tl.constexpr, OVERLAP: tl.constexpr):
    """Each (row, head)'s attention from its splits' states: weights exp(max_s - max), empty splits 0."""
    wait_for_previous_kernel(OVERLAP)
    head = tl.program_id(0)
    row = tl.program_id(1)
    splits = tl.arange(0, BLOCK_SPLITS)
    dims = tl.arange(0, D)
    used = splits < SPLITS
    partial = partial_ptr + (row * HEADS + head) * SPLITS * (D + 2) + splits * (D + 2)
    maxima = tl.load(partial + D, mask=used, other=float("-inf"))
    totals = tl.load(partial + D + 1, mask=used, other=0.0)
    accs = tl.load(partial[:, None] + dims[None, :], mask=used[:, None], other=0.0)
    weights = tl.exp(maxima - tl.max(maxima, axis=0))  # split 0 always holds the new token: max is finite
    result = tl.sum(weights[:, None] * accs, axis=0) / tl.sum(weights * totals, axis=0)
    tl.store(out_ptr + (row * HEADS + head) * D + dims, result.to(out_ptr.dtype.element_ty))


@triton.jit
def finish_step_kernel(best_ptr, best_index_ptr, programs, tokens_ptr, pos_ptr, step_ptr, out_ptr, out_stride,
                       out_len, B: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr,
                       OVERLAP: tl.constexpr):
    """Every row's greedy token from its candidates, ``BLOCK_P`` candidates of all rows at a time; an
    earlier chunk keeps a tie, and ``tl.argmax`` takes the first within one, as ``torch.argmax``."""
    wait_for_previous_kernel(OVERLAP)
    rows = tl.arange(0, BLOCK_B)
    used = rows < B
    lanes = tl.arange(0, BLOCK_P)
    best = tl.full([BLOCK_B], float("-inf"), tl.float32)
    winner = tl.zeros([BLOCK_B], dtype=tl.int32)
    for start in range(0, programs, BLOCK_P):
        at = start + lanes
        candidates = tl.load(best_ptr + rows[:, None] * programs + at[None, :],
                             mask=used[:, None] & (at[None, :] < programs), other=float("-inf"))
        chunk_best = tl.max(candidates, axis=1)
        better = chunk_best > best
        winner = tl.where(better, start + tl.argmax(candidates, axis=1), winner)
        best = tl.where(better, chunk_best, best)
    token = tl.load(best_index_ptr + rows * programs + winner, mask=used)
    step = tl.load(step_ptr)
    in_output = (rows * 0 + step) < out_len  # the step as a [BLOCK_B] vector, like the mask it joins
    tl.store(out_ptr + rows * out_stride + step, token, mask=used & in_output)
    tl.store(tokens_ptr + rows, token, mask=used)
    tl.store(pos_ptr + rows, tl.load(pos_ptr + rows, mask=used) + 1, mask=used)
    tl.store(step_ptr, step + 1)
