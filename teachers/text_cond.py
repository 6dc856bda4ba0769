"""The condition of a text-to-image teacher or student: text-encoder states, SDXL's added conditions, w.

Built by the latent teacher from captions (teachers/diffusers_latent.py) and handed, unchanged, to the
teacher's denoiser and to the student, as `cond` (DESIGN.md: `D(x, sigma, cond)`).

- `text`: (B, L, D) hidden states of the text encoder(s), the UNet's `encoder_hidden_states`.
- `pooled`, `time_ids`: SDXL's added conditions (`added_cond_kwargs` text_embeds and time_ids), else None.
- `w`: (B,) classifier-free guidance scale in diffusers' convention (1 = the conditional model, no
  guidance); the teacher guides with it, a student with a guidance embedding reads it (LCM sec. 4.2).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class TextCond:
    text: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None
    w: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.text.shape[0]

    def _map(self, fn) -> TextCond:
        return TextCond(*(None if v is None else fn(v) for v in (self.text, self.pooled, self.time_ids, self.w)))

    def to(self, device=None, dtype=None) -> TextCond:
        """Floating tensors move (and are cast to `dtype` when given); w stays float64-exact if it was."""
        def move(v):
            return v.to(device=device, dtype=dtype if dtype is not None and v.is_floating_point() else None)
        return self._map(move)

    def __getitem__(self, index) -> TextCond:
        return self._map(lambda v: v[index])

    def with_w(self, w: torch.Tensor | float) -> TextCond:
        w = torch.as_tensor(w, dtype=torch.float64, device=self.text.device)
        return replace(self, w=w.expand(len(self)).clone() if w.ndim == 0 else w)

    @staticmethod
    def cat(conds: list[TextCond]) -> TextCond:
        def join(name):
            values = [getattr(c, name) for c in conds]
            return None if values[0] is None else torch.cat(values)
        return TextCond(join("text"), join("pooled"), join("time_ids"), join("w"))
