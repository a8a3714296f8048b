"""Sparkplug B decoding cost on the network thread: DDATA messages through the host decoder.

Usage::

    .venv/bin/python bench/sparkplug_decode.py [--messages 20000] [--metrics 5]

Births one edge node and one device with ``--metrics`` Double metrics, then times
:meth:`SparkplugDecoder.handle` on ``--messages`` DDATA payloads by alias (encoded
beforehand, so only decoding is timed). A measurement, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import time

from streamwatch.config import PayloadConfig
from streamwatch.ingest import sparkplug as sp
from streamwatch.ingest import spb_payload as spb


def main() -> None:
    """Run the measurement and print it."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--metrics", type=int, default=5)
    args = ap.parse_args()
    dec = sp.SparkplugDecoder(PayloadConfig())
    now = time.time()
    ms = int(now * 1000)
    bd = spb.Metric(name="bdSeq", datatype=spb.UINT64, value=0)
    dec.handle(
        "spBv1.0/g/NBIRTH/e", spb.encode(spb.Payload(timestamp=ms, seq=0, metrics=[bd])), now
    )
    declared = [
        spb.Metric(name=f"m{i}", alias=i, datatype=spb.DOUBLE, value=1.0)
        for i in range(args.metrics)
    ]
    dec.handle("spBv1.0/g/DBIRTH/e/d", spb.encode(spb.Payload(seq=1, metrics=declared)), now)
    payloads = [
        spb.encode(
            spb.Payload(
                timestamp=ms + k,
                seq=(k + 2) % 256,
                metrics=[
                    spb.Metric(alias=i, timestamp=ms + k, value=float(k))
                    for i in range(args.metrics)
                ],
            )
        )
        for k in range(args.messages)
    ]
    readings = 0
    started = time.perf_counter()
    for p in payloads:
        readings += len(dec.handle("spBv1.0/g/DDATA/e/d", p, now + 60).readings)
    took = time.perf_counter() - started
    print(
        f"{args.messages} DDATA x {args.metrics} metrics: {args.messages / took:,.0f} "
        f"messages/s, {readings / took:,.0f} readings/s ({readings} readings)"
    )


if __name__ == "__main__":
    main()
