"""Distil pretrained diffusion models into one- and few-step consistency models.

`distill.load_student(path)` (a run directory, a student.safetensors with its student.json, or a .ckpt)
returns the student with `.sample(...)` and the zero-shot editing methods (`distill.api.Student`).
Heavy modules (torch, Lightning) load on first use, so `import distill` stays cheap.
"""

from __future__ import annotations

__all__ = ["load_student"]


def __getattr__(name: str):
    if name == "load_student":
        from distill.export import load_student

        return load_student
    raise AttributeError(f"module 'distill' has no attribute {name!r}")
