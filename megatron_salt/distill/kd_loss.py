"""Vocab-parallel, memory-bounded forward KL from a teacher to a student LM.

The SALT KD term is, per token, ``KL(pT || pS) = sum_v pT(v) * (log pT(v) - log pS(v))``
with both distributions at temperature ``T``. Logits arrive the way Megatron-Core's
output layer hands them over: ``[s, b, v_local]``, each tensor-parallel rank holding one
contiguous slice of the (padded) vocabulary.

Why a custom autograd function:

- Only ``O(tokens)`` statistics cross the TP group. Each rank reduces its shard to five
  numbers per token (teacher and student local max and sum-exp, and the teacher-weighted
  logit difference); one all-gather of those numbers gives every rank the exact global
  log-sum-exps and the loss, as Megatron-Core's ``vocab_parallel_cross_entropy`` does for
  CE. The full vocabulary is never gathered.
- Memory stays bounded. Work happens on token chunks of a few MiB of fp32, in buffers
  reused across chunks. Between forward and backward only the two input logit tensors
  (which the caller holds anyway) and two fp32 numbers per token are kept; backward
  recomputes ``pS`` and ``pT`` chunk by chunk from them, with no collective, and writes
  ``grad_out * (pS - pT) / T`` straight into a gradient of the student's dtype. A naive
  ``log_softmax`` + ``kl_div`` keeps several fp32 full-vocab tensors alive instead.

Conventions (also in docs/kd_loss.md):

- Padded vocabulary: columns ``>= vocab_size`` carry no probability in either model and
  get a zero gradient; they are never read, so their values (garbage, -inf) do not
  matter. ``vocab_size`` need not be divisible by the TP size; whole shards may be padding.
- ``top_k``: the teacher keeps the logits ``>=`` the k-th largest of its valid logits
  across all TP ranks, renormalised over that set. Ties at the threshold are all kept,
  so the set can exceed k entries. The student stays the full softmax over the valid
  vocabulary, so its gradient reaches every column.
- No ``T**2`` factor: the caller scales the loss if it wants one.
- Valid columns must be finite. NaN/+inf in either model, or -inf, is a ``ValueError``
  raised identically on every TP rank (the check runs on the gathered statistics), so a
  bad batch never hangs the group and never becomes a silent NaN loss.
- The teacher is a constant: no gradient reaches ``teacher_logits`` even if it requires
  grad (it is detached).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

__all__ = ["vocab_parallel_kd_loss"]

# fp32 elements per work buffer (three buffers, 4 MiB each). Large enough to amortise
# the per-chunk Python and kernel-launch overhead, small enough to stay cache- and
# allocator-friendly; tuned with benchmarks/kd_loss.py. Read at call time, so tests
# can shrink it to exercise chunk boundaries.
CHUNK_ELEMENTS = 1 << 20

_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Per-token statistics a rank computes on its shard, in this column order.
_T_MAX, _T_SUMEXP, _T_WEIGHTED_DIFF, _S_MAX, _S_SUMEXP = range(5)


def _resolve_tp_group(tp_group):
    """``None`` means Megatron-Core's TP group when model parallel is initialised, else no TP."""
    if tp_group is not None:
        return tp_group
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        return parallel_state.get_tensor_model_parallel_group()
    return None


def _group_size_and_rank(group) -> tuple[int, int]:
    if group is None or not dist.is_initialized():
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def _all_gather_stacked(tensor: torch.Tensor, group, world_size: int) -> torch.Tensor:
    """All-gather a small tensor; result is ``[world_size, *tensor.shape]``."""
    if world_size == 1:
        return tensor.unsqueeze(0)
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return torch.stack(parts)


def _chunk_rows(num_columns: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(1, num_columns))


def _teacher_topk_threshold(teacher_valid, top_k, group, world_size) -> torch.Tensor:
    """Per token, the k-th largest valid teacher logit across all TP ranks (fp32, raw scale).

    Each rank contributes its local top-k (padded with -inf where it has fewer valid
    columns), so ``k * tp`` numbers per token travel, never the vocabulary.
    """
    tokens, n_valid = teacher_valid.shape
    local = teacher_valid.new_full((tokens, top_k), float("-inf"), dtype=torch.float32)
    kept = min(top_k, n_valid)
    if kept > 0:
        local[:, :kept] = torch.topk(teacher_valid, kept, dim=-1, sorted=False).values.float()
    candidates = _all_gather_stacked(local, group, world_size)  # [tp, tokens, k]
    candidates = candidates.permute(1, 0, 2).reshape(tokens, world_size * top_k)
    return torch.topk(candidates, top_k, dim=-1, sorted=False).values.amin(dim=-1)


def _shard_statistics(student_valid, teacher_valid, threshold, temperature) -> torch.Tensor:
    """Local per-token statistics ``[5, tokens]`` (fp32) over this rank's valid columns.

    With ``E = exp(zT - mT_local)`` (zeroed outside the teacher's top-k set):
    teacher max and sum E, ``sum E * (zT - zS)``, student max and sum-exp. Maxima are
    local reference points; the combination step rescales them to the global maximum.
    """
    tokens, n_valid = student_valid.shape
    # Statistic-major, so each per-chunk reduction writes a contiguous slice.
    stats = torch.empty(5, tokens, dtype=torch.float32, device=student_valid.device)
    if n_valid == 0:  # this rank's whole shard is vocab padding
        stats.zero_()
        stats[_T_MAX] = float("-inf")
        stats[_S_MAX] = float("-inf")
        return stats
    rows = _chunk_rows(n_valid)
    buffer_rows = min(rows, tokens)
    z_student = student_valid.new_empty((buffer_rows, n_valid), dtype=torch.float32)
    z_teacher = torch.empty_like(z_student)
    exps = torch.empty_like(z_student)
    dropped = None
    if threshold is not None:
        dropped = torch.empty((buffer_rows, n_valid), dtype=torch.bool, device=z_student.device)
    for start in range(0, tokens, rows):
        stop = min(start + rows, tokens)
        n = stop - start
        zs, zt, e = z_student[:n], z_teacher[:n], exps[:n]
        zs.copy_(student_valid[start:stop])
        zt.copy_(teacher_valid[start:stop])
        if temperature != 1.0:
            zs.div_(temperature)
            zt.div_(temperature)
        s_max, s_sumexp = stats[_S_MAX, start:stop], stats[_S_SUMEXP, start:stop]
        t_max, t_sumexp = stats[_T_MAX, start:stop], stats[_T_SUMEXP, start:stop]
        torch.amax(zs, dim=-1, out=s_max)
        torch.amax(zt, dim=-1, out=t_max)
        torch.sub(zs, s_max[:, None], out=e)
        torch.sum(e.exp_(), dim=-1, out=s_sumexp)
        zs.neg_().add_(zt)  # zs now holds zT - zS
        torch.sub(zt, t_max[:, None], out=e)
        e.exp_()
        if dropped is not None:
            # Compare raw logits so the kept set does not depend on T's rounding.
            torch.lt(teacher_valid[start:stop], threshold[start:stop, None], out=dropped[:n])
            e.masked_fill_(dropped[:n], 0.0)
        torch.sum(e, dim=-1, out=t_sumexp)
        torch.sum(e.mul_(zs), dim=-1, out=stats[_T_WEIGHTED_DIFF, start:stop])
    return stats


def _combine_statistics(gathered: torch.Tensor):
    """Global log-sum-exps and KL per token from every rank's statistics ``[tp, 5, tokens]``.

    Done in float64: it is O(tokens) work and keeps the cancellation in
    ``E_pT[zT - zS] - lseT + lseS`` (small KL, large terms) harmless.
    """
    g = gathered.double()
    t_max = g[:, _T_MAX].amax(dim=0)
    s_max = g[:, _S_MAX].amax(dim=0)
    t_scale = torch.exp(g[:, _T_MAX] - t_max)
    s_scale = torch.exp(g[:, _S_MAX] - s_max)
    t_sumexp = (g[:, _T_SUMEXP] * t_scale).sum(dim=0)
    s_sumexp = (g[:, _S_SUMEXP] * s_scale).sum(dim=0)
    weighted_diff = (g[:, _T_WEIGHTED_DIFF] * t_scale).sum(dim=0)
    t_lse = t_max + torch.log(t_sumexp)
    s_lse = s_max + torch.log(s_sumexp)
    loss = (weighted_diff / t_sumexp - (t_max - s_max)) - torch.log(t_sumexp) + torch.log(s_sumexp)
    return loss, t_lse, s_lse


def _raise_if_nonfinite(loss, t_lse, s_lse) -> None:
    """Same decision on every rank: all inputs are the all-gathered statistics."""
    bad_teacher = ~torch.isfinite(t_lse)
    bad_student = ~torch.isfinite(s_lse)
    bad_loss = ~torch.isfinite(loss)
    if not bool(bad_loss.any() | bad_teacher.any() | bad_student.any()):
        return
    tokens = loss.numel()

    def where(mask) -> str:
        return f"{int(mask.sum())} of {tokens} tokens (first: flat token {int(mask.nonzero()[0])})"

    if bool(bad_teacher.any()):
        what = "teacher logits contain NaN or +inf (or no finite value)"
        mask = bad_teacher
    elif bool(bad_student.any()):
        what = "student logits contain NaN or +inf (or no finite value)"
        mask = bad_student
    else:
        what = "teacher or student logits contain -inf in valid vocab columns"
        mask = bad_loss
    raise ValueError(
        f"vocab_parallel_kd_loss: {what} in {where(mask)}; refusing to return a NaN/inf "
        "KD loss (valid columns must be finite; pass vocab_size so padded columns are ignored)"
    )


class _VocabParallelKDLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student, teacher, n_valid, temperature, top_k, group, world_size):
        v_local = student.shape[-1]
        student_2d = student.reshape(-1, v_local)
        teacher_2d = teacher.reshape(-1, v_local)
        student_valid = student_2d[:, :n_valid]
        teacher_valid = teacher_2d[:, :n_valid]

        threshold = None
        if top_k is not None:
            threshold = _teacher_topk_threshold(teacher_valid, top_k, group, world_size)
        stats = _shard_statistics(student_valid, teacher_valid, threshold, temperature)
        loss, t_lse, s_lse = _combine_statistics(_all_gather_stacked(stats, group, world_size))
        _raise_if_nonfinite(loss, t_lse, s_lse)

        ctx.n_valid = n_valid
        ctx.temperature = temperature
        ctx.has_threshold = threshold is not None
        saved = [student, teacher, t_lse.float(), s_lse.float()]
        if threshold is not None:
            saved.append(threshold)
        ctx.save_for_backward(*saved)
        return loss.float().reshape(student.shape[:-1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        student, teacher, t_lse, s_lse, *rest = ctx.saved_tensors
        threshold = rest[0] if ctx.has_threshold else None
        n_valid, temperature = ctx.n_valid, ctx.temperature
        v_local = student.shape[-1]
        student_valid = student.reshape(-1, v_local)[:, :n_valid]
        teacher_valid = teacher.reshape(-1, v_local)[:, :n_valid]
        tokens = student_valid.shape[0]
        # d KL / d s_v = (pS(v) - pT(v)) / T
        row_scale = grad_loss.reshape(-1).float() / temperature

        grad = torch.empty_like(student, memory_format=torch.contiguous_format)
        grad_2d = grad.view(-1, v_local)
        grad_2d[:, n_valid:].zero_()
        if n_valid == 0 or tokens == 0:
            return grad, None, None, None, None, None, None
        rows = _chunk_rows(n_valid)
        buffer_rows = min(rows, tokens)
        p_student = student_valid.new_empty((buffer_rows, n_valid), dtype=torch.float32)
        p_teacher = torch.empty_like(p_student)
        dropped = None
        if threshold is not None:
            dropped = torch.empty((buffer_rows, n_valid), dtype=torch.bool, device=grad.device)
        for start in range(0, tokens, rows):
            stop = min(start + rows, tokens)
            n = stop - start
            ps, pt = p_student[:n], p_teacher[:n]
            ps.copy_(student_valid[start:stop])
            pt.copy_(teacher_valid[start:stop])
            if temperature != 1.0:
                ps.div_(temperature)
                pt.div_(temperature)
            ps.sub_(s_lse[start:stop, None]).exp_()
            pt.sub_(t_lse[start:stop, None]).exp_()
            if dropped is not None:
                torch.lt(teacher_valid[start:stop], threshold[start:stop, None], out=dropped[:n])
                pt.masked_fill_(dropped[:n], 0.0)
            ps.sub_(pt).mul_(row_scale[start:stop, None])
            grad_2d[start:stop, :n_valid].copy_(ps)
        return grad, None, None, None, None, None, None


def vocab_parallel_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    vocab_size: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    tp_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Per-token forward KL ``sum_v pT(v) * (log pT(v) - log pS(v))``, vocab-parallel.

    Args:
        student_logits: ``[s, b, v_local]``, this TP rank's slice of the padded vocabulary
            (Megatron layout: rank r holds columns ``[r * v_local, (r + 1) * v_local)``).
            fp32, bf16 or fp16. Must stay unmodified until backward (autograd checks).
        teacher_logits: same shape and sharding (see ``teacher_logits_to_student_shard``);
            any of the same dtypes. Treated as a constant: it never receives a gradient.
        vocab_size: true vocabulary size; columns ``>= vocab_size`` are padding with no
            probability in either model. ``None``: every column is real.
        temperature: both distributions are softmax(logits / T). No ``T**2`` factor.
        top_k: restrict the teacher to its global top-k logits (ties at the k-th value
            all kept) and renormalise; ``None`` or ``>= vocab_size``: full vocabulary.
        tp_group: the tensor-parallel group sharding the vocabulary. ``None``: Megatron-Core's
            TP group if model parallel is initialised, else no tensor parallelism.

    Returns:
        fp32 loss of shape ``student_logits.shape[:-1]`` (``[s, b]``), identical on all
        TP ranks; differentiable with respect to ``student_logits``.

    Raises:
        ValueError: mismatched shapes or bad arguments; non-finite logits in valid
            columns (same error on every TP rank).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"vocab_parallel_kd_loss: student logits {tuple(student_logits.shape)} and teacher "
            f"logits {tuple(teacher_logits.shape)} differ in shape; bring the teacher onto the "
            "student's vocab shards first (megatron_salt.distill.teacher_logits_to_student_shard)"
        )
    if student_logits.dim() < 1 or student_logits.shape[-1] == 0:
        raise ValueError("vocab_parallel_kd_loss: logits need a non-empty last (vocab) dimension")
    for name, tensor in (("student", student_logits), ("teacher", teacher_logits)):
        if tensor.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(
                f"vocab_parallel_kd_loss: {name} logits have dtype {tensor.dtype}; "
                "expected float32, bfloat16 or float16"
            )
    if student_logits.device != teacher_logits.device:
        raise ValueError(
            f"vocab_parallel_kd_loss: student logits on {student_logits.device}, "
            f"teacher logits on {teacher_logits.device}"
        )
    temperature = float(temperature)
    if not (temperature > 0.0 and temperature != float("inf")):
        raise ValueError(f"vocab_parallel_kd_loss: temperature must be > 0, got {temperature}")

    group = _resolve_tp_group(tp_group)
    world_size, rank = _group_size_and_rank(group)
    v_local = student_logits.shape[-1]
    padded_vocab = v_local * world_size
    if vocab_size is None:
        vocab_size = padded_vocab
    if not (1 <= vocab_size <= padded_vocab):
        raise ValueError(
            f"vocab_parallel_kd_loss: vocab_size={vocab_size} outside [1, {padded_vocab}] "
            f"(padded vocab = {v_local} columns per rank x TP {world_size})"
        )
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"vocab_parallel_kd_loss: top_k must be a positive int, got {top_k!r}")
        if top_k >= vocab_size:
            top_k = None  # the whole vocabulary is kept
    n_valid = min(max(vocab_size - rank * v_local, 0), v_local)
    return _VocabParallelKDLoss.apply(
        student_logits, teacher_logits.detach(), n_valid, temperature, top_k, group, world_size
    )
