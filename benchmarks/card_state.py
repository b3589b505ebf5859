"""Memory per active card: RSS growth of a worker-shaped card table at 100k and 1M cards.

The worker keeps each card's state as the bytes its Faust table stores (``delivery.encode_card``: format v3,
the used part of the state's array, its merchant ids), keyed by the card id. This builds exactly that, through
the same `featurize`, for N cards with --tx transactions each over a few days, and reports RSS growth per card
(what a worker's memory grows by) beside the stored bytes per card (what its changelog holds).
The `CardState` objects themselves, not serialised (an 805-float array each), are shown as the baseline a naive
worker would keep.
Run: python benchmarks/card_state.py [--cards 100000 1000000] [--tx 5]
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from pathlib import Path

from stream_app.domain.events import Transaction
from stream_app.domain.features import CardState, featurize
from stream_app.worker.delivery import encode_card

HORIZON_MS = 7 * 86_400_000
START_MS = 1_767_225_600_000


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def transactions(card: int, n: int, rng: random.Random) -> list[Transaction]:
    ts = START_MS + rng.randrange(86_400_000)
    out = []
    for i in range(n):
        ts += rng.randrange(60_000, 2 * 86_400_000)
        out.append(Transaction(f"tx-{card}-{i}", f"card_{card:012x}", f"m_{rng.randrange(800):05d}",
                               round(rng.lognormvariate(3.5, 1.0), 2), "EUR", ts, "DE",
                               rng.choice(("pos", "ecom", "atm")), "5411"))
    return out


def measure(n_cards: int, n_tx: int, serialised: bool) -> tuple[float, float]:
    """(RSS growth per card, stored bytes per card)."""
    rng = random.Random(7)
    gc.collect()
    before = rss_bytes()
    table: dict[bytes, object] = {}
    stored = 0
    started = time.monotonic()
    for card in range(n_cards):
        states: dict[str, CardState] = {}
        for tx in transactions(card, n_tx, rng):
            featurize(states, tx, HORIZON_MS)
        ((card_id, state),) = states.items()
        value = encode_card(state, None)  # as the worker's table keeps it
        stored += len(value)
        table[card_id.encode()] = value if serialised else state
        if card and card % 100_000 == 0:
            print(f"  {card:,} cards, {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    gc.collect()
    growth = (rss_bytes() - before) / n_cards
    del table
    gc.collect()
    return growth, stored / n_cards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cards", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--tx", type=int, default=5, help="transactions per card")
    args = parser.parse_args()
    print(f"{'cards':>10} {'form':<12} {'RSS/card':>10} {'stored/card':>12}")
    worst = 0.0
    for n in args.cards:
        for serialised in (True, False):
            growth, stored = measure(n, args.tx, serialised)
            form = "stored bytes" if serialised else "CardState"
            print(f"{n:>10,} {form:<12} {growth:>9.0f}B {stored:>11.0f}B", flush=True)
            if serialised:
                worst = max(worst, growth)
    print(f"RESULT cards={max(args.cards)} tx_per_card={args.tx} rss_bytes_per_card={worst:.0f}")


if __name__ == "__main__":
    main()
