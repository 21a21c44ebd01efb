import io

from raybench.console import Console, EpochProgress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_gets_a_step_bar_and_epoch_lines(capsys):
    term = FakeTerminal()
    view = EpochProgress(Console(), lambda row: f"Epoch {row['epoch']} done", stream=term)
    view({"progress": True, "epoch": 1, "step": 40, "steps": 100})
    view({"progress": True, "epoch": 1, "step": 90, "steps": 100})
    view({"epoch": 1})
    view.close()
    assert "90/100" in term.getvalue() and "epoch 1" in term.getvalue()
    assert "Epoch 1 done" in capsys.readouterr().out


def test_plain_output_and_quiet(capsys):
    view = EpochProgress(Console(), lambda row: f"Epoch {row['epoch']} done",
                         stream=io.StringIO())
    view({"progress": True, "epoch": 2, "step": 5, "steps": 10})
    view({"progress": True, "epoch": 2, "step": 6, "steps": 10})  # within 30 s: not repeated
    view({"epoch": 2})
    out = capsys.readouterr().out
    assert out.count("step 5/10") == 1 and "step 6/10" not in out and "Epoch 2 done" in out
    quiet = EpochProgress(Console(quiet=True), lambda row: "never", stream=io.StringIO())
    quiet({"epoch": 1})
    assert capsys.readouterr().out == ""
