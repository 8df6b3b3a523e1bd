"""When to stop training: a validation plateau.

Every `eval_every` steps the student answers a held-out slice of the train split (`val_size` inputs
never trained on) with the label task, greedily, as at test time. An evaluation improves on the best
so far when its accuracy is higher, or equal with a lower label loss (teacher-forced, on the same
slice). Training stops after `patience` evaluations in a row without improvement, and the weights of
the best evaluation are the ones written out. The curve (every evaluation) is kept in the record.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Plateau:
    patience: int                   # evaluations without improvement before stopping; 0 = never stop early
    best_step: int = 0
    best_accuracy: float = -1.0
    best_loss: float = float("inf")
    since_best: int = 0
    curve: list[dict] = field(default_factory=list)  # {"step", "accuracy", "loss", ...} per evaluation

    def update(self, step: int, accuracy: float, loss: float, **counts) -> bool:
        """Record one evaluation; True when it is the new best."""
        self.curve.append({"step": step, "accuracy": round(accuracy, 4), "loss": round(loss, 5), **counts})
        improved = accuracy > self.best_accuracy or (accuracy == self.best_accuracy and loss < self.best_loss)
        if improved:
            self.best_step, self.best_accuracy, self.best_loss, self.since_best = step, accuracy, loss, 0
        else:
            self.since_best += 1
        return improved

    @property
    def stop(self) -> bool:
        return self.patience > 0 and self.since_best >= self.patience

    def state(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> "Plateau":
        return cls(**state)
