"""Vocab-parallel, memory-bounded SALT loss terms: forward KL to a teacher, and CE fused with it.

The SALT KD term is, per token, ``KL(pT || pS) = sum_v pT(v) * (log pT(v) - log pS(v))``
with both distributions at temperature ``T``. During the KD phase the student also needs
its next-token cross-entropy ``lse(z) - z[label]`` at temperature 1; computing both in one
pass over the student's logits (``vocab_parallel_salt_loss``) shares the reads, the
log-sum-exp at ``T == 1`` and the backward pass, and needs no copy of the logits. Logits
arrive the way Megatron-Core's output layer hands them over: ``[s, b, v_local]``, each
tensor-parallel rank holding one contiguous slice of the (padded) vocabulary.

Why a custom autograd function:

- Only ``O(tokens)`` statistics cross the TP group. Each rank reduces its shard to a few
  numbers per token (teacher and student local max and sum-exp, the teacher-weighted
  logit difference, and for the CE the label's logit if this rank holds it); one
  all-gather of those numbers gives every rank the exact global log-sum-exps and the
  losses, as Megatron-Core's ``vocab_parallel_cross_entropy`` does for CE. The full
  vocabulary is never gathered.
- Memory stays bounded. Work happens on token chunks of a few MiB of fp32, in buffers
  reused across chunks. Between forward and backward only the two input logit tensors
  (which the caller holds anyway) and a few fp32 numbers per token are kept; backward
  recomputes the probabilities chunk by chunk from them, with no collective, and writes
  ``grad_ce * (softmax(z) - onehot(label)) + grad_kd * (pS - pT) / T`` straight into a
  gradient of the student's dtype. A naive ``log_softmax`` + ``kl_div`` keeps several
  fp32 full-vocab tensors alive instead, and Megatron's CE works in place on fp32 logits,
  so next to a KD term it needs its own full copy.

Conventions (also in docs/kd_loss.md):

- Padded vocabulary: columns ``>= vocab_size`` carry no probability in either model and
  get a zero gradient; they are never read, so their values (garbage, -inf) do not
  matter. ``vocab_size`` need not be divisible by the TP size; whole shards may be padding.
  This holds for the CE too, unlike Megatron's CE, whose softmax includes padded columns.
- ``top_k``: the teacher keeps the logits ``>=`` the k-th largest of its valid logits
  across all TP ranks, renormalised over that set. Ties at the threshold are all kept,
  so the set can exceed k entries. The student stays the full softmax over the valid
  vocabulary, so its gradient reaches every column.
- No ``T**2`` factor: the caller scales the loss if it wants one.
- Valid columns must be finite and labels must lie in ``[0, vocab_size)``. Anything else
  is a ``ValueError`` raised identically on every TP rank (the checks run on the gathered
  statistics), so a bad batch never hangs the group and never becomes a silent NaN loss.
- The teacher is a constant: no gradient reaches ``teacher_logits`` even if it requires
  grad (it is detached).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from megatron_salt.distill.shard import VocabShard, resolve_tp_group

__all__ = ["vocab_parallel_kd_loss", "vocab_parallel_salt_loss"]

# fp32 elements per work buffer (three buffers, 4 MiB each). Large enough to amortise
# the per-chunk Python and kernel-launch overhead, small enough to stay cache- and
# allocator-friendly; tuned with benchmarks/kd_loss.py. Read at call time, so tests
# can shrink it to exercise chunk boundaries.
CHUNK_ELEMENTS = 1 << 20

_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Per-token statistics a rank computes on its shard, in this row order. The first five
# serve the KD term. The CE adds the label's logit and whether this rank's valid columns
# hold the label (the gathered sum must be exactly 1), and, only when T != 1, the
# student's max and sum-exp at temperature 1 (at T == 1 the KD's own are shared).
_T_MAX, _T_SUMEXP, _T_WEIGHTED_DIFF, _S_MAX, _S_SUMEXP = range(5)
_LABEL_LOGIT, _LABEL_HELD, _S1_MAX, _S1_SUMEXP = range(5, 9)


def _all_gather_stacked(tensor: torch.Tensor, group, world_size: int) -> torch.Tensor:
    """All-gather a small tensor; result is ``[world_size, *tensor.shape]``."""
    if world_size == 1:
        return tensor.unsqueeze(0)
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.contiguous(), group=group)
    return torch.stack(parts)


def _chunk_rows(num_columns: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(1, num_columns))


class _Shard(NamedTuple):
    """Where this rank's vocab shard sits, and the loss settings shared by both passes."""

    vocab: VocabShard
    temperature: float
    top_k: int | None
    caller: str  # public function name, for error messages

    @property
    def n_valid(self) -> int:
        return self.vocab.n_valid

    @property
    def group(self):
        return self.vocab.group

    @property
    def world_size(self) -> int:
        return self.vocab.world_size


def _local_labels(labels_1d: torch.Tensor, shard: _Shard) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token: the label's column in this shard (0 where not held) and whether it is held."""
    local = labels_1d - shard.vocab.offset
    held = (local >= 0) & (local < shard.n_valid)
    return torch.where(held, local, 0), held


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


def _num_statistics(with_ce: bool, temperature: float) -> int:
    if not with_ce:
        return 5
    return 7 if temperature == 1.0 else 9


def _shard_statistics(student_valid, teacher_valid, threshold, labels_1d, shard) -> torch.Tensor:
    """Local per-token statistics ``[5, 7 or 9, tokens]`` (fp32) over this rank's valid columns.

    With ``E = exp(zT - mT_local)`` (zeroed outside the teacher's top-k set):
    teacher max and sum E, ``sum E * (zT - zS)``, student max and sum-exp (all at T).
    With ``labels_1d``: the label logit where held, the held flag, and at ``T != 1`` the
    student's max and sum-exp at T = 1 (one more exp pass). Maxima are local reference
    points; the combination step rescales them to the global maximum.
    """
    tokens, n_valid = student_valid.shape
    temperature = shard.temperature
    with_ce = labels_1d is not None
    ce_needs_own_lse = with_ce and temperature != 1.0
    # Statistic-major, so each per-chunk reduction writes a contiguous slice.
    stats = torch.zeros(
        _num_statistics(with_ce, temperature),
        tokens,
        dtype=torch.float32,
        device=student_valid.device,
    )
    if with_ce:
        local, held = _local_labels(labels_1d, shard)
        stats[_LABEL_HELD] = held.float()
        if n_valid > 0:
            label_logit = student_valid.gather(1, local[:, None]).squeeze(1).float()
            stats[_LABEL_LOGIT] = torch.where(held, label_logit, 0.0)
    if n_valid == 0:  # this rank's whole shard is vocab padding
        for row in (_T_MAX, _S_MAX) + ((_S1_MAX,) if ce_needs_own_lse else ()):
            stats[row] = float("-inf")
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
        if ce_needs_own_lse:
            s1_max = stats[_S1_MAX, start:stop]
            torch.amax(zs, dim=-1, out=s1_max)
            torch.sub(zs, s1_max[:, None], out=e)
            torch.sum(e.exp_(), dim=-1, out=stats[_S1_SUMEXP, start:stop])
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


class _Combined(NamedTuple):
    """Per-token results of the gathered statistics (float64)."""

    kd: torch.Tensor
    t_lse: torch.Tensor  # teacher log-sum-exp at T (over its kept set)
    s_lse: torch.Tensor  # student log-sum-exp at T
    ce: torch.Tensor | None = None
    ce_lse: torch.Tensor | None = None  # student log-sum-exp at T = 1 (is s_lse when T == 1)
    labels_held: torch.Tensor | None = None  # how many ranks hold the label: must be 1


def _rescaled_lse(g: torch.Tensor, max_row: int, sumexp_row: int):
    """Global max, global sum-exp and log-sum-exp from every rank's local ``(max, sum-exp)``."""
    global_max = g[:, max_row].amax(dim=0)
    scale = torch.exp(g[:, max_row] - global_max)
    sumexp = (g[:, sumexp_row] * scale).sum(dim=0)
    return global_max, scale, sumexp, global_max + torch.log(sumexp)


def _combine_statistics(gathered: torch.Tensor, temperature: float) -> _Combined:
    """Global log-sum-exps and losses per token from every rank's statistics ``[tp, rows, tokens]``.

    Done in float64: it is O(tokens) work and keeps the cancellation in
    ``E_pT[zT - zS] - lseT + lseS`` (small KL, large terms) harmless.
    """
    g = gathered.double()
    t_max, t_scale, t_sumexp, t_lse = _rescaled_lse(g, _T_MAX, _T_SUMEXP)
    s_max, _, s_sumexp, s_lse = _rescaled_lse(g, _S_MAX, _S_SUMEXP)
    weighted_diff = (g[:, _T_WEIGHTED_DIFF] * t_scale).sum(dim=0)
    kd = (weighted_diff / t_sumexp - (t_max - s_max)) - torch.log(t_sumexp) + torch.log(s_sumexp)
    if g.shape[1] == _num_statistics(False, temperature):
        return _Combined(kd, t_lse, s_lse)
    ce_lse = s_lse if temperature == 1.0 else _rescaled_lse(g, _S1_MAX, _S1_SUMEXP)[3]
    # Exactly one rank contributes a non-zero label logit.
    ce = ce_lse - g[:, _LABEL_LOGIT].sum(dim=0)
    return _Combined(kd, t_lse, s_lse, ce, ce_lse, g[:, _LABEL_HELD].sum(dim=0))


def _raise_if_invalid(combined: _Combined, shard: _Shard) -> None:
    """Same decision on every rank: all inputs are the all-gathered statistics.

    The CE needs no check of its own: any non-finite valid student logit already makes
    the student's log-sum-exp (NaN, +inf) or the KL (-inf, even where ``pT`` is 0, as
    ``0 * inf``) non-finite, and with finite logits ``lse - z[label]`` is finite.
    """
    hint = (
        "refusing to return a NaN/inf loss (valid columns must be finite; pass vocab_size so "
        "padded columns are ignored)"
    )
    no_finite = "logits contain NaN or +inf (or no finite value)"
    checks = [  # (bad tokens, what, hint), reported in this order
        (~torch.isfinite(combined.t_lse), f"teacher {no_finite}", hint),
        (~torch.isfinite(combined.s_lse), f"student {no_finite}", hint),
        (
            ~torch.isfinite(combined.kd),
            "teacher or student logits contain -inf in valid vocab columns",
            hint,
        ),
    ]
    if combined.ce is not None:
        checks.append(
            (
                combined.labels_held != 1,
                f"labels outside [0, vocab_size={shard.vocab.vocab_size})",
                "labels must be token ids of the true vocabulary",
            )
        )
    bad = torch.stack([mask for mask, *_ in checks]).any(dim=1)
    if not bool(bad.any()):
        return
    mask, what, hint = checks[int(bad.nonzero()[0])]
    where = (
        f"{int(mask.sum())} of {mask.numel()} tokens (first: flat token {int(mask.nonzero()[0])})"
    )
    raise ValueError(f"{shard.caller}: {what} in {where}; {hint}")


class _VocabParallelDistillLoss(torch.autograd.Function):
    """KD alone (one output) or CE and KD from the same pass (two outputs, ``labels`` given)."""

    @staticmethod
    def forward(ctx, student, teacher, labels, shard: _Shard):
        v_local = student.shape[-1]
        student_valid = student.reshape(-1, v_local)[:, : shard.n_valid]
        teacher_valid = teacher.reshape(-1, v_local)[:, : shard.n_valid]
        labels_1d = None if labels is None else labels.reshape(-1)

        threshold = None
        if shard.top_k is not None:
            threshold = _teacher_topk_threshold(
                teacher_valid, shard.top_k, shard.group, shard.world_size
            )
        stats = _shard_statistics(student_valid, teacher_valid, threshold, labels_1d, shard)
        gathered = _all_gather_stacked(stats, shard.group, shard.world_size)
        combined = _combine_statistics(gathered, shard.temperature)
        _raise_if_invalid(combined, shard)

        # Either output may go unused; its gradient then arrives as None and its
        # term is skipped in backward rather than computed and multiplied by zero.
        ctx.set_materialize_grads(False)
        ctx.shard = shard
        ctx.has_threshold = threshold is not None
        ctx.with_ce = labels_1d is not None
        ctx.ce_has_own_lse = ctx.with_ce and shard.temperature != 1.0
        saved = [student, teacher, combined.t_lse.float(), combined.s_lse.float()]
        if threshold is not None:
            saved.append(threshold)
        if ctx.with_ce:
            saved.append(labels_1d)
        if ctx.ce_has_own_lse:
            saved.append(combined.ce_lse.float())
        ctx.save_for_backward(*saved)
        kd = combined.kd.float().reshape(student.shape[:-1])
        if not ctx.with_ce:
            return kd
        return combined.ce.float().reshape(student.shape[:-1]), kd

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_outputs):
        grad_ce, grad_kd = grad_outputs if ctx.with_ce else (None, grad_outputs[0])
        student, teacher, t_lse, s_lse, *rest = ctx.saved_tensors
        threshold = rest.pop(0) if ctx.has_threshold else None
        labels_1d = rest.pop(0) if ctx.with_ce else None
        ce_lse = rest.pop(0) if ctx.ce_has_own_lse else s_lse
        no_grads = (None,) * 3
        if grad_ce is None and grad_kd is None:
            return (None, *no_grads)
        grad = _student_gradient(
            student,
            teacher,
            t_lse,
            s_lse,
            ce_lse,
            threshold,
            labels_1d,
            grad_ce,
            grad_kd,
            ctx.shard,
        )
        return (grad, *no_grads)


def _student_gradient(
    student, teacher, t_lse, s_lse, ce_lse, threshold, labels_1d, grad_ce, grad_kd, shard
) -> torch.Tensor:
    """``grad_ce * (softmax(z) - onehot(label)) + grad_kd * (pS - pT) / T``, chunk by chunk.

    No collective: the saved global log-sum-exps normalise each rank's columns. Each
    term is skipped when its upstream gradient is ``None``. At ``T == 1``,
    ``softmax(z)`` is ``pS`` itself, so the two terms share one exp pass.
    """
    temperature, n_valid = shard.temperature, shard.n_valid
    v_local = student.shape[-1]
    student_valid = student.reshape(-1, v_local)[:, :n_valid]
    teacher_valid = teacher.reshape(-1, v_local)[:, :n_valid]
    tokens = student_valid.shape[0]
    # d KL / d s_v = (pS(v) - pT(v)) / T
    kd_scale = None if grad_kd is None else grad_kd.reshape(-1).float() / temperature
    ce_scale = None if grad_ce is None else grad_ce.reshape(-1).float()
    shared_exp = kd_scale is not None and ce_scale is not None and temperature == 1.0
    both_scale = kd_scale + ce_scale if shared_exp else None
    if ce_scale is not None:
        # d CE / d s_v = softmax(s)(v) - [v == label]: the -1 lands on the rank holding it.
        label_column, held = _local_labels(labels_1d, shard)
        label_update = torch.where(held, -ce_scale, 0.0)

    grad = torch.empty_like(student, memory_format=torch.contiguous_format)
    grad_2d = grad.view(-1, v_local)
    grad_2d[:, n_valid:].zero_()
    if n_valid == 0 or tokens == 0:
        return grad
    rows = _chunk_rows(n_valid)
    buffer_rows = min(rows, tokens)
    p_student = student_valid.new_empty((buffer_rows, n_valid), dtype=torch.float32)
    p_teacher = torch.empty_like(p_student) if kd_scale is not None else None
    # softmax at T = 1 needs its own buffer only next to a KD term at T != 1
    p_unit = None
    if ce_scale is not None and kd_scale is not None and not shared_exp:
        p_unit = torch.empty_like(p_student)
    dropped = None
    if threshold is not None and kd_scale is not None:
        dropped = torch.empty((buffer_rows, n_valid), dtype=torch.bool, device=grad.device)
    for start in range(0, tokens, rows):
        stop = min(start + rows, tokens)
        n = stop - start
        ps = p_student[:n]
        ps.copy_(student_valid[start:stop])
        if kd_scale is None:  # CE only: ps becomes softmax(z) * grad_ce
            ps.sub_(ce_lse[start:stop, None]).exp_().mul_(ce_scale[start:stop, None])
        else:
            p1 = None if p_unit is None else p_unit[:n]
            if p1 is not None:
                torch.sub(ps, ce_lse[start:stop, None], out=p1).exp_()
            pt = p_teacher[:n]
            pt.copy_(teacher_valid[start:stop])
            if temperature != 1.0:
                ps.div_(temperature)
                pt.div_(temperature)
            ps.sub_(s_lse[start:stop, None]).exp_()
            pt.sub_(t_lse[start:stop, None]).exp_()
            if dropped is not None:
                torch.lt(teacher_valid[start:stop], threshold[start:stop, None], out=dropped[:n])
                pt.masked_fill_(dropped[:n], 0.0)
            if shared_exp:  # (grad_ce + grad_kd) * pS - grad_kd * pT
                ps.mul_(both_scale[start:stop, None]).sub_(pt.mul_(kd_scale[start:stop, None]))
            else:
                ps.sub_(pt).mul_(kd_scale[start:stop, None])
                if p1 is not None:
                    ps.addcmul_(p1, ce_scale[start:stop, None])
        if ce_scale is not None:
            ps.scatter_add_(1, label_column[start:stop, None], label_update[start:stop, None])
        grad_2d[start:stop, :n_valid].copy_(ps)
    return grad


def _resolve_shard(
    caller, student_logits, teacher_logits, vocab_size, temperature, top_k, tp_group
):
    """Validate the logits and loss settings shared by both public functions."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"{caller}: student logits {tuple(student_logits.shape)} and teacher "
            f"logits {tuple(teacher_logits.shape)} differ in shape; bring the teacher onto the "
            "student's vocab shards first (megatron_salt.distill.teacher_logits_to_student_shard)"
        )
    if student_logits.dim() < 1 or student_logits.shape[-1] == 0:
        raise ValueError(f"{caller}: logits need a non-empty last (vocab) dimension")
    for name, tensor in (("student", student_logits), ("teacher", teacher_logits)):
        if tensor.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(
                f"{caller}: {name} logits have dtype {tensor.dtype}; "
                "expected float32, bfloat16 or float16"
            )
    if student_logits.device != teacher_logits.device:
        raise ValueError(
            f"{caller}: student logits on {student_logits.device}, "
            f"teacher logits on {teacher_logits.device}"
        )
    temperature = float(temperature)
    if not (temperature > 0.0 and temperature != float("inf")):
        raise ValueError(f"{caller}: temperature must be > 0, got {temperature}")

    v_local = student_logits.shape[-1]
    vocab = VocabShard.of(resolve_tp_group(tp_group), v_local, vocab_size)
    if not (1 <= vocab.vocab_size <= vocab.padded_vocab):
        raise ValueError(
            f"{caller}: vocab_size={vocab.vocab_size} outside [1, {vocab.padded_vocab}] "
            f"(padded vocab = {v_local} columns per rank x TP {vocab.world_size})"
        )
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"{caller}: top_k must be a positive int, got {top_k!r}")
        if top_k >= vocab.vocab_size:
            top_k = None  # the whole vocabulary is kept
    return _Shard(vocab=vocab, temperature=temperature, top_k=top_k, caller=caller)


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
    shard = _resolve_shard(
        "vocab_parallel_kd_loss",
        student_logits,
        teacher_logits,
        vocab_size,
        temperature,
        top_k,
        tp_group,
    )
    return _VocabParallelDistillLoss.apply(student_logits, teacher_logits.detach(), None, shard)


def vocab_parallel_salt_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    vocab_size: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    tp_group: dist.ProcessGroup | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token next-token CE and forward KL of the student, from one pass over its logits.

    ``kd`` is exactly :func:`vocab_parallel_kd_loss` (same arguments, same conventions).
    ``ce`` is ``lse(z) - z[label]`` at temperature 1 over the *valid* vocabulary: padded
    columns carry no probability and get no gradient, as in the KD term. (Megatron-Core's
    ``vocab_parallel_cross_entropy`` normalises over the padded vocabulary instead; the two
    agree when there is no padding.) Compared with the KD loss plus Megatron's CE, this
    saves the copy of the logits Megatron's in-place CE would need, its full-vocab passes,
    and, at ``T == 1``, shares the student's log-sum-exp between the two terms.

    Args:
        student_logits, teacher_logits, vocab_size, temperature, top_k, tp_group: as in
            :func:`vocab_parallel_kd_loss`.
        labels: ``student_logits.shape[:-1]`` global vocab ids, integer dtype, the same on
            every TP rank (as Megatron broadcasts them); must lie in ``[0, vocab_size)``.

    Returns:
        ``(ce, kd)``: fp32, each of shape ``student_logits.shape[:-1]``, identical on all
        TP ranks; both differentiable with respect to ``student_logits``. The backward
        writes ``grad_ce * (softmax(z) - onehot(label)) + grad_kd * (pS - pT) / T`` in the
        student's dtype without a collective; an output left out of the loss costs nothing
        in backward.

    Raises:
        ValueError: mismatched shapes or bad arguments; non-finite logits in valid
            columns; labels outside the true vocabulary (same error on every TP rank).
    """
    caller = "vocab_parallel_salt_loss"
    shard = _resolve_shard(
        caller, student_logits, teacher_logits, vocab_size, temperature, top_k, tp_group
    )
    if labels.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"{caller}: labels {tuple(labels.shape)} do not match the logits' leading shape "
            f"{tuple(student_logits.shape[:-1])} (Megatron layout: [s, b], transpose [b, s] "
            "labels first)"
        )
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"{caller}: labels have dtype {labels.dtype}; expected an integer dtype")
    if labels.device != student_logits.device:
        raise ValueError(
            f"{caller}: labels on {labels.device}, student logits on {student_logits.device}"
        )
    return _VocabParallelDistillLoss.apply(
        student_logits, teacher_logits.detach(), labels.detach().long(), shard
    )
