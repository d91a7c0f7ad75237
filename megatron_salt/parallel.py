"""Process groups for the co-located SLM teacher.

The student owns Megatron-Core's global ``parallel_state`` (TP x PP x DP). The
teacher lives on the same ranks but in process groups of its own, with its own
tensor- and pipeline-parallel sizes, handed to its GPTModel through a
``ProcessGroupCollection``. A small teacher rarely needs the student's TP
width, and forcing the student's layout on it (as ModelOpt and NeMo do) wastes
its GPUs on communication.

Supported placements (anything else raises :class:`UnsupportedTeacherLayout`):

* teacher PP = 1: the whole teacher on every rank of the student's *last*
  pipeline stage, where the KD loss is computed;
* teacher PP = student PP: teacher stage ``j`` on the ranks of student stage ``j``;
* teacher TP dividing the student's TP: each student TP group is cut into
  consecutive teacher TP groups of that size (TP equal to the student's is
  the common case; TP=1 replicates the teacher inside the student's TP group).

Every teacher is replicated over the student's data-parallel replicas, and it
sees exactly the micro-batches its student replica sees.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.process_groups_config import ProcessGroupCollection


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def single_process_rendezvous() -> None:
    """Without torchrun, a one-process group needs an address: any free local port.

    A fixed default port makes two single-process jobs on one machine (tests, a
    scoring job beside a demo) collide; torchrun's own settings are kept.
    """
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        os.environ["MASTER_PORT"] = str(free_port())


#: How long a collective may wait for a peer: long enough for one rank to hash a large
#: .bin or checkpoint (manifests, score sidecars) while the others wait at a barrier.
DISTRIBUTED_TIMEOUT = datetime.timedelta(minutes=30)


def initialize_distributed(
    backend: str | None = None,
    *,
    timeout: datetime.timedelta = DISTRIBUTED_TIMEOUT,
    alone: bool = False,
) -> None:
    """torchrun's environment (or one process without torchrun) -> the default process group.

    The one start-up of every entry point (training, scoring, conversions, the test ranks):
    Megatron-Core's CPU patches first (a no-op with CUDA), then nccl on GPUs or gloo on CPU
    unless ``backend`` says otherwise, each rank on its ``LOCAL_RANK`` device. ``alone``: a
    one-rank group on a free port whatever the environment says (a conversion inside a
    larger job). Megatron's model-parallel groups are the caller's (it knows the layout).
    Does nothing if a group already exists.
    """
    from megatron_salt.compat import apply_cpu_patches

    apply_cpu_patches()
    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if alone:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(free_port())
        rank, world_size = 0, 1
    else:
        single_process_rendezvous()
        rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    dist.init_process_group(
        backend or ("nccl" if torch.cuda.is_available() else "gloo"),
        rank=rank,
        world_size=world_size,
        timeout=timeout,
    )


class UnsupportedTeacherLayout(ValueError):
    """The requested teacher TP/PP cannot be placed on the student's ranks."""


@dataclass(frozen=True)
class RankCoord:
    rank: int
    tp: int
    pp: int
    dp: int


@dataclass
class TeacherPlacement:
    """Where this rank's part of the teacher lives and how it talks to its neighbours."""

    tensor_model_parallel_size: int
    pipeline_model_parallel_size: int
    stage: int | None  # teacher pipeline stage on this rank; None = no teacher here
    pg_collection: ProcessGroupCollection | None
    prev_rank: int | None  # global rank of the previous teacher stage
    next_rank: int | None
    groups: list[dist.ProcessGroup]  # every group this rank created, to destroy on release

    @property
    def hosts_teacher(self) -> bool:
        return self.stage is not None

    @property
    def is_first_stage(self) -> bool:
        return self.stage == 0

    @property
    def is_last_stage(self) -> bool:
        return self.stage == self.pipeline_model_parallel_size - 1


def validate_teacher_layout(
    teacher_tp: int, teacher_pp: int, student_tp: int, student_pp: int
) -> None:
    """Raise :class:`UnsupportedTeacherLayout` with what *is* supported."""
    supported = (
        "supported: --kd-teacher-pipeline-model-parallel-size 1 (teacher on the student's last "
        f"stage) or {student_pp} (the student's); --kd-teacher-tensor-model-parallel-size a "
        f"divisor of the student's {student_tp}"
    )
    if teacher_tp < 1 or student_tp % teacher_tp:
        raise UnsupportedTeacherLayout(
            f"teacher TP={teacher_tp} does not divide the student's TP; {supported}"
        )
    if teacher_pp not in (1, student_pp):
        raise UnsupportedTeacherLayout(
            f"teacher PP={teacher_pp} with student PP={student_pp}; {supported}"
        )


def gather_layout() -> list[RankCoord]:
    """Every rank's (tp, pp, dp) coordinates in the student's layout."""
    mine = RankCoord(
        rank=dist.get_rank(),
        tp=parallel_state.get_tensor_model_parallel_rank(),
        pp=parallel_state.get_pipeline_model_parallel_rank(),
        dp=parallel_state.get_data_parallel_rank(),
    )
    everyone: list[RankCoord] = [None] * dist.get_world_size()  # type: ignore[list-item]
    dist.all_gather_object(everyone, mine)
    return everyone


def build_teacher_placement(teacher_tp: int, teacher_pp: int) -> TeacherPlacement:
    """Create the teacher's process groups (collective: every rank must call it)."""
    student_tp = parallel_state.get_tensor_model_parallel_world_size()
    student_pp = parallel_state.get_pipeline_model_parallel_world_size()
    validate_teacher_layout(teacher_tp, teacher_pp, student_tp, student_pp)
    layout = gather_layout()
    by_coord = {(c.dp, c.pp, c.tp): c.rank for c in layout}
    dp_size = len(layout) // (student_tp * student_pp)
    # Student stage hosting teacher stage j.
    host_stages = list(range(student_pp)) if teacher_pp == student_pp else [student_pp - 1]

    tp_groups, pp_groups, embd_groups = [], [], []
    for dp in range(dp_size):
        for pp in host_stages:
            for start in range(0, student_tp, teacher_tp):
                tp_groups.append(
                    [by_coord[(dp, pp, tp)] for tp in range(start, start + teacher_tp)]
                )
        for tp in range(student_tp):
            chain = [by_coord[(dp, pp, tp)] for pp in host_stages]
            pp_groups.append(chain)
            embd_groups.append(sorted({chain[0], chain[-1]}))

    me = dist.get_rank()
    created: list[dist.ProcessGroup] = []

    def create(rank_lists: list[list[int]]) -> dist.ProcessGroup | None:
        # new_group is collective over the world: every rank creates every group.
        mine = None
        for ranks in rank_lists:
            group = dist.new_group(ranks)
            if me in ranks:
                mine = group
                created.append(group)
        return mine

    tp_group = create(tp_groups)
    pp_group = create(pp_groups)
    embd_group = create(embd_groups)
    if pp_group is None:
        return TeacherPlacement(teacher_tp, teacher_pp, None, None, None, None, created)

    chain = next(c for c in pp_groups if me in c)
    stage = chain.index(me)
    pgs = ProcessGroupCollection()
    pgs.tp = tp_group
    pgs.pp = pp_group
    pgs.embd = embd_group
    # Context parallelism is not supported: the student's CP group is this rank
    # alone, which is also what the (first-stage-only) position-embedding group is.
    pgs.cp = parallel_state.get_context_parallel_group()
    pgs.pos_embd = pgs.cp
    return TeacherPlacement(
        tensor_model_parallel_size=teacher_tp,
        pipeline_model_parallel_size=teacher_pp,
        stage=stage,
        pg_collection=pgs,
        prev_rank=chain[stage - 1] if stage > 0 else None,
        next_rank=chain[stage + 1] if stage + 1 < len(chain) else None,
        groups=created,
    )
