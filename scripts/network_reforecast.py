"""A sweep's network forecasts made again from what its scaling.json stored (the probe's rows,
DDP's buckets, each launcher's N=1 work and phases, backward's share), with the network model
as it is now and with the ring fitted to the probe instead of its per-size times: both beside
what the sweep measured, so two models of the link are compared on one measurement.

    python scripts/network_reforecast.py results/net100/scaling.json
"""

from __future__ import annotations

import dataclasses
import sys

from raybench.forecast import launcher_work
from raybench.network_forecast import link_of, network_forecast
from raybench.results import ScalingDoc, read_doc


def main(path: str) -> None:
    doc = read_doc(path, ScalingDoc)
    measured_link = link_of(doc.network, None, None)
    fitted_link = dataclasses.replace(measured_link, rows=())  # the ring fit alone
    print(f"{'launcher':<9}{'N':>3}{'measured':>10}{'per-size':>10}{'error':>8}"
          f"{'fitted':>10}{'error':>8}")
    for f in doc.forecasts:
        if not f.link or f.workers < 2 or not f.measured_samples_per_sec:
            continue
        mean1, shape1 = launcher_work(doc.runs, f.backend)
        one = next(r for r in doc.runs if r.label == f.backend and r.workers == 1)
        work = [x * mean1 for x in shape1]
        share = doc.model.backward_share[str(f.batch_size_per_worker)]
        rates = [network_forecast(f.backend, f.workers, f.batch_size_per_worker, work,
                                  one.compute_share or 0.0, share, doc.model.buckets,
                                  link).predicted_samples_per_sec
                 for link in (measured_link, fitted_link)]
        m = f.measured_samples_per_sec
        print(f"{f.backend:<9}{f.workers:>3}{m:>10.1f}{rates[0]:>10.1f}{rates[0] / m - 1:>+8.1%}"
              f"{rates[1]:>10.1f}{rates[1] / m - 1:>+8.1%}")


if __name__ == "__main__":
    main(sys.argv[1])
