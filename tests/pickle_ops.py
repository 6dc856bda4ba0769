"""Test helper: write pickles opcode by opcode, for hostile files the stock pickler never produces
(BUILD on a global, cycles, shared references, deep nesting, huge memo indices)."""

from __future__ import annotations

import io
import pickle
import struct
import warnings
from collections import OrderedDict

import torch


class Ops:
    """A protocol-2 pickle under construction; every method appends opcodes and returns self."""

    def __init__(self):
        self.data = bytearray(b"\x80\x02")

    def raw(self, b: bytes) -> Ops:
        self.data += b
        return self

    def glob(self, module: str, name: str) -> Ops:
        return self.raw(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def str(self, s: str) -> Ops:
        b = s.encode()
        return self.raw(b"X" + struct.pack("<I", len(b)) + b)

    def int(self, i: int) -> Ops:
        if 0 <= i < 2**31:
            return self.raw(b"J" + struct.pack("<i", i))
        n = (i.bit_length() + 8) // 8
        return self.raw(b"\x8a" + bytes([n]) + i.to_bytes(n, "little", signed=True))

    def bytes(self, b: bytes) -> Ops:
        return self.raw(b"B" + struct.pack("<I", len(b)) + b)

    def none(self) -> Ops:
        return self.raw(b"N")

    def dict(self) -> Ops:
        return self.raw(b"}")

    def list(self) -> Ops:
        return self.raw(b"]")

    def mark(self) -> Ops:
        return self.raw(b"(")

    def tuple(self) -> Ops:  # MARK ... TUPLE
        return self.raw(b"t")

    def tuple1(self) -> Ops:
        return self.raw(b"\x85")

    def tuple2(self) -> Ops:
        return self.raw(b"\x86")

    def setitem(self) -> Ops:
        return self.raw(b"s")

    def append(self) -> Ops:
        return self.raw(b"a")

    def reduce(self) -> Ops:
        return self.raw(b"R")

    def build(self) -> Ops:
        return self.raw(b"b")

    def put(self, i: int) -> Ops:
        return self.raw(b"r" + struct.pack("<I", i))

    def get(self, i: int) -> Ops:
        return self.raw(b"j" + struct.pack("<I", i))

    def pop(self) -> Ops:
        return self.raw(b"0")

    def done(self) -> bytes:
        return bytes(self.data + b".")


def item(ops: Ops, key: str, value) -> Ops:
    """dict on the stack: push key and value (a callable that writes it), SETITEM."""
    ops.str(key)
    value(ops)
    return ops.setitem()


def record(ops: Ops, class_name: str, state: callable) -> Ops:
    """A persistence record: _reconstruct_persistent_obj({class_name, state}) as NVlabs writes it."""
    ops.glob("torch_utils.persistence", "_reconstruct_persistent_obj").dict()
    item(ops, "class_name", lambda o: o.str(class_name))
    item(ops, "state", state)
    return ops.tuple1().reduce()


def build_on_global(module: str, name: str, attr: str = "pwned") -> bytes:
    """BUILD with slot state on an allowed global itself: setattr(global, attr, 1) in a stock unpickler."""
    ops = Ops().glob(module, name).none().dict()
    item(ops, attr, lambda o: o.int(1))
    return ops.tuple2().build().done()


def legacy_storage_blob(values=(1.0, 2.0, 3.0)) -> bytes:
    """What torch.storage._load_from_bytes receives in an NVlabs pickle: a legacy torch.save of a storage."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage is deprecated; NVlabs files hold them anyway
        torch.save(torch.tensor(values).storage(), buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


class TensorRecord:
    """Pickles as _rebuild_tensor_v2(storage, offset, size, stride): a tensor record of the attacker's choice."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


def tensor_record_pickle(offset: int, size: tuple, stride: tuple, values=(1.0, 2.0, 3.0)) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        storage = torch.tensor(values).storage()
        return pickle.dumps({"t": TensorRecord(storage, offset, size, stride)}, protocol=4)
