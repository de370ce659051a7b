"""What the run tests share: an action taken inside a run's step loop (a crash, a signal)."""


def before_step(monkeypatch, run_class, completed: int, action) -> None:
    """``run_class.step`` calls ``action()`` first when ``completed`` steps are done."""
    original_step = run_class.step

    def step(self):
        if self.completed == completed:
            action()
        return original_step(self)
    monkeypatch.setattr(run_class, "step", step)
