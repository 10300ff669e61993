"""The samplers a run may use: the name in configs and flags, the diffusers scheduler behind it, and the
labels AUTOMATIC1111 writes for it in PNG `parameters` text (what galleries and prompt readers show)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Scheduler:
    name: str
    diffusers_class: str
    options: dict = field(default_factory=dict)
    sampler: str = ""  # AUTOMATIC1111's `Sampler:` label
    timesteps: bool = False  # AUTOMATIC1111 runs it on its own timesteps (DDIM, UniPC): no schedule type

    @property
    def schedule_type(self) -> str | None:
        """AUTOMATIC1111's `Schedule type:` label of the sigmas that ran. Always written for its k-diffusion
        samplers: a missing one reads as `Automatic`, which is each sampler's own default there (Karras for
        DPM++ 2M), so the plain schedule must say `Uniform`."""
        if self.timesteps:
            return None
        return "Karras" if self.options.get("use_karras_sigmas") else "Uniform"


SCHEDULERS = {
    s.name: s
    for s in (
        Scheduler("euler", "EulerDiscreteScheduler", sampler="Euler"),
        Scheduler("euler_a", "EulerAncestralDiscreteScheduler", sampler="Euler a"),
        Scheduler("dpmpp_2m", "DPMSolverMultistepScheduler", sampler="DPM++ 2M"),
        Scheduler("dpmpp_2m_karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "DPM++ 2M"),
        Scheduler("ddim", "DDIMScheduler", sampler="DDIM", timesteps=True),
        Scheduler("unipc", "UniPCMultistepScheduler", sampler="UniPC", timesteps=True),
    )
}
SCHEDULER_NAMES = tuple(SCHEDULERS)
