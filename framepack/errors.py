"""Which engine errors speak to the user (one clear line), as opposed to bugs that deserve a traceback."""

from __future__ import annotations

from framepack.events import Cancelled
from framepack.images import ImageInputError
from framepack.plan import PlanError
from framepack.video.encoder import EncoderError


def user_error_message(error: BaseException) -> str | None:
    """The message to show for a user-facing error, None for anything else."""
    from framepack.models.loader import ModelUnavailableError
    from framepack.models.recipe import RecipeError

    if isinstance(error, Cancelled):
        return "cancelled; no partial output was kept"
    if isinstance(error, (PlanError, ImageInputError, EncoderError, RecipeError, ModelUnavailableError)):
        return str(error)
    if isinstance(error, ValueError) and str(error).split(":")[0].replace("_", "").replace(".", "").isalnum():
        return str(error)  # "field: reason" raised while reading flags or files
    return None
