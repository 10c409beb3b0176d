"""``none``: no attack; every worker is honest."""
from .base import Attack


class NoAttack(Attack):
    """No Byzantine worker. Build it with n_byzantine = 0: the declared f may still be > 0."""

    name = "none"
    kind = "none"
    source = "baseline"

    def _validate(self):
        if self.n_byzantine:
            raise ValueError(f"attack 'none' with n_byzantine = {self.n_byzantine}: set n_byzantine = 0 "
                             "(keep f for the rule) or choose an attack")
