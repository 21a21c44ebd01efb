"""False alarms of the hang bounds: count the runs the test tiers left records of (every
timing.json, every run of every scaling.json under the given pytest base directories) outside
the tests that stop a rank on purpose, and those among them that recorded a stall (a hang
timeout).

    python scripts/count_stalls.py /tmp/pytest-of-$USER/pytest-82 /tmp/pytest-of-$USER/pytest-83
"""

import json
import sys
from pathlib import Path

FAULT_TESTS = ("test_a_rank_stopped", "test_a_wedged", "test_each_fault", "test_a_pause",
               "test_a_frozen", "test_a_rank_held")


def records(path: Path) -> list[list[dict]]:
    """Each run's recoveries in one timing.json or scaling.json."""
    doc = json.loads(path.read_text())
    if path.name == "timing.json":
        return [doc.get("recoveries") or []]
    return [run.get("recoveries") or [] for run in doc.get("runs", [])]


def main(bases: list[str]) -> None:
    runs = alarms = on_purpose = 0
    for base in bases:
        for path in Path(base).rglob("*.json"):
            if path.name not in ("timing.json", "scaling.json"):
                continue
            try:
                found = records(path)
            except (OSError, ValueError):
                continue
            test = next((p for p in path.parts if p.startswith("test_")), "?")
            for recoveries in found:
                if test.startswith(FAULT_TESTS):
                    on_purpose += 1
                    continue
                runs += 1
                stalls = [r for r in recoveries if r.get("fault") == "stall"
                          or "hang timeout" in (r.get("cause") or "")]
                if stalls:
                    alarms += 1
                    print("stall:", path, stalls[0].get("cause"))
    print(f"healthy runs with a record: {runs}; with a stall: {alarms}; "
          f"runs in the fault tests: {on_purpose}")


if __name__ == "__main__":
    main(sys.argv[1:])
