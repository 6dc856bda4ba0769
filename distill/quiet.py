"""Silence the third-party messages that every command printed and no user can act on; nothing else.

Each filter names one message by its text and its source, so a new warning still shows:
- Lightning's "Tip: ... try installing litlogger/litmodels" adverts (lightning 2.6,
  trainer/connectors/logger_connector/logger_connector.py and callback_connector.py), logged at INFO level
  through the `lightning.pytorch.utilities.rank_zero` logger on every Trainer;
- its two "Restor(ing|ed) ... states from the checkpoint" lines on resume, which `distill fit` replaces by
  one "resuming at step k of N (from PATH)" line;
- torch >= 2.10's FutureWarning that `LeafSpec` is deprecated, raised from Lightning's own
  `lightning/pytorch/utilities/_pytree.py` on every fit (Lightning's to fix, not the user's).
"""

from __future__ import annotations

import logging
import warnings

RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
DROPPED_PREFIXES = ("💡 Tip:", "Restoring states from the checkpoint path at ",
                    "Restored all states from the checkpoint at ")


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(DROPPED_PREFIXES)


_FILTER = _DropAdverts()


def quiet_third_party() -> None:
    """Idempotent; called by the CLI and by `distill.training.fit` (for API users)."""
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")
