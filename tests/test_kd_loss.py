"""The KD loss, the fused CE + KD loss, combine_salt_loss and the vocab helpers vs float64.

The reference is written here, independently of the implementation: a plain float64
softmax over the full (gathered) vocabulary, with the teacher's top-k set defined by
sorting. All TP=2 cases share one pair of forked gloo ranks (a module fixture), and
the work buffers are shrunk so that every case crosses several chunk boundaries.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from megatron_salt.distill import (
    check_vocab_compatible,
    combine_salt_loss,
    teacher_logits_to_student_shard,
    vocab_parallel_kd_loss,
    vocab_parallel_salt_loss,
)
from megatron_salt.testing import run_on_ranks

SEQ, BATCH, PADDED, TP = 5, 3, 40, 2
SHARD = PADDED // TP
# 90 fp32 elements per work buffer: 4/2/5 tokens per chunk for 20/37/17 valid columns,
# so chunk loops run several times, with and without a short last chunk.
SMALL_CHUNK = 90

# vocab 37: padding inside rank 1's shard; 17: rank 1's shard is all padding; None: no padding.
CASES = [
    dict(dtype=dtype, temperature=temperature, top_k=top_k, vocab_size=vocab_size)
    for dtype, temperature, top_k, vocab_size in itertools.product(
        (torch.float32, torch.bfloat16), (1.0, 2.0), (None, 2), (37, 17, None)
    )
]


def _case_id(case) -> str:
    dtype = str(case["dtype"]).removeprefix("torch.")
    return f"{dtype}-T{case['temperature']:g}-k{case['top_k']}-V{case['vocab_size']}"


def _inputs(case, seed: int):
    """Full padded student/teacher logits [SEQ, BATCH, PADDED] and an upstream gradient.

    Padded columns hold garbage (NaN for the teacher, huge for the student) to show
    they are never read. Token (0, 0) has a 4-way tie at the teacher's top.
    """
    gen = torch.Generator().manual_seed(seed)
    vocab = case["vocab_size"] or PADDED
    student = torch.randn(SEQ, BATCH, PADDED, generator=gen) * 2.5
    teacher = 0.6 * student + 2.0 * torch.randn(SEQ, BATCH, PADDED, generator=gen)
    tied = [c for c in (3, 15, 21, 33) if c < vocab]
    teacher[0, 0, tied] = 9.0
    student[..., vocab:] = 1e4
    teacher[..., vocab:] = float("nan")
    grad_out = torch.randn(SEQ, BATCH, generator=gen)
    grad_out[1, :] = 0.0  # like masked tokens
    return student.to(case["dtype"]), teacher.to(case["dtype"]), grad_out


def reference_kd_loss(s, teacher, *, vocab_size, temperature, top_k):
    """float64 forward KL over the full vocab, differentiable w.r.t. the float64 student ``s``."""
    vocab = vocab_size or s.shape[-1]
    t = teacher.double()[..., :vocab]
    keep = torch.ones_like(t, dtype=torch.bool)
    if top_k is not None and top_k < vocab:
        kth = t.sort(dim=-1, descending=True).values[..., top_k - 1 : top_k]
        keep = t >= kth  # every logit tied with the k-th is kept
    log_p_teacher = torch.log_softmax((t / temperature).masked_fill(~keep, float("-inf")), dim=-1)
    log_p_student = torch.log_softmax(s[..., :vocab] / temperature, dim=-1)
    terms = log_p_teacher.exp() * (log_p_teacher - log_p_student)
    return torch.where(keep, terms, 0.0).sum(dim=-1)


def reference_kd(student, teacher, *, grad_out, **kwargs):
    """Reference loss [s, b] and the gradient of ``sum(loss * grad_out)`` w.r.t. the student."""
    s = student.double().requires_grad_()
    loss = reference_kd_loss(s, teacher, **kwargs)
    (grad,) = torch.autograd.grad((loss * grad_out.double()).sum(), s)
    return loss.detach(), grad


def _tolerances(dtype):
    """Loss: both sides read the same (bf16-rounded) inputs, so fp32 accuracy either way.
    Gradient: ours is returned in the input dtype, so bf16 adds one rounding (unit
    roundoff 2**-8: 8 significant bits)."""
    loss_tol = dict(rtol=1e-5, atol=1e-5)
    if dtype == torch.bfloat16:
        return loss_tol, dict(rtol=2**-8, atol=1e-6)
    return loss_tol, dict(rtol=1e-5, atol=1e-6)


def _check_against_reference(case, seed, loss, grad):
    student, teacher, grad_out = _inputs(case, seed)
    ref_loss, ref_grad = reference_kd(
        student,
        teacher,
        vocab_size=case["vocab_size"],
        temperature=case["temperature"],
        top_k=case["top_k"],
        grad_out=grad_out,
    )
    loss_tol, grad_tol = _tolerances(case["dtype"])
    assert loss.dtype == torch.float32 and loss.shape == (SEQ, BATCH)
    assert grad.dtype == case["dtype"] and grad.shape == student.shape
    torch.testing.assert_close(loss.double(), ref_loss, **loss_tol)
    torch.testing.assert_close(grad.double(), ref_grad, **grad_tol)


def _kd_kwargs(case):
    return {k: case[k] for k in ("vocab_size", "temperature", "top_k")}


# ---------------------------------------------------------------------------- TP=1


@pytest.fixture
def small_chunks(monkeypatch):
    import megatron_salt.distill.kd_loss as kd_loss_module

    monkeypatch.setattr(kd_loss_module, "CHUNK_ELEMENTS", SMALL_CHUNK)


@pytest.mark.parametrize("seed,case", list(enumerate(CASES)), ids=[_case_id(c) for c in CASES])
def test_tp1_matches_reference(small_chunks, seed, case):
    student, teacher, grad_out = _inputs(case, seed)
    student_before, teacher_before = student.clone(), teacher.clone()
    student.requires_grad_()
    loss = vocab_parallel_kd_loss(student, teacher, **_kd_kwargs(case))
    (loss * grad_out).sum().backward()
    _check_against_reference(case, seed, loss.detach(), student.grad)
    # inputs are read, never written
    assert torch.equal(student.detach(), student_before)
    assert torch.equal(teacher.nan_to_num(), teacher_before.nan_to_num())


def test_tp1_fp16_matches_reference(small_chunks):
    case = dict(dtype=torch.float16, temperature=2.0, top_k=2, vocab_size=37)
    student, teacher, grad_out = _inputs(case, seed=99)
    student.requires_grad_()
    loss = vocab_parallel_kd_loss(student, teacher, **_kd_kwargs(case))
    (loss * grad_out).sum().backward()
    ref_loss, ref_grad = reference_kd(
        student.detach(), teacher, **_kd_kwargs(case), grad_out=grad_out
    )
    assert student.grad.dtype == torch.float16
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-5)
    # fp16 keeps 11 significant bits: one rounding of the gradient, unit roundoff 2**-11
    torch.testing.assert_close(student.grad.double(), ref_grad, rtol=2**-10, atol=1e-6)


def test_tp1_default_chunking_larger_vocab():
    case = dict(dtype=torch.float32, temperature=1.5, top_k=None, vocab_size=3001)
    gen = torch.Generator().manual_seed(3)
    student = torch.randn(32, 2, 3008, generator=gen).mul(3).requires_grad_()
    teacher = torch.randn(32, 2, 3008, generator=gen).mul(3)
    grad_out = torch.rand(32, 2, generator=gen)
    loss = vocab_parallel_kd_loss(student, teacher, **_kd_kwargs(case))
    (loss * grad_out).sum().backward()
    ref_loss, ref_grad = reference_kd(
        student.detach(), teacher, **_kd_kwargs(case), grad_out=grad_out
    )
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(student.grad.double(), ref_grad, rtol=1e-5, atol=1e-7)


def test_identical_distributions_give_zero_loss_and_gradient():
    logits = torch.randn(4, 2, 50).requires_grad_()
    loss = vocab_parallel_kd_loss(logits, logits.detach().clone(), temperature=2.0)
    loss.sum().backward()
    assert loss.abs().max() <= 1e-6
    assert logits.grad.abs().max() <= 1e-7


def test_teacher_gets_no_gradient():
    student = torch.randn(3, 2, 10, requires_grad=True)
    teacher = torch.randn(3, 2, 10, requires_grad=True)
    vocab_parallel_kd_loss(student, teacher).sum().backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_top_k_ties_keep_every_tied_logit():
    """k=1 with a two-way tie at the top: both tied columns share the teacher's mass."""
    teacher = torch.tensor([[[5.0, 1.0, 5.0, 0.0]]])
    student = torch.tensor([[[0.0, 0.0, 0.0, 0.0]]], requires_grad=True)
    loss = vocab_parallel_kd_loss(student, teacher, top_k=1)
    # pT = (1/2, 0, 1/2, 0), pS uniform: KL = log 4 - log 2
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-6)
    loss.sum().backward()
    torch.testing.assert_close(student.grad, torch.tensor([[[-0.25, 0.25, -0.25, 0.25]]]))


@pytest.mark.parametrize(
    "poison, model, match",
    [
        (("teacher", float("nan")), "teacher", "teacher logits contain NaN or \\+inf"),
        (("teacher", float("inf")), "teacher", "teacher logits contain NaN or \\+inf"),
        (("student", float("nan")), "student", "student logits contain NaN or \\+inf"),
        (("student", float("-inf")), "student", "contain -inf"),
        (("teacher", float("-inf")), "teacher", "contain -inf"),
    ],
    ids=["teacher-nan", "teacher-inf", "student-nan", "student-neginf", "teacher-neginf"],
)
def test_nonfinite_logits_raise(poison, model, match):
    which, value = poison
    logits = {"student": torch.randn(4, 2, 12), "teacher": torch.randn(4, 2, 12)}
    logits[which][1, 0, 5] = value
    logits[which][3, 1, 0] = value
    with pytest.raises(ValueError, match=match) as info:
        vocab_parallel_kd_loss(logits["student"], logits["teacher"], vocab_size=11)
    assert "2 of 8 tokens (first: flat token 2)" in str(info.value)


def test_bad_arguments_raise_clear_errors():
    s, t = torch.randn(2, 1, 8), torch.randn(2, 1, 8)
    with pytest.raises(ValueError, match="teacher_logits_to_student_shard"):
        vocab_parallel_kd_loss(s, torch.randn(2, 1, 9))
    with pytest.raises(TypeError, match="float64"):
        vocab_parallel_kd_loss(s, t.double())
    with pytest.raises(ValueError, match="temperature"):
        vocab_parallel_kd_loss(s, t, temperature=0.0)
    with pytest.raises(ValueError, match="top_k"):
        vocab_parallel_kd_loss(s, t, top_k=0)
    with pytest.raises(ValueError, match="vocab_size=9 outside"):
        vocab_parallel_kd_loss(s, t, vocab_size=9)


def test_check_vocab_compatible():
    check_vocab_compatible(32000, 32000)
    with pytest.raises(ValueError, match="152064 != student vocab size 151936.*one tokenizer"):
        check_vocab_compatible(152064, 151936)


def test_teacher_to_student_shard_unsharded():
    teacher = torch.randn(3, 2, 40).bfloat16()
    same = teacher_logits_to_student_shard(
        teacher, vocab_size=37, teacher_padded_vocab=40, student_padded_vocab=40
    )
    assert same is teacher
    out = teacher_logits_to_student_shard(
        teacher, vocab_size=37, teacher_padded_vocab=40, student_padded_vocab=48
    )
    assert out.shape == (3, 2, 48) and out.dtype == torch.bfloat16
    assert torch.equal(out[..., :37], teacher[..., :37])
    assert torch.isneginf(out[..., 37:]).all()
    with pytest.raises(ValueError, match="expected 40"):
        teacher_logits_to_student_shard(
            teacher[..., :39], vocab_size=37, teacher_padded_vocab=40, student_padded_vocab=40
        )
    with pytest.raises(ValueError, match="student padded vocab 36 < vocab_size 37"):
        teacher_logits_to_student_shard(
            teacher, vocab_size=37, teacher_padded_vocab=40, student_padded_vocab=36
        )


def test_combine_salt_loss_mixes_masks_and_reports():
    lm = torch.tensor([[1.0, 2.0, float("nan")], [3.0, 4.0, 5.0]], requires_grad=True)
    kd = torch.tensor([[0.5, 0.25, float("nan")], [1.0, 2.0, 3.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    parts = combine_salt_loss(lm, kd, mask, kd_weight=0.25)
    # masked tokens: (0,0), (0,1), (1,0), (1,2); the NaNs sit under the mask
    assert int(parts.num_tokens) == 4 and parts.num_tokens.dtype == torch.int32
    assert parts.lm_sum.item() == pytest.approx(1 + 2 + 3 + 5)
    assert parts.kd_sum.item() == pytest.approx(0.5 + 0.25 + 1 + 3)
    assert parts.total_sum.item() == pytest.approx(0.75 * 11 + 0.25 * 4.75)
    assert parts.total_mean.item() == pytest.approx((0.75 * 11 + 0.25 * 4.75) / 4)
    assert not parts.lm_sum.requires_grad and not parts.kd_sum.requires_grad
    parts.total_sum.backward()
    torch.testing.assert_close(lm.grad, 0.75 * mask.float())
    torch.testing.assert_close(kd.grad, 0.25 * mask.float())
    # Megatron's schedule divides the returned loss in place: the logged parts must not move.
    parts.total_sum.detach().div_(4)
    assert parts.lm_sum.item() == pytest.approx(11) and parts.kd_sum.item() == pytest.approx(4.75)


def test_combine_salt_loss_without_kd_is_pure_ce():
    lm = torch.tensor([2.0, 4.0, 6.0], requires_grad=True)
    mask = torch.tensor([True, True, False])
    nan_kd = torch.full((3,), float("nan"))
    for kd, weight in ((None, 0.5), (nan_kd, 0.0)):
        parts = combine_salt_loss(lm, kd, mask, kd_weight=weight)
        assert parts.total_sum.item() == pytest.approx(6.0)
        assert parts.kd_sum.item() == 0.0
        parts.total_sum.detach().div_(2)  # in-place division must not reach lm_sum
        assert parts.lm_sum.item() == pytest.approx(6.0)
    with pytest.raises(ValueError, match="kd_loss \\(2,\\)"):
        combine_salt_loss(lm, torch.zeros(2), mask, kd_weight=0.5)
    with pytest.raises(ValueError, match="kd_weight"):
        combine_salt_loss(lm, None, mask, kd_weight=1.5)


# ------------------------------------------------------- fused CE + KD, TP=1 and shared helpers

# Every KD case with both outputs in the loss, plus cases where only one output is used
# (the other's gradient arrives as None and its backward term is skipped).
SALT_CASES = [dict(case, use="ce+kd") for case in CASES] + [
    dict(dtype=dtype, temperature=temperature, top_k=2, vocab_size=vocab, use=use)
    for dtype, temperature, (use, vocab) in itertools.product(
        (torch.float32, torch.bfloat16), (1.0, 2.0), (("ce", 37), ("kd", 17))
    )
]
SALT_SEED = 200


def _salt_case_id(case) -> str:
    return f"{_case_id(case)}-{case['use']}"


def _salt_upstream(case, seed: int):
    """Labels [SEQ, BATCH] and per-token weights of CE and KD in the objective (None: unused).

    Labels include the first and last valid columns and both sides of the TP shard
    boundary; some tokens weigh only one term, some neither.
    """
    gen = torch.Generator().manual_seed(SALT_SEED + seed)
    vocab = case["vocab_size"] or PADDED
    labels = torch.randint(0, vocab, (SEQ, BATCH), generator=gen)
    labels[0] = torch.tensor([0, vocab - 1, min(SHARD, vocab - 1)])
    labels[2, 0] = min(SHARD - 1, vocab - 1)
    ce_weight = torch.randn(SEQ, BATCH, generator=gen)
    kd_weight = torch.randn(SEQ, BATCH, generator=gen)
    ce_weight[3, :2] = 0.0
    kd_weight[3, 1:] = 0.0
    return (
        labels,
        ce_weight if "ce" in case["use"] else None,
        kd_weight if "kd" in case["use"] else None,
    )


def reference_ce_loss(s, labels, *, vocab_size):
    """float64 next-token CE at T=1 over the valid vocab (padded columns carry no probability)."""
    vocab = vocab_size or s.shape[-1]
    log_p = torch.log_softmax(s[..., :vocab], dim=-1)
    return -log_p.gather(-1, labels[..., None]).squeeze(-1)


def _weighted_sum(ce, kd, ce_weight, kd_weight):
    """``sum(ce_weight * ce + kd_weight * kd)`` leaving out an unused (None-weighted) output."""
    terms = [
        (loss * weight.to(loss.dtype)).sum()
        for loss, weight in ((ce, ce_weight), (kd, kd_weight))
        if weight is not None
    ]
    return sum(terms[1:], terms[0])


def _check_salt_against_reference(case, seed, ce, kd, grad):
    student, teacher, _ = _inputs(case, SALT_SEED + seed)
    labels, ce_weight, kd_weight = _salt_upstream(case, seed)
    s = student.double().requires_grad_()
    ref_ce = reference_ce_loss(s, labels, vocab_size=case["vocab_size"])
    ref_kd = reference_kd_loss(s, teacher, **_kd_kwargs(case))
    (ref_grad,) = torch.autograd.grad(_weighted_sum(ref_ce, ref_kd, ce_weight, kd_weight), s)
    loss_tol, grad_tol = _tolerances(case["dtype"])
    for loss, ref in ((ce, ref_ce), (kd, ref_kd)):
        assert loss.dtype == torch.float32 and loss.shape == (SEQ, BATCH)
        torch.testing.assert_close(loss.double(), ref.detach(), **loss_tol)
    assert grad.dtype == case["dtype"] and grad.shape == student.shape
    torch.testing.assert_close(grad.double(), ref_grad, **grad_tol)


@pytest.mark.parametrize(
    "seed,case", list(enumerate(SALT_CASES)), ids=[_salt_case_id(c) for c in SALT_CASES]
)
def test_tp1_salt_loss_matches_reference(small_chunks, seed, case):
    student, teacher, _ = _inputs(case, SALT_SEED + seed)
    labels, ce_weight, kd_weight = _salt_upstream(case, seed)
    student_before, teacher_before = student.clone(), teacher.clone()
    student.requires_grad_()
    ce, kd = vocab_parallel_salt_loss(student, teacher, labels, **_kd_kwargs(case))
    _weighted_sum(ce, kd, ce_weight, kd_weight).backward()
    _check_salt_against_reference(case, seed, ce.detach(), kd.detach(), student.grad)
    # the KD output is exactly the KD loss's
    assert torch.equal(kd, vocab_parallel_kd_loss(student, teacher, **_kd_kwargs(case)))
    assert torch.equal(student.detach(), student_before)
    assert torch.equal(teacher.nan_to_num(), teacher_before.nan_to_num())


def test_tp1_salt_loss_default_chunking_larger_vocab():
    gen = torch.Generator().manual_seed(4)
    student = torch.randn(32, 2, 3008, generator=gen).mul(3).requires_grad_()
    teacher = torch.randn(32, 2, 3008, generator=gen).mul(3)
    labels = torch.randint(0, 3001, (32, 2), generator=gen)
    ce_weight, kd_weight = torch.rand(2, 32, 2, generator=gen)
    kwargs = dict(vocab_size=3001, temperature=1.5, top_k=None)
    ce, kd = vocab_parallel_salt_loss(student, teacher, labels, **kwargs)
    _weighted_sum(ce, kd, ce_weight, kd_weight).backward()
    s = student.detach().double().requires_grad_()
    ref_ce = reference_ce_loss(s, labels, vocab_size=3001)
    ref_kd = reference_kd_loss(s, teacher, **kwargs)
    (ref_grad,) = torch.autograd.grad(_weighted_sum(ref_ce, ref_kd, ce_weight, kd_weight), s)
    torch.testing.assert_close(ce.double(), ref_ce.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kd.double(), ref_kd.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(student.grad.double(), ref_grad, rtol=1e-5, atol=1e-7)


def test_salt_loss_labels_and_label_logits_are_checked():
    student, teacher = torch.randn(4, 2, 12), torch.randn(4, 2, 12)
    labels = torch.zeros(4, 2, dtype=torch.long)
    for bad in (11, -1):  # column 11 is padding with vocab_size=11
        bad_labels = labels.clone()
        bad_labels[1, 1] = bad
        bad_labels[2, 0] = bad
        with pytest.raises(ValueError, match="labels outside \\[0, vocab_size=11\\)") as info:
            vocab_parallel_salt_loss(student, teacher, bad_labels, vocab_size=11)
        assert "2 of 8 tokens (first: flat token 3)" in str(info.value)
    # non-finite student logits, also where the top-1 teacher puts no mass
    teacher[..., 0] = 50.0
    for value, match in ((float("-inf"), "contain -inf"), (float("nan"), "contain NaN")):
        student[3, 1, 4] = value
        with pytest.raises(ValueError, match=f"vocab_parallel_salt_loss: .*{match}.* 1 of 8"):
            vocab_parallel_salt_loss(student, teacher, labels, top_k=1, temperature=2.0)
    student[3, 1, 4] = 0.0
    with pytest.raises(ValueError, match="labels \\(2, 4\\) do not match .* \\(4, 2\\)"):
        vocab_parallel_salt_loss(student, teacher, labels.t())
    with pytest.raises(TypeError, match="labels have dtype torch.float32"):
        vocab_parallel_salt_loss(student, teacher, labels.float())
    with pytest.raises(ValueError, match="vocab_parallel_salt_loss: temperature"):
        vocab_parallel_salt_loss(student, teacher, labels, temperature=-1.0)


def test_salt_loss_padded_columns_get_no_ce_gradient_and_teacher_none():
    student = torch.randn(3, 2, 10, requires_grad=True)
    teacher = torch.randn(3, 2, 10, requires_grad=True)
    labels = torch.randint(0, 7, (3, 2))
    ce, _ = vocab_parallel_salt_loss(student, teacher, labels, vocab_size=7)
    ce.sum().backward()
    assert teacher.grad is None
    assert torch.equal(student.grad[..., 7:], torch.zeros(3, 2, 3))
    # rows of softmax - onehot sum to zero over the valid columns
    torch.testing.assert_close(student.grad.sum(dim=-1), torch.zeros(3, 2), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------- TP=2

COMBINE_WEIGHT = 0.3
COMBINE_CASES = [
    dict(dtype=dtype, temperature=2.0, top_k=top_k, vocab_size=37)
    for dtype, top_k in ((torch.float32, None), (torch.bfloat16, 2))
]


def _labels_and_mask(seed: int):
    gen = torch.Generator().manual_seed(1000 + seed)
    labels = torch.randint(0, 37, (SEQ, BATCH), generator=gen)
    mask = (torch.rand(SEQ, BATCH, generator=gen) > 0.3).float()
    return labels, mask


def _unpadded_ce_inputs(dtype, seed: int):
    gen = torch.Generator().manual_seed(300 + seed)
    full = (3.0 * torch.randn(SEQ, BATCH, PADDED, generator=gen)).to(dtype)
    labels = torch.randint(0, PADDED, (SEQ, BATCH), generator=gen)
    labels[0, :2] = torch.tensor([SHARD - 1, SHARD])  # both sides of the shard boundary
    return full, labels, torch.randn(SEQ, BATCH, generator=gen)


def _tp2_rank_fn():
    """Every TP=2 check in one pair of ranks; returns plain tensors and strings."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    import megatron_salt.distill.kd_loss as kd_loss_module

    kd_loss_module.CHUNK_ELEMENTS = SMALL_CHUNK
    ps.initialize_model_parallel(TP, 1)
    group = ps.get_tensor_model_parallel_group()
    rank = ps.get_tensor_model_parallel_rank()
    columns = slice(rank * SHARD, (rank + 1) * SHARD)
    out = {"kd": [], "combine": [], "nonfinite": [], "align": {}}

    for seed, case in enumerate(CASES):
        student, teacher, grad_out = _inputs(case, seed)
        student = student[..., columns].clone().requires_grad_()
        # alternate the explicit group and the Megatron default
        tp_group = group if seed % 2 else None
        loss = vocab_parallel_kd_loss(
            student, teacher[..., columns].clone(), **_kd_kwargs(case), tp_group=tp_group
        )
        (loss * grad_out).sum().backward()
        out["kd"].append((loss.detach(), student.grad))

    # The training-loop loss: Megatron's vocab-parallel CE + our KD, masked and mixed.
    for seed, case in enumerate(COMBINE_CASES):
        student, teacher, _ = _inputs(case, 100 + seed)
        student[..., 37:] = 0.5  # Megatron's CE does include padded columns: keep them sane
        labels, mask = _labels_and_mask(seed)
        shard = student[..., columns].clone().requires_grad_()
        # fp32: Megatron's CE works in place on its input, so give it its own copy.
        ce = vocab_parallel_cross_entropy(shard.clone(), labels)
        kd = vocab_parallel_kd_loss(shard, teacher[..., columns].clone(), **_kd_kwargs(case))
        parts = combine_salt_loss(ce, kd, mask, COMBINE_WEIGHT)
        parts.total_sum.backward()
        out["combine"].append((parts.total_sum.detach(), parts.num_tokens, shard.grad))

    # The fused CE + KD loss.
    out.update(salt=[], salt_vs_megatron=[], salt_combine=[], salt_errors=[])
    for seed, case in enumerate(SALT_CASES):
        student, teacher, _ = _inputs(case, SALT_SEED + seed)
        labels, ce_weight, kd_weight = _salt_upstream(case, seed)
        student = student[..., columns].clone().requires_grad_()
        ce, kd = vocab_parallel_salt_loss(
            student,
            teacher[..., columns].clone(),
            labels,
            **_kd_kwargs(case),
            tp_group=group if seed % 2 else None,
        )
        _weighted_sum(ce, kd, ce_weight, kd_weight).backward()
        out["salt"].append((ce.detach(), kd.detach(), student.grad))

    # Without padding its CE is Megatron's (value and gradient).
    for seed, dtype in enumerate((torch.float32, torch.bfloat16)):
        full, labels, weight = _unpadded_ce_inputs(dtype, seed)
        ours = full[..., columns].clone().requires_grad_()
        ce, _ = vocab_parallel_salt_loss(ours, torch.zeros_like(ours), labels, temperature=2.0)
        (ce * weight).sum().backward()
        theirs = full[..., columns].clone().requires_grad_()
        megatron_ce = vocab_parallel_cross_entropy(theirs.clone(), labels)
        (megatron_ce * weight).sum().backward()
        out["salt_vs_megatron"].append((ce.detach(), ours.grad, megatron_ce.detach(), theirs.grad))

    # What the training loop does during KD: fused CE + KD, masked and mixed.
    for seed, case in enumerate(COMBINE_CASES):
        student, teacher, _ = _inputs(case, 100 + seed)
        labels, mask = _labels_and_mask(seed)
        shard = student[..., columns].clone().requires_grad_()
        ce, kd = vocab_parallel_salt_loss(
            shard, teacher[..., columns].clone(), labels, **_kd_kwargs(case)
        )
        parts = combine_salt_loss(ce, kd, mask, COMBINE_WEIGHT)
        parts.total_sum.backward()
        out["salt_combine"].append((parts.total_sum.detach(), parts.lm_sum, shard.grad))

    # A label in rank 1's padding, or negative, fails on both ranks alike.
    for bad_label in (38, -1):
        labels = torch.zeros(SEQ, BATCH, dtype=torch.long)
        labels[2, 1] = bad_label
        try:
            vocab_parallel_salt_loss(
                torch.randn(SEQ, BATCH, SHARD),
                torch.randn(SEQ, BATCH, SHARD),
                labels,
                vocab_size=37,
            )
            out["salt_errors"].append("")
        except ValueError as err:
            out["salt_errors"].append(str(err))

    # Sharing one fp32 tensor with Megatron's CE is caught, not silently wrong.
    shard = torch.randn(SEQ, BATCH, SHARD, requires_grad=True)
    logits = shard * 1.0
    kd = vocab_parallel_kd_loss(logits, torch.randn(SEQ, BATCH, SHARD))
    ce = vocab_parallel_cross_entropy(logits, torch.zeros(SEQ, BATCH, dtype=torch.long))
    try:
        (kd + ce).sum().backward()
        out["shared_fp32_error"] = ""
    except RuntimeError as err:
        out["shared_fp32_error"] = str(err)

    # A NaN in one rank's shard fails on both ranks with the same message (no hang).
    for poisoned_rank, which in ((1, "student"), (0, "teacher")):
        logits = {
            "student": torch.randn(SEQ, BATCH, SHARD),
            "teacher": torch.randn(SEQ, BATCH, SHARD),
        }
        if rank == poisoned_rank:
            logits[which][2, 1, 3] = float("nan")
        try:
            vocab_parallel_kd_loss(logits["student"], logits["teacher"])
            out["nonfinite"].append("")
        except ValueError as err:
            out["nonfinite"].append(str(err))

    # Teacher logits from other layouts onto the student's TP=2 / padded-48 shards.
    student_shard_48 = slice(rank * 24, (rank + 1) * 24)
    full = torch.randn(SEQ, BATCH, 40, generator=torch.Generator().manual_seed(5))
    full[..., 37:] = float("nan")  # teacher padding never reaches the student shard
    kwargs = dict(vocab_size=37, student_tp_group=group)
    out["align"]["tp2_pad40_to_tp2_pad48"] = teacher_logits_to_student_shard(
        full[..., columns].clone(),
        teacher_padded_vocab=40,
        student_padded_vocab=48,
        teacher_tp_group=group,
        **kwargs,
    )
    out["align"]["tp1_pad40_to_tp2_pad48"] = teacher_logits_to_student_shard(
        full, teacher_padded_vocab=40, student_padded_vocab=48, **kwargs
    )
    out["align"]["tp2_pad40_to_tp1_pad37"] = teacher_logits_to_student_shard(
        full[..., columns].clone(),
        vocab_size=37,
        teacher_padded_vocab=40,
        student_padded_vocab=37,
        teacher_tp_group=group,
    )
    teacher_shard = full[..., columns].clone()
    out["align"]["same_layout_is_identity"] = (
        teacher_logits_to_student_shard(
            teacher_shard,
            teacher_padded_vocab=40,
            student_padded_vocab=40,
            teacher_tp_group=group,
            **kwargs,
        )
        is teacher_shard
    )
    # End to end: the teacher at TP=2/pad 40, the student at TP=2/pad 48.
    student = torch.randn(SEQ, BATCH, 48, generator=torch.Generator().manual_seed(6))
    student_shard = student[..., student_shard_48].clone().requires_grad_()
    loss = vocab_parallel_kd_loss(
        student_shard, out["align"]["tp2_pad40_to_tp2_pad48"], vocab_size=37, top_k=3
    )
    loss.sum().backward()
    out["aligned_kd"] = (loss.detach(), student_shard.grad)
    return out


@pytest.fixture(scope="module")
def tp2():
    return run_on_ranks(_tp2_rank_fn, TP)


@pytest.mark.parametrize("seed,case", list(enumerate(CASES)), ids=[_case_id(c) for c in CASES])
def test_tp2_matches_reference(tp2, seed, case):
    losses = [rank_out["kd"][seed][0] for rank_out in tp2]
    assert torch.equal(losses[0], losses[1]), "TP ranks disagree on the loss"
    grad = torch.cat([rank_out["kd"][seed][1] for rank_out in tp2], dim=-1)
    _check_against_reference(case, seed, losses[0], grad)


@pytest.mark.parametrize("seed,case", list(enumerate(COMBINE_CASES)))
def test_tp2_combined_loss_with_megatron_ce_and_mask(tp2, seed, case):
    student, teacher, _ = _inputs(case, 100 + seed)
    student[..., 37:] = 0.5
    labels, mask = _labels_and_mask(seed)
    # float64 reference; Megatron's CE normalises over the padded vocab too
    s = student.double().requires_grad_()
    ce = torch.logsumexp(s, dim=-1) - s.gather(-1, labels[..., None]).squeeze(-1)
    kd = reference_kd_loss(s, teacher, **_kd_kwargs(case))
    ce_part = (mask.double() * (1 - COMBINE_WEIGHT) * ce).sum()
    kd_part = (mask.double() * COMBINE_WEIGHT * kd).sum()
    total = ce_part + kd_part
    ce_grad, kd_grad = (
        torch.autograd.grad(part, s, retain_graph=True)[0] for part in (ce_part, kd_part)
    )
    ref_grad = ce_grad + kd_grad

    loss_tol, grad_tol = _tolerances(case["dtype"])
    for rank_out in tp2:
        total_sum, num_tokens, _ = rank_out["combine"][seed]
        assert int(num_tokens) == int(mask.sum())
        torch.testing.assert_close(total_sum.double(), total.detach(), **loss_tol)
    grad = torch.cat([rank_out["combine"][seed][2] for rank_out in tp2], dim=-1).double()
    if case["dtype"] == torch.bfloat16:
        # Autograd adds the CE and KD gradients in bf16: three roundings (unit roundoff 2**-8).
        bound = 2**-8 * (ce_grad.abs() + kd_grad.abs() + ref_grad.abs()) * 1.01 + 1e-6
        assert ((grad - ref_grad).abs() <= bound).all()
    else:
        torch.testing.assert_close(grad, ref_grad, **grad_tol)


@pytest.mark.parametrize(
    "seed,case", list(enumerate(SALT_CASES)), ids=[_salt_case_id(c) for c in SALT_CASES]
)
def test_tp2_salt_loss_matches_reference(tp2, seed, case):
    (ce, kd, _), (ce_1, kd_1, _) = (rank_out["salt"][seed] for rank_out in tp2)
    assert torch.equal(ce, ce_1) and torch.equal(kd, kd_1), "TP ranks disagree on the loss"
    grad = torch.cat([rank_out["salt"][seed][2] for rank_out in tp2], dim=-1)
    _check_salt_against_reference(case, seed, ce, kd, grad)


@pytest.mark.parametrize("seed,dtype", list(enumerate((torch.float32, torch.bfloat16))))
def test_tp2_salt_ce_equals_megatron_ce_without_padding(tp2, seed, dtype):
    full, labels, weight = _unpadded_ce_inputs(dtype, seed)
    s = full.double().requires_grad_()
    ref = reference_ce_loss(s, labels, vocab_size=None)
    (ref_grad,) = torch.autograd.grad((ref * weight.double()).sum(), s)
    loss_tol, grad_tol = _tolerances(dtype)
    for rank, rank_out in enumerate(tp2):
        ce, grad, megatron_ce, megatron_grad = rank_out["salt_vs_megatron"][seed]
        torch.testing.assert_close(ce, megatron_ce, **loss_tol)
        torch.testing.assert_close(ce.double(), ref.detach(), **loss_tol)
        assert grad.dtype == megatron_grad.dtype == dtype
        torch.testing.assert_close(grad, megatron_grad, **grad_tol)
        torch.testing.assert_close(
            grad.double(), ref_grad[..., rank * SHARD : (rank + 1) * SHARD], **grad_tol
        )


@pytest.mark.parametrize("seed,case", list(enumerate(COMBINE_CASES)))
def test_tp2_combined_loss_with_fused_ce_and_mask(tp2, seed, case):
    student, teacher, _ = _inputs(case, 100 + seed)  # padded columns hold 1e4: never read
    labels, mask = _labels_and_mask(seed)
    s = student.double().requires_grad_()
    ce = reference_ce_loss(s, labels, vocab_size=case["vocab_size"])
    kd = reference_kd_loss(s, teacher, **_kd_kwargs(case))
    total = (mask.double() * ((1 - COMBINE_WEIGHT) * ce + COMBINE_WEIGHT * kd)).sum()
    (ref_grad,) = torch.autograd.grad(total, s)
    loss_tol, grad_tol = _tolerances(case["dtype"])
    for rank_out in tp2:
        total_sum, lm_sum, _ = rank_out["salt_combine"][seed]
        torch.testing.assert_close(total_sum.double(), total.detach(), **loss_tol)
        torch.testing.assert_close(lm_sum.double(), (mask * ce).sum().detach(), **loss_tol)
    grad = torch.cat([rank_out["salt_combine"][seed][2] for rank_out in tp2], dim=-1)
    # One rounding to the student's dtype (autograd adds no second term here).
    torch.testing.assert_close(grad.double(), ref_grad, **grad_tol)


def test_tp2_salt_loss_bad_labels_raise_same_error_on_every_rank(tp2):
    for index, bad_label in enumerate((38, -1)):
        msgs = [rank_out["salt_errors"][index] for rank_out in tp2]
        assert msgs[0] == msgs[1]
        assert "labels outside [0, vocab_size=37)" in msgs[0], bad_label
        assert "1 of 15 tokens (first: flat token 7)" in msgs[0]


def test_tp2_sharing_fp32_logits_with_megatron_ce_is_caught(tp2):
    for rank_out in tp2:
        assert "modified by an inplace operation" in rank_out["shared_fp32_error"]


def test_tp2_nonfinite_raises_same_error_on_every_rank(tp2):
    student_msgs, teacher_msgs = zip(*(rank_out["nonfinite"] for rank_out in tp2), strict=True)
    for msgs, model in ((student_msgs, "student"), (teacher_msgs, "teacher")):
        assert msgs[0] == msgs[1]
        assert f"{model} logits contain NaN" in msgs[0]
        assert "1 of 15 tokens (first: flat token 7)" in msgs[0]


def test_tp2_teacher_alignment(tp2):
    full = torch.randn(SEQ, BATCH, 40, generator=torch.Generator().manual_seed(5))
    expected_48 = torch.full((SEQ, BATCH, 48), float("-inf"))
    expected_48[..., :37] = full[..., :37]
    for rank, rank_out in enumerate(tp2):
        align = rank_out["align"]
        want = expected_48[..., rank * 24 : (rank + 1) * 24]
        assert torch.equal(align["tp2_pad40_to_tp2_pad48"], want)
        assert torch.equal(align["tp1_pad40_to_tp2_pad48"], want)
        assert torch.equal(align["tp2_pad40_to_tp1_pad37"], full[..., :37])
        assert align["same_layout_is_identity"] is True

    student = torch.randn(SEQ, BATCH, 48, generator=torch.Generator().manual_seed(6))
    ref_loss, ref_grad = reference_kd(
        student,
        expected_48,
        vocab_size=37,
        temperature=1.0,
        top_k=3,
        grad_out=torch.ones(SEQ, BATCH),
    )
    loss = tp2[0]["aligned_kd"][0]
    assert torch.equal(loss, tp2[1]["aligned_kd"][0])
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-5)
    grad = torch.cat([rank_out["aligned_kd"][1] for rank_out in tp2], dim=-1)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-5, atol=1e-6)
