"""Exports of a trained student: its own files (student.safetensors + student.json, `student`), a one-step ONNX
graph (`onnx`), and diffusers' UNet or LoRA folders for LCM students (`diffusers`).

`from distill.export import load_student, ...` keeps working: the student files' API is re-exported here.
"""

from distill.export.student import (  # noqa: F401
    META_TYPES,
    SCHEMA_VERSION,
    StudentLoadError,
    atomic_write_bytes,
    check_meta,
    load_student,
    nonfinite_tensors,
    rebuild_student,
    student_metadata,
    update_sampling_sigmas,
    upgrade_metadata,
    write_export,
)
