"""The samplers a run may use: the name in configs and flags, the diffusers scheduler behind it, and the
label AUTOMATIC1111 writes for it in PNG `parameters` text (what galleries and prompt readers show)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Scheduler:
    name: str
    diffusers_class: str
    options: dict = field(default_factory=dict)
    sampler: str = ""  # AUTOMATIC1111's `Sampler:` label
    schedule_type: str | None = None  # AUTOMATIC1111's `Schedule type:` where it is not the default


SCHEDULERS = {
    s.name: s
    for s in (
        Scheduler("euler", "EulerDiscreteScheduler", sampler="Euler"),
        Scheduler("euler_a", "EulerAncestralDiscreteScheduler", sampler="Euler a"),
        Scheduler("dpmpp_2m", "DPMSolverMultistepScheduler", sampler="DPM++ 2M"),
        Scheduler("dpmpp_2m_karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "DPM++ 2M", "Karras"),
        Scheduler("ddim", "DDIMScheduler", sampler="DDIM"),
        Scheduler("unipc", "UniPCMultistepScheduler", sampler="UniPC"),
    )
}
SCHEDULER_NAMES = tuple(SCHEDULERS)
