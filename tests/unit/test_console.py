import io

from raybench.console import Console, EpochProgress
from raybench.results import StepProgress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_gets_a_step_bar_and_epoch_lines(capsys):
    term = FakeTerminal()
    view = EpochProgress(Console(), lambda row: f"Epoch {row['epoch']} done", stream=term)
    view(StepProgress(1, 40, 100))
    view(StepProgress(1, 90, 100))
    view({"epoch": 1})
    view.close()
    assert "90/100" in term.getvalue() and "epoch 1" in term.getvalue()
    assert "Epoch 1 done" in capsys.readouterr().out


def test_plain_output_and_quiet(capsys):
    view = EpochProgress(Console(), lambda row: f"Epoch {row['epoch']} done",
                         stream=io.StringIO())
    view(StepProgress(2, 5, 10))
    view(StepProgress(2, 6, 10))  # within 30 s: not repeated
    view({"epoch": 2})
    out = capsys.readouterr().out
    assert out.count("step 5/10") == 1 and "step 6/10" not in out and "Epoch 2 done" in out
    quiet = EpochProgress(Console(quiet=True), lambda row: "never", stream=io.StringIO())
    quiet({"epoch": 1})
    assert capsys.readouterr().out == ""
