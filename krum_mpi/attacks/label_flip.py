"""``label-flip``: a data attack; the Byzantine workers train on labels mapped y -> C - 1 - y.

The training loop computes the Byzantine workers' gradients on ``label_map(y, C)`` and passes
exactly those n_byzantine gradients to ``craft``, which returns them unchanged: nothing else is
crafted. (For MNIST the map is 9 - y; for a binary task it swaps the two classes.)
"""
from .base import Attack, check_int


class LabelFlip(Attack):
    name = "label-flip"
    kind = "data"
    source = "label flipping, e.g. Allen-Zhu et al. ICLR 2021; Karimireddy et al. ICML 2021"

    def label_map(self, y, n_classes: int):
        n_classes = check_int("n_classes", n_classes, low=2)
        return (n_classes - 1) - y

    def _craft(self, xp, honest, n_byzantine, rng, aggregate):
        if honest.shape[0] != n_byzantine:
            raise ValueError(f"label-flip is a data attack: pass the {n_byzantine} Byzantine workers' gradients "
                             f"computed on flipped labels, got {honest.shape[0]} vectors")
        return honest
