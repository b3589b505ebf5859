"""Deterministic synthetic payment traffic with injected, labelled fraud.

Real card data cannot be shipped with an open-source project, yet the models, the load tests and
the demo need traffic whose fraud is *learnable from the per-card features* and whose legitimate
part is varied enough that the fraud is not trivially separable. This module simulates it:

* customers with a home country (currency follows it), a lognormal spending habit, a rate of
  0.5–6 tx/day, a daily rhythm in their timezone, a few usual merchants and occasional new ones,
  and now and then a legitimate trip abroad (so "foreign country" alone is not fraud);
* merchants with a country, a realistic MCC and a channel mix that follows the MCC;
* four fraud patterns injected as episodes, their frequency driven by a budget so that the fraud
  share of the stream tracks ``fraud_rate`` closely;
* an optional concept drift: from ``drift_at_day`` on only ``drift_patterns`` are injected.

Everything comes from one ``random.Random(seed)``: same config, same stream, tx_ids included.
Nothing in a ``Transaction`` marks it as fraud; the truth travels separately in ``LabeledTx``.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import zlib
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import accumulate
from operator import itemgetter
from typing import Final

from stream_app.domain.events import EUR_RATES, Transaction, format_ts

FRAUD_PATTERNS: tuple[str, ...] = ("card_testing", "stolen_card_abroad", "amount_spike", "compromised_terminal")
#: Patterns a config may add; off by default, so default streams (and the shipped model trained on them) stay
#: as they were: ``GeneratorConfig(patterns=FRAUD_PATTERNS + EXTRA_PATTERNS)``.
EXTRA_PATTERNS: tuple[str, ...] = ("compromised_merchant", "compromised_card")

HOUR_MS: Final = 3_600_000
DAY_MS: Final = 24 * HOUR_MS
MINUTE_MS: Final = 60_000

#: country -> (currency, UTC offset in hours, weight as a customer's home; 0 = only visited).
#: Offsets ignore DST: the rhythm only needs to put night at night, give or take an hour.
COUNTRIES: Final[dict[str, tuple[str, float, float]]] = {
    "DE": ("EUR", 1, 0.20), "FR": ("EUR", 1, 0.16), "ES": ("EUR", 1, 0.11), "IT": ("EUR", 1, 0.11),
    "NL": ("EUR", 1, 0.07), "BE": ("EUR", 1, 0.04), "AT": ("EUR", 1, 0.03), "PT": ("EUR", 0, 0.03),
    "IE": ("EUR", 0, 0.02), "PL": ("PLN", 1, 0.03), "SE": ("SEK", 1, 0.02), "US": ("USD", -5, 0.10),
    "GB": ("GBP", 0, 0.08),
    "CH": ("CHF", 1, 0.0), "TR": ("TRY", 3, 0.0), "AE": ("AED", 4, 0.0), "MX": ("MXN", -6, 0.0),
    "BR": ("BRL", -3, 0.0), "ZA": ("ZAR", 2, 0.0), "SG": ("SGD", 8, 0.0), "JP": ("JPY", 9, 0.0),
    "NG": ("NGN", 1, 0.0), "CA": ("CAD", -5, 0.0), "AU": ("AUD", 10, 0.0), "HK": ("HKD", 8, 0.0),
    "IN": ("INR", 5.5, 0.0), "CN": ("CNY", 8, 0.0), "KR": ("KRW", 9, 0.0),
}
_ZERO_DECIMAL: Final = frozenset({"JPY", "KRW", "HUF"})

#: mcc -> (share of merchants, weight among a customer's usual merchants, amount factor vs habit,
#: channel mix). The channel mix is what a merchant of that kind accepts: 6011 is cash, 4816 online.
MCCS: Final[dict[str, tuple[float, float, float, dict[str, float]]]] = {
    "5411": (0.20, 0.30, 1.0, {"pos": 0.96, "ecom": 0.04}),               # grocery
    "5812": (0.14, 0.14, 0.9, {"pos": 0.92, "ecom": 0.08}),               # restaurants
    "5814": (0.07, 0.10, 0.35, {"pos": 0.90, "ecom": 0.10}),              # fast food
    "5541": (0.07, 0.08, 1.3, {"pos": 1.0}),                              # fuel
    "5999": (0.10, 0.06, 1.0, {"pos": 0.60, "ecom": 0.40}),               # misc retail
    "5311": (0.04, 0.04, 1.5, {"pos": 0.70, "ecom": 0.30}),               # department stores
    "5691": (0.05, 0.03, 1.6, {"pos": 0.55, "ecom": 0.45}),               # clothing
    "5912": (0.05, 0.05, 0.6, {"pos": 0.90, "ecom": 0.10}),               # pharmacy
    "4816": (0.06, 0.05, 0.4, {"ecom": 0.97, "moto": 0.03}),              # digital goods
    "5732": (0.04, 0.01, 3.0, {"pos": 0.45, "ecom": 0.55}),               # electronics
    "6011": (0.07, 0.06, 2.0, {"atm": 1.0}),                              # ATM cash
    "7011": (0.03, 0.00, 5.0, {"pos": 0.45, "ecom": 0.40, "moto": 0.15}),  # hotels
    "4111": (0.06, 0.08, 0.25, {"pos": 0.80, "ecom": 0.20}),              # transit
    "5944": (0.02, 0.00, 5.0, {"pos": 0.75, "ecom": 0.25}),               # jewelry
}

#: Relative activity per local hour 0..23: low at night, peaks at lunch and early evening.
_HOURLY: Final[tuple[float, ...]] = (
    0.12, 0.06, 0.04, 0.03, 0.04, 0.08, 0.30, 0.65, 0.90, 1.00, 1.10, 1.30,
    1.60, 1.40, 1.10, 1.10, 1.30, 1.60, 1.80, 1.70, 1.40, 1.00, 0.60, 0.30,
)
#: Activity per weekday (Monday = 0): busier Friday/Saturday, quieter Sunday.
_WEEKDAY: Final[tuple[float, ...]] = (0.95, 0.95, 1.0, 1.0, 1.1, 1.2, 0.8)

_TRIP_PROB_PER_DAY: Final = 1 / 150  # legitimate trips abroad, so that "foreign" alone is no proof
_FOREIGN_MERCHANT_SHARE: Final = 0.15
_ECOM_ABROAD_SHARE: Final = 0.15  # of a customer's new-merchant purchases: online, anywhere
_NIGHT_HOURS: Final = 5.0  # compromised-terminal fraud happens between 00:00 and 05:00 local

#: Mean fraudulent transactions per episode (from the ranges in the planners below).
_MEAN_EPISODE: Final[dict[str, float]] = {
    "card_testing": 15.35, "stolen_card_abroad": 6.5, "amount_spike": 2.5, "compromised_terminal": 33.75,
    "compromised_merchant": 157.5, "compromised_card": 16.6,
}

_PHYSICAL_MCCS: Final = frozenset({"5411", "5812", "5814", "5541", "5999", "5311", "5691", "5912", "5732", "6011"})
_TERMINAL_MCCS: Final = frozenset({"5411", "5812", "5541", "5999", "5311", "5691", "5912", "5732"})
_SPIKE_MCCS: Final = frozenset({"5732", "5944"})

# Internal event: (ts_ms, card index, merchant index, amount in merchant currency, channel, pattern).
_Event = tuple[int, int, int, float, str, str | None]
_by_ts = itemgetter(0)


@dataclass(frozen=True, slots=True)
class GeneratorConfig:
    """Everything that determines a simulated stream: equal configs give equal streams."""

    seed: int = 42
    n_customers: int = 5000
    n_merchants: int = 800
    start_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z, simulated event time origin
    fraud_rate: float = 0.01  # target share of fraudulent transactions (approximate)
    patterns: tuple[str, ...] = FRAUD_PATTERNS  # which fraud patterns are active
    drift_at_day: float | None = None  # from this simulated day on, use `drift_patterns` instead of `patterns`
    drift_patterns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Fail at construction, not days into a simulation."""
        if self.n_customers < 1:
            raise ValueError("n_customers must be >= 1")
        if self.n_merchants < 20:
            raise ValueError("n_merchants must be >= 20 (every MCC and some foreign merchants are needed)")
        if not 0.0 <= self.fraud_rate < 1.0:
            raise ValueError("fraud_rate must be in [0, 1)")
        unknown = sorted({*self.patterns, *self.drift_patterns} - {*FRAUD_PATTERNS, *EXTRA_PATTERNS})
        if unknown:
            raise ValueError(f"unknown fraud patterns {unknown}; known: {FRAUD_PATTERNS + EXTRA_PATTERNS}")
        if self.drift_at_day is not None and not math.isfinite(self.drift_at_day):
            raise ValueError("drift_at_day must be finite")


@dataclass(frozen=True, slots=True)
class LabeledTx:
    """A transaction and its ground truth, kept apart so the truth cannot leak into features."""

    tx: Transaction
    is_fraud: bool
    pattern: str | None  # the fraud pattern, None for legit


def _money(amount: float, zero_decimal: bool) -> float:
    """Round like a real amount in that currency, never to zero (the parser refuses 0)."""
    if zero_decimal:
        return float(max(1, int(amount + 0.5)))
    return max(0.01, int(amount * 100 + 0.5) / 100)


def _cash(amount: float) -> float:
    """ATM withdrawals come in round notes: two significant digits, tens at least (237 -> 240)."""
    unit = 10.0 ** max(1, int(math.log10(max(amount, 1.0))) - 1)
    return max(unit, round(amount / unit) * unit)


def _poisson(rnd: Callable[[], float], gauss: Callable[[float, float], float], lam: float) -> int:
    """Knuth for small means, a normal approximation when exp(-lam) would underflow."""
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, int(gauss(lam, math.sqrt(lam)) + 0.5))
    limit, k, p = math.exp(-lam), 0, rnd()
    while p > limit:
        k += 1
        p *= rnd()
    return k


def _at_local_hour(not_before_ms: int, local_hour: float, tz_hours: float) -> int:
    """First instant >= not_before_ms at which the local clock (UTC + tz) shows ``local_hour``."""
    local_now = (not_before_ms / HOUR_MS + tz_hours) % 24
    return not_before_ms + int(((local_hour - local_now) % 24) * HOUR_MS)


class _World:
    """The static population (merchants, customers) plus the little mutable state a card has.

    Parallel lists instead of objects per entity: the inner loop is attribute-free and fast.
    """

    def __init__(self, config: GeneratorConfig, r: random.Random) -> None:
        self.r = r
        self.start_ms = config.start_ms
        codes = list(COUNTRIES)
        home_codes = [c for c in codes if COUNTRIES[c][2] > 0]
        home_w = [COUNTRIES[c][2] for c in home_codes]
        foreign_codes = [c for c in codes if COUNTRIES[c][2] == 0]

        # --- merchants
        mccs = list(MCCS)
        mcc_w = [MCCS[m][0] for m in mccs]
        n_m = config.n_merchants
        m_country = [r.choices(home_codes, home_w)[0] if r.random() >= _FOREIGN_MERCHANT_SHARE
                     else r.choice(foreign_codes) for _ in range(n_m)]
        m_mcc = r.choices(mccs, mcc_w, k=n_m)
        # Small configs must still have every kind of merchant the fraud patterns need.
        need = {"4816": 2, "5732": 2, "5944": 1, "6011": 1}
        spare = [i for i in range(n_m) if m_mcc[i] not in need]
        for mcc, k in need.items():
            for _ in range(k - m_mcc.count(mcc)):
                m_mcc[spare.pop()] = mcc
        self.m_id = [f"m_{i:05d}" for i in range(n_m)]
        self.m_country = m_country
        self.m_mcc = m_mcc
        self.m_currency = [COUNTRIES[c][0] for c in m_country]
        self.m_tz = [COUNTRIES[c][1] for c in m_country]
        self.m_per_eur = [1.0 / EUR_RATES[cur] for cur in self.m_currency]
        self.m_zero = [cur in _ZERO_DECIMAL for cur in self.m_currency]
        self.m_factor = [MCCS[m][2] for m in m_mcc]
        self.m_chan: list[tuple[str, ...]] = []
        self.m_chan_cum: list[tuple[float, ...]] = []
        for mcc in m_mcc:
            mix = MCCS[mcc][3]
            names = tuple(mix)
            # Each merchant leans its own way around the MCC's mix (a shop with a big web store...).
            weights = [w * r.uniform(0.5, 1.5) for w in mix.values()]
            total = sum(weights)
            self.m_chan.append(names)
            self.m_chan_cum.append(tuple(w / total for w in accumulate(weights)))

        self.by_country: dict[str, list[int]] = {}
        self.physical_by_country: dict[str, list[int]] = {}
        for i, (c, mcc) in enumerate(zip(m_country, m_mcc, strict=True)):
            self.by_country.setdefault(c, []).append(i)
            if mcc in _PHYSICAL_MCCS:
                self.physical_by_country.setdefault(c, []).append(i)
        self.online = [i for i in range(n_m) if "ecom" in self.m_chan[i]]
        self.digital = [i for i in range(n_m) if m_mcc[i] == "4816"]
        self.spike = [i for i in range(n_m) if m_mcc[i] in _SPIKE_MCCS]
        terminals = [i for i in range(n_m) if m_mcc[i] in _TERMINAL_MCCS and "pos" in self.m_chan[i]]
        self.terminals = [i for i in terminals if COUNTRIES[m_country[i]][2] > 0] or terminals
        self.visitable = [c for c in codes if c in self.physical_by_country]

        # --- customers
        n_c = config.n_customers
        self.card_id: list[str] = []
        seen_ids: set[str] = set()
        for i in range(n_c):
            salt = 0
            while True:  # a 48-bit collision is improbable, but uniqueness is a contract
                digest = hashlib.blake2b(f"{config.seed}:{i}:{salt}".encode(), digest_size=6).hexdigest()
                card = "card_" + digest
                if card not in seen_ids:
                    break
                salt += 1
            seen_ids.add(card)
            self.card_id.append(card)
        self.home = r.choices(home_codes, home_w, k=n_c)
        self.by_home: dict[str, list[int]] = {}
        for i, c in enumerate(self.home):
            self.by_home.setdefault(c, []).append(i)
        # Typical amount (EUR): lognormal across customers, clipped to 5-200.
        self.typical = [min(200.0, max(5.0, r.lognormvariate(math.log(30.0), 0.75))) for _ in range(n_c)]
        self.sigma = [r.uniform(0.35, 0.8) for _ in range(n_c)]
        rate = [math.exp(r.uniform(math.log(0.5), math.log(6.0))) for _ in range(n_c)]
        self.rate = rate
        # exp(-rate * weekday factor) per weekday: the Knuth threshold, precomputed for the hot loop.
        self.exp_neg_rate = [[math.exp(-lam * f) for lam in rate] for f in _WEEKDAY]
        self.p_new = [r.uniform(0.03, 0.15) for _ in range(n_c)]
        self.chrono = [r.choice((-1, 0, 0, 0, 1, 2)) for _ in range(n_c)]
        self._hour_tables: dict[tuple[float, int], tuple[float, ...]] = {}
        self.hour_cum = [self.hour_table(COUNTRIES[self.home[i]][1], self.chrono[i]) for i in range(n_c)]

        all_domestic = [i for i in range(n_m) if COUNTRIES[m_country[i]][2] > 0]
        usual_w = {m: MCCS[m][1] for m in mccs}
        self.usual: list[tuple[int, ...]] = []
        self.usual_cum: list[tuple[float, ...]] = []
        self.home_pool: list[list[int]] = []
        pool_cum: dict[str, tuple[float, ...]] = {}
        for i in range(n_c):
            pool = self.by_country.get(self.home[i]) or all_domestic
            self.home_pool.append(pool)
            cum = pool_cum.get(self.home[i])
            if cum is None:
                weights = [usual_w[m_mcc[m]] for m in pool]
                cum = pool_cum[self.home[i]] = tuple(accumulate(weights if any(weights) else [1.0] * len(pool)))
            k = min(r.randint(3, 8), len(pool))
            chosen: list[int] = []
            for _ in range(k * 4):
                m = pool[bisect_right(cum, r.random() * cum[-1])]
                if m not in chosen:
                    chosen.append(m)
                    if len(chosen) == k:
                        break
            pref = [1.0 / (rank + 1) ** 0.9 for rank in range(len(chosen))]  # a favourite, then others
            total = sum(pref)
            self.usual.append(tuple(chosen))
            self.usual_cum.append(tuple(w / total for w in accumulate(pref)))
        # Merchants each card has used: "first use of merchant" must mean what it says for fraud.
        self.used: list[set[int]] = [set(u) for u in self.usual]
        # Legitimate trips: until which day index a customer is abroad, where, at which merchants.
        self.trip_until = [-1] * n_c
        self.trip_merchants: list[tuple[int, ...]] = [()] * n_c
        self.trip_hour_cum: list[tuple[float, ...]] = [()] * n_c
        self.stolen: set[int] = set()  # cards whose details were stolen (compromised_card)

    def hour_table(self, tz_hours: float, chrono: int) -> tuple[float, ...]:
        """Cumulative activity over the 24 hours following the simulation's day boundary."""
        key = (tz_hours, chrono)
        table = self._hour_tables.get(key)
        if table is None:
            origin_hour = (self.start_ms / HOUR_MS) % 24
            weights = [_HOURLY[int(origin_hour + h + tz_hours - chrono) % 24] for h in range(24)]
            table = tuple(accumulate(weights))
            self._hour_tables[key] = table
        return table

    # ----------------------------------------------------------------- legitimate traffic
    def start_trips(self, day: int) -> None:
        """A few customers leave for 2-10 days; while away they pay at local merchants."""
        r = self.r
        n = _poisson(r.random, r.gauss, len(self.card_id) * _TRIP_PROB_PER_DAY)
        for _ in range(n):
            c = r.randrange(len(self.card_id))
            if self.trip_until[c] >= day:
                continue
            home = self.home[c]
            options = [x for x in self.visitable if x != home]
            if not options:
                continue
            near = [x for x in options if COUNTRIES[x][2] > 0]
            dest = r.choice(near if near and r.random() < 0.65 else options)
            pool = self.physical_by_country[dest]
            self.trip_until[c] = day + r.randint(2, 10) - 1
            self.trip_merchants[c] = tuple(r.sample(pool, min(len(pool), r.randint(3, 6))))
            self.trip_hour_cum[c] = self.hour_table(COUNTRIES[dest][1], self.chrono[c])

    def legit_day(self, day: int, day_start: int) -> list[_Event]:
        """Every customer's legitimate transactions of one simulated day, unsorted."""
        r = self.r
        rnd, gauss, choice = r.random, r.gauss, r.choice
        exp, bisect = math.exp, bisect_right
        weekday = (day_start // DAY_MS + 3) % 7
        thresholds = self.exp_neg_rate[weekday]
        typical, sigma, p_new = self.typical, self.sigma, self.p_new
        usual, usual_cum, hour_cum, used = self.usual, self.usual_cum, self.hour_cum, self.used
        trip_until, trip_merchants, trip_hour_cum = self.trip_until, self.trip_merchants, self.trip_hour_cum
        home_pool, online = self.home_pool, self.online
        m_factor, m_per_eur, m_zero = self.m_factor, self.m_per_eur, self.m_zero
        m_chan, m_chan_cum = self.m_chan, self.m_chan_cum
        out: list[_Event] = []
        append = out.append
        for c, limit in enumerate(thresholds):
            # Poisson count (Knuth), inlined: this loop runs once per customer per day.
            k, p = 0, rnd()
            while p > limit:
                k += 1
                p *= rnd()
            if not k:
                continue
            away = trip_until[c] >= day
            cum = trip_hour_cum[c] if away else hour_cum[c]
            total = cum[23]
            typ, sig, pn = typical[c], sigma[c], p_new[c]
            for _ in range(k):
                ts = day_start + bisect(cum, rnd() * total) * HOUR_MS + int(rnd() * HOUR_MS)
                channel = ""
                if away:
                    m = choice(trip_merchants[c])
                    used[c].add(m)
                elif rnd() < pn:
                    if rnd() < _ECOM_ABROAD_SHARE:
                        m = choice(online)
                        channel = "ecom"
                    else:
                        m = choice(home_pool[c])
                    used[c].add(m)
                else:
                    ucum = usual_cum[c]
                    m = usual[c][bisect(ucum, rnd() * ucum[-1])]
                if not channel:
                    names = m_chan[m]
                    channel = names[0] if len(names) == 1 else names[bisect(m_chan_cum[m], rnd() * m_chan_cum[m][-1])]
                local = typ * m_factor[m] * exp(gauss(0.0, sig)) * m_per_eur[m]
                if channel == "atm":
                    amount = _cash(local)
                elif m_zero[m]:
                    amount = float(max(1, int(local + 0.5)))
                else:
                    amount = max(0.01, int(local * 100 + 0.5) / 100)
                append((ts, c, m, amount, channel, None))
        return out

    # ----------------------------------------------------------------- fraud episodes
    def _amount(self, m: int, eur: float, channel: str) -> float:
        local = eur * self.m_per_eur[m]
        return _cash(local) if channel == "atm" else _money(local, self.m_zero[m])

    def _card_without(self, m: int, exclude: set[int]) -> int | None:
        """A card that never used merchant ``m`` (and is not in ``exclude``), mostly a local one."""
        r = self.r
        local = self.by_home.get(self.m_country[m])
        for _ in range(50):
            c = r.choice(local) if local and r.random() < 0.7 else r.randrange(len(self.card_id))
            if c not in exclude and m not in self.used[c]:
                return c
        return None

    def card_testing(self, start: int) -> list[_Event]:
        """A burst of 5-25 tiny online charges, seconds apart, maybe then one real purchase."""
        r = self.r
        c = r.randrange(len(self.card_id))
        merchants = r.sample(self.digital, min(len(self.digital), r.choice((1, 1, 2))))
        out: list[_Event] = []
        t = start
        for _ in range(r.randint(5, 25)):
            t += r.randint(3_000, 90_000)
            m = r.choice(merchants)
            out.append((t, c, m, self._amount(m, r.uniform(0.5, 3.0), "ecom"), "ecom", "card_testing"))
        if r.random() < 0.35:
            t += r.randint(2 * MINUTE_MS, 3 * HOUR_MS)
            m = r.choice(self.spike + self.digital)
            out.append((t, c, m, self._amount(m, self.typical[c] * r.uniform(3.0, 10.0), "ecom"), "ecom",
                        "card_testing"))
        self.used[c].update(e[2] for e in out)
        return out

    def stolen_card_abroad(self, start: int) -> list[_Event]:
        """3-10 in-person purchases/withdrawals within hours, in a country the card is not in."""
        r = self.r
        c = r.randrange(len(self.card_id))
        home = self.home[c]
        away = self.trip_merchants[c] if self.trip_until[c] >= (start - self.start_ms) // DAY_MS else ()
        here = {self.m_country[m] for m in away} | {home}
        options = [x for x in self.visitable if x not in here]
        foreign = [x for x in options if COUNTRIES[x][2] == 0]
        if not options:
            return []
        country = r.choice(foreign if foreign and r.random() < 0.6 else options)
        pool = [m for m in self.physical_by_country[country] if m not in self.used[c]]
        if not pool:
            return []
        out: list[_Event] = []
        t = start
        typ = self.typical[c]
        for _ in range(r.randint(3, 10)):
            t += r.randint(4 * MINUTE_MS, 50 * MINUTE_MS)
            m = r.choice(pool)
            channel = "atm" if self.m_mcc[m] == "6011" else "pos"
            out.append((t, c, m, self._amount(m, typ * r.uniform(3.0, 8.0), channel), channel,
                        "stolen_card_abroad"))
        self.used[c].update(e[2] for e in out)
        return out

    def amount_spike(self, start: int) -> list[_Event]:
        """Account takeover: 1-4 online electronics/jewelry orders at 5-20x the habit, within a day."""
        r = self.r
        c = r.randrange(len(self.card_id))
        home_spike = [m for m in self.spike if self.m_country[m] == self.home[c]]
        pool = home_spike if home_spike and r.random() < 0.7 else self.spike
        typ = self.typical[c]
        offsets = sorted([0] + [r.randint(5 * MINUTE_MS, DAY_MS - 1) for _ in range(r.randint(1, 4) - 1)])
        out: list[_Event] = []
        for off in offsets:
            m = r.choice(pool)
            out.append((start + off, c, m, self._amount(m, typ * r.uniform(5.0, 20.0), "ecom"), "ecom",
                        "amount_spike"))
        self.used[c].update(e[2] for e in out)
        return out

    def compromised_terminal(self, start: int) -> list[_Event]:
        """One terminal, 2-7 days: each night, cards new to it pay well above their habit."""
        r = self.r
        if not self.terminals:
            return []
        m = r.choice(self.terminals)
        tz = self.m_tz[m]
        out: list[_Event] = []
        cards: set[int] = set()
        for night in range(r.randint(2, 7)):
            base = start + night * DAY_MS
            for _ in range(r.randint(3, 12)):
                c = self._card_without(m, cards)
                if c is None:
                    break
                cards.add(c)
                t = _at_local_hour(base, r.uniform(0.0, _NIGHT_HOURS), tz)
                out.append((t, c, m, self._amount(m, self.typical[c] * r.uniform(3.0, 9.0), "pos"), "pos",
                            "compromised_terminal"))
        for c in cards:
            self.used[c].add(m)
        out.sort(key=_by_ts)
        return out

    def compromised_merchant(self, start: int) -> list[_Event]:
        """A compromised shop, 14-28 days: each day 3-12 cards are defrauded *at it*, in daytime, with
        amounts like their own spending. Nothing in a card's history looks unusual; only the shop's fraud
        rate, once its first labels arrive, does (public simulators' "compromised terminal")."""
        r = self.r
        if not self.terminals:
            return []
        m = r.choice(self.terminals)
        tz = self.m_tz[m]
        local = self.by_home.get(self.m_country[m])
        out: list[_Event] = []
        for day in range(r.randint(14, 28)):
            for _ in range(r.randint(3, 12)):
                c = r.choice(local) if local and r.random() < 0.8 else r.randrange(len(self.card_id))
                t = _at_local_hour(start + day * DAY_MS, r.uniform(8.0, 20.0), tz)
                out.append((t, c, m, self._amount(m, self.typical[c] * r.uniform(0.5, 1.5), "pos"), "pos",
                            "compromised_merchant"))
                self.used[c].add(m)
        out.sort(key=_by_ts)
        return out

    def compromised_card(self, start: int) -> list[_Event]:
        """A card's details are stolen: for 7-21 days a fraudster spends on it beside its owner, making
        20-50 % of the card's transactions, at a few shops of their own that are new to the card (mostly
        online), at 2-8x the card's habit, on the fraudster's own daily rhythm. No burst, no shared shop:
        only the change in the card's spending shows it. Mean size: E[rate] 2.21/day x E[s/(1-s)] 0.567
        x 14 days = 17.5, less the first day's part before the theft: 16.6 measured."""
        r = self.r
        c = r.randrange(len(self.card_id))
        for _ in range(50):  # once found out, a stolen card is reissued: one episode per card
            if c not in self.stolen:
                break
            c = r.randrange(len(self.card_id))
        else:
            return []
        self.stolen.add(c)
        share = r.uniform(0.2, 0.5)
        rate = self.rate[c] * share / (1.0 - share)  # the fraudster's tx/day beside the owner's
        p_online = r.uniform(0.5, 1.0)
        # The fraudster's own shops (new to the card), reused through the episode.
        online = [m for m in self.online if m not in self.used[c]]
        in_person = [m for m in self.home_pool[c] if "pos" in self.m_chan[m] and m not in self.used[c]]
        if not online:
            return []
        online = r.sample(online, min(len(online), r.randint(2, 8)))
        in_person = r.sample(in_person, min(len(in_person), r.randint(1, 4)))
        haunt = r.choice(self.visitable)
        hour_cum = self.hour_table(COUNTRIES[haunt][1], r.choice((-1, 0, 1, 2)))
        day0 = start - (start - self.start_ms) % DAY_MS
        typ = self.typical[c]
        out: list[_Event] = []
        for day in range(r.randint(7, 21)):
            base = day0 + day * DAY_MS
            for _ in range(_poisson(r.random, r.gauss, rate * _WEEKDAY[(base // DAY_MS + 3) % 7])):
                t = base + bisect_right(hour_cum, r.random() * hour_cum[-1]) * HOUR_MS + r.randrange(HOUR_MS)
                if t < start:
                    continue
                by_web = not in_person or r.random() < p_online
                m = r.choice(online if by_web else in_person)
                channel = "ecom" if by_web else "pos"
                out.append((t, c, m, self._amount(m, typ * r.uniform(2.0, 8.0), channel), channel,
                            "compromised_card"))
        self.used[c].update(e[2] for e in out)
        out.sort(key=_by_ts)
        return out


def simulate(config: GeneratorConfig, days: float | None = None) -> Iterator[LabeledTx]:
    """Transactions in non-decreasing event-time order; endless when days is None.

    Day by day: draw every customer's legitimate transactions, start the day's fraud episodes
    (their events go to a heap, since an episode may run into later days), merge, sort, yield.
    Fraud episodes are started from a per-pattern budget of fraudulent transactions that grows
    with the day's legitimate volume, so the fraud share stays close to ``fraud_rate``.
    """
    r = random.Random(config.seed)
    world = _World(config, r)
    planners: dict[str, Callable[[int], list[_Event]]] = {
        "card_testing": world.card_testing,
        "stolen_card_abroad": world.stolen_card_abroad,
        "amount_spike": world.amount_spike,
        "compromised_terminal": world.compromised_terminal,
        "compromised_merchant": world.compromised_merchant,
        "compromised_card": world.compromised_card,
    }
    start = config.start_ms
    end = None if days is None else start + int(days * DAY_MS)
    drift_ts = None if config.drift_at_day is None else start + int(config.drift_at_day * DAY_MS)

    def active_at(ts: int) -> tuple[str, ...]:
        return config.drift_patterns if drift_ts is not None and ts >= drift_ts else config.patterns

    odds = config.fraud_rate / (1.0 - config.fraud_rate)
    # Each budget starts at minus a random part of half an episode: at 0 every pattern would
    # spawn at once on day 0 and short runs would overshoot the rate; this offset measured least
    # biased (episodes overshoot their budget, and the last day's budget is partly unspent).
    budget = {p: -r.uniform(0.0, 0.5 * _MEAN_EPISODE[p]) for p in FRAUD_PATTERNS}
    for extra in EXTRA_PATTERNS:  # drawn only when asked for: default streams keep their random sequence
        if extra in config.patterns or extra in config.drift_patterns:
            budget[extra] = -r.uniform(0.0, 0.5 * _MEAN_EPISODE[extra])
    pending: list[tuple[int, int, _Event]] = []
    seq = 0
    n = 0
    seed = config.seed
    card_id, m_id, m_cur, m_country, m_mcc = world.card_id, world.m_id, world.m_currency, world.m_country, world.m_mcc
    day = 0
    while end is None or start + day * DAY_MS < end:
        day_start = start + day * DAY_MS
        day_end = day_start + DAY_MS
        world.start_trips(day)
        events = world.legit_day(day, day_start)

        # The day is split at the drift instant, if it falls inside it.
        cuts = [day_start, day_end]
        if drift_ts is not None and day_start < drift_ts < day_end:
            cuts.insert(1, drift_ts)
        for lo, hi in zip(cuts, cuts[1:], strict=False):
            active = active_at(lo)
            if not active or odds <= 0:
                continue
            share = len(events) * odds * (hi - lo) / DAY_MS / len(active)
            for pattern in active:
                budget[pattern] += share
                misses = 0
                while budget[pattern] > 0 and misses < 10:
                    planned = planners[pattern](r.randint(lo, hi - 1))
                    # An episode is cut where its pattern stops being active (drift) and where
                    # the run ends; only what is yielded counts against the budget.
                    kept = [e for e in planned if pattern in active_at(e[0]) and (end is None or e[0] < end)]
                    if not kept:  # nothing fitted (no card/merchant to use, or all past the end)
                        misses += 1
                        continue
                    budget[pattern] -= len(kept)
                    for e in kept:
                        heapq.heappush(pending, (e[0], seq, e))
                        seq += 1
        while pending and pending[0][0] < day_end:
            events.append(heapq.heappop(pending)[2])
        events.sort(key=_by_ts)

        for ts, c, m, amount, channel, fraud_pattern in events:
            if end is not None and ts >= end:
                return
            tx = Transaction(f"tx-{seed}-{n:010d}", card_id[c], m_id[m], amount, m_cur[m], ts,
                             m_country[m], channel, m_mcc[m])
            n += 1
            yield LabeledTx(tx, fraud_pattern is not None, fraud_pattern)
        day += 1


_FRAUD_SOURCES: Final = ("chargeback",) * 14 + ("analyst",) * 4 + ("customer",) * 2  # 70/20/10 %


def label_record(item: LabeledTx, label_time_ms: int) -> dict[str, object]:
    """The JSON dict published on the `labels` topic for this transaction.

    The source is a function of the tx_id (CRC-32), not of any random state, so replaying a
    simulation or re-labelling one transaction always gives the same record.
    """
    if item.is_fraud:
        source = _FRAUD_SOURCES[zlib.crc32(item.tx.tx_id.encode()) % len(_FRAUD_SOURCES)]
    else:
        source = "analyst"
    return {
        "tx_id": item.tx.tx_id,
        "card_id": item.tx.card_id,
        "label": "fraud" if item.is_fraud else "legit",
        "source": source,
        "label_time": format_ts(label_time_ms),
    }


@dataclass(frozen=True, slots=True)
class LabelDelay:
    """How long after its transaction a label arrives.

    Fraud labels come from chargebacks and reports days to weeks later: uniform in
    [``fraud_min_days``, ``fraud_max_days``]. A legit label is the absence of a dispute once the
    review window has passed: ``legit_days`` after the transaction. The default is the fixed 7 days the
    training protocol assumes; the demo may compress time with fractions of a day.
    """

    fraud_min_days: float = 7.0
    fraud_max_days: float = 7.0
    legit_days: float = 7.0

    def __post_init__(self) -> None:
        """A label never arrives before its transaction, and a range is a range."""
        if not 0.0 <= self.fraud_min_days <= self.fraud_max_days or self.legit_days < 0.0:
            raise ValueError("label delays: need 0 <= fraud_min_days <= fraud_max_days and legit_days >= 0")
        if not all(math.isfinite(d) for d in (self.fraud_max_days, self.legit_days)):
            raise ValueError("label delays must be finite")


def label_delay_ms(item: LabeledTx, delay: LabelDelay = LabelDelay()) -> int:
    """How long after ``item``'s event time its label arrives: a function of the tx_id (a hash, like
    :func:`label_record`'s source), so a replay, the publisher and a benchmark agree on when each label
    became known without sharing any random state."""
    if not item.is_fraud:
        return int(delay.legit_days * DAY_MS)
    lo, hi = int(delay.fraud_min_days * DAY_MS), int(delay.fraud_max_days * DAY_MS)
    u = int.from_bytes(hashlib.blake2b(item.tx.tx_id.encode(), digest_size=8, person=b"label-delay").digest(), "big")
    return lo + u * (hi - lo + 1) // 2**64
