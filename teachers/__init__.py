"""Teachers: every pretrained diffusion model becomes one EDM denoiser D(x, sigma, cond)."""

from teachers.base import BackboneFeeding, Denoiser, Teacher
from teachers.registry import TeacherSpecError, available, load, register

__all__ = ["BackboneFeeding", "Denoiser", "Teacher", "TeacherSpecError", "available", "load", "register"]
