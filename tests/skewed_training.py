"""``train_unconditional.py`` with process 1 slower than process 0 at validation (tests only): it sleeps
SKEW_SECONDS at the end of each validation pass, after the pass's reduce, as a busier core or a slower
GPU would make it (before the reduce, process 0 would wait there and time the same). A plan made from
each process's own clock would differ between them."""

import os
import sys
import time

from smallgen import trainer

if os.environ.get("RANK") == "1":
    validate = trainer.Trainer.validate

    def slow_validate(self, *args, **kwargs):
        losses = validate(self, *args, **kwargs)
        time.sleep(float(os.environ.get("SKEW_SECONDS", "1")))
        return losses

    trainer.Trainer.validate = slow_validate

if __name__ == "__main__":
    trainer.main(sys.argv[1:])
