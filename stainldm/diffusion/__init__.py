"""Noise schedules and samplers of the latent diffusion model (no slide I/O here)."""

from stainldm.diffusion.samplers import SAMPLERS, ddim_sample, dpmpp_2m_sample, sample
from stainldm.diffusion.schedule import NoiseSchedule, ScheduleConfig, check_schedule_config

__all__ = [
    "SAMPLERS",
    "NoiseSchedule",
    "ScheduleConfig",
    "check_schedule_config",
    "ddim_sample",
    "dpmpp_2m_sample",
    "sample",
]
