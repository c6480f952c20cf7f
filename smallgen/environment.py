"""What the scripts check about the installation before diffusers and transformers are imported.

A torchvision built for another torch (PyPI's CUDA torchvision beside a CPU-only torch, or another
version) fails deep inside their imports with ``operator torchvision::nms does not exist``; checked
first, it is one line that says how to install a matching pair.
"""

from smallgen.errors import UserError, exit_on_user_error

CPU_INSTALL = "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu"


def check_torchvision() -> None:
    """UserError if torchvision cannot load beside the installed torch."""
    try:
        import torchvision  # noqa: F401
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
        import torch

        raise UserError(f"torchvision was not built for the installed torch {torch.__version__} ({exc}). Install "
                        f"the two as a pair from one index, for a machine without a GPU: {CPU_INSTALL}") from None


def require_a_working_installation() -> None:
    """The scripts' first call: one 'error: ...' line and exit status 2 on a broken installation."""
    with exit_on_user_error():
        check_torchvision()
