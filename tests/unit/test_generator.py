"""The synthetic traffic generator: deterministic, ordered, parseable, and fraud that looks like fraud."""

from __future__ import annotations

import hashlib
import re
import statistics
from collections import Counter, defaultdict
from itertools import islice

import pytest

from stream_app.devtools.generator import (
    COUNTRIES,
    EXTRA_PATTERNS,
    FRAUD_PATTERNS,
    GeneratorConfig,
    LabelDelay,
    LabeledTx,
    label_delay_ms,
    label_record,
    simulate,
)
from stream_app.domain.events import EUR_RATES, format_ts, parse_transaction, parse_ts, transaction_from_dict

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
BIG = GeneratorConfig(seed=7, n_customers=2000)
BIG_DAYS = 20


@pytest.fixture(scope="module")
def big() -> list[LabeledTx]:
    """20 simulated days of 2000 customers: the run most properties are checked on."""
    return list(simulate(BIG, days=BIG_DAYS))


@pytest.fixture(scope="module")
def homes(big: list[LabeledTx]) -> dict[str, str]:
    """A card's home country, as an analyst would infer it: where most of its legit spending is."""
    per_card: dict[str, Counter[str]] = defaultdict(Counter)
    for item in big:
        if not item.is_fraud:
            per_card[item.tx.card_id][item.tx.country] += 1
    return {card: c.most_common(1)[0][0] for card, c in per_card.items()}


@pytest.fixture(scope="module")
def legit_median(big: list[LabeledTx]) -> dict[str, float]:
    per_card: dict[str, list[float]] = defaultdict(list)
    for item in big:
        if not item.is_fraud:
            per_card[item.tx.card_id].append(item.tx.amount_eur)
    return {card: statistics.median(v) for card, v in per_card.items()}


def _local_hour(ts_ms: int, country: str) -> int:
    return int(ts_ms / HOUR_MS + COUNTRIES[country][1]) % 24


# ------------------------------------------------------------------ determinism and ordering


def test_same_seed_gives_identical_stream() -> None:
    cfg = GeneratorConfig(seed=3, n_customers=300, n_merchants=100)
    first = list(simulate(cfg, days=3))
    assert len(first) > 500
    assert first == list(simulate(cfg, days=3))


def test_different_seed_gives_different_stream() -> None:
    def content(seed: int) -> list[tuple[str, str, float, int]]:
        cfg = GeneratorConfig(seed=seed, n_customers=300, n_merchants=100)
        return [(i.tx.card_id, i.tx.merchant_id, i.tx.amount, i.tx.ts_ms) for i in simulate(cfg, days=2)]

    assert content(1) != content(2)
    assert {c for c, *_ in content(1)}.isdisjoint({c for c, *_ in content(2)})  # card tokens are seeded


@pytest.mark.parametrize("fraud_rate", [0.01, 0.15])
def test_timestamps_non_decreasing_and_inside_the_run(fraud_rate: float) -> None:
    # A high fraud rate makes many episodes (compromised terminals last days) cross day boundaries.
    cfg = GeneratorConfig(seed=11, n_customers=500, n_merchants=200, fraud_rate=fraud_rate)
    items = list(simulate(cfg, days=6.5))
    ts = [i.tx.ts_ms for i in items]
    assert all(a <= b for a, b in zip(ts, ts[1:], strict=False))
    assert ts[0] >= cfg.start_ms
    assert ts[-1] < cfg.start_ms + int(6.5 * DAY_MS)
    assert ts[-1] >= cfg.start_ms + 6 * DAY_MS  # the half day at the end is there too


def test_tx_ids_unique_and_seeded(big: list[LabeledTx]) -> None:
    ids = [i.tx.tx_id for i in big]
    assert len(set(ids)) == len(ids)
    assert ids[0] == "tx-7-0000000000"
    assert all(re.fullmatch(r"tx-7-\d{10}", i) for i in ids)


def test_endless_when_days_is_none() -> None:
    cfg = GeneratorConfig(seed=5, n_customers=50, n_merchants=40)
    items = list(islice(simulate(cfg), 2000))  # ~100 tx/day: this needs weeks of simulated time
    assert len(items) == 2000
    assert items[-1].tx.ts_ms - items[0].tx.ts_ms > 7 * DAY_MS


# ------------------------------------------------------------------ shape of the events


def test_every_transaction_parses_back_unchanged(big: list[LabeledTx]) -> None:
    for item in big:
        assert transaction_from_dict(item.tx.to_json_dict()) == item.tx
    for item in big[:2000]:
        assert parse_transaction(item.tx.to_bytes()) == item.tx


def test_identifiers_look_like_tokens_not_card_numbers(big: list[LabeledTx]) -> None:
    cards = {i.tx.card_id for i in big}
    merchants = {i.tx.merchant_id for i in big}
    assert all(re.fullmatch(r"card_[0-9a-f]{12}", c) for c in cards)
    assert not any(re.search(r"\d{13,}", c) for c in cards)
    assert all(re.fullmatch(r"m_\d{5}", m) for m in merchants)
    assert len(cards) > 1900  # nearly every one of the 2000 customers pays in 20 days


def test_currency_follows_country_and_channel_follows_mcc(big: list[LabeledTx]) -> None:
    mcc_channels: dict[str, set[str]] = defaultdict(set)
    for item in big:
        tx = item.tx
        assert tx.currency in EUR_RATES
        assert tx.currency == COUNTRIES[tx.country][0]
        assert tx.amount > 0
        mcc_channels[tx.mcc].add(tx.channel)
    assert mcc_channels["6011"] == {"atm"}
    assert mcc_channels["4816"] <= {"ecom", "moto"}
    assert {m for m, ch in mcc_channels.items() if "atm" in ch} == {"6011"}
    assert mcc_channels["5541"] == {"pos"}
    assert {"5411", "5812", "5541", "5999", "4816", "5732", "6011", "4111"} <= set(mcc_channels)


def test_legit_traffic_looks_like_payments(big: list[LabeledTx], homes: dict[str, str]) -> None:
    legit = [i.tx for i in big if not i.is_fraud]
    per_day = len(legit) / BIG.n_customers / BIG_DAYS
    assert 1.0 < per_day < 4.0  # customers make 0.5-6 tx/day
    night = sum(_local_hour(tx.ts_ms, tx.country) < 5 for tx in legit) / len(legit)
    assert night < 0.06  # little activity at night, local time
    evening = sum(17 <= _local_hour(tx.ts_ms, tx.country) < 21 for tx in legit) / len(legit)
    assert evening > 4 / 24 * 1.3  # and more than average in the evening
    at_home = sum(tx.country == homes[tx.card_id] for tx in legit) / len(legit)
    assert 0.9 < at_home < 0.995  # mostly at home, yet some legit foreign spending exists
    # ...both online abroad and in person on trips, so "foreign" alone does not mean fraud.
    abroad = [tx for tx in legit if tx.country != homes[tx.card_id]]
    assert sum(tx.channel == "ecom" for tx in abroad) > 0.25 * len(abroad)
    travellers = Counter(tx.card_id for tx in abroad if tx.channel in {"pos", "atm"})
    assert sum(n >= 3 for n in travellers.values()) > 50
    # Most of a card's spending is at a few usual merchants.
    per_card: dict[str, Counter[str]] = defaultdict(Counter)
    for tx in legit:
        per_card[tx.card_id][tx.merchant_id] += 1
    top = sum(sum(n for _, n in c.most_common(8)) for c in per_card.values())
    assert top / len(legit) > 0.75
    amounts = sorted(tx.amount_eur for tx in legit)
    assert 10 < amounts[len(amounts) // 2] < 80


# ------------------------------------------------------------------ fraud


def test_fraud_share_near_target(big: list[LabeledTx]) -> None:
    share = sum(i.is_fraud for i in big) / len(big)
    assert BIG.fraud_rate * 0.6 <= share <= BIG.fraud_rate * 1.4


@pytest.mark.parametrize(("fraud_rate", "n_customers", "days"), [(0.004, 2000, 12), (0.05, 1000, 8)])
def test_fraud_share_follows_the_configured_rate(fraud_rate: float, n_customers: int, days: int) -> None:
    # Enough fraud for the episode granularity (a compromised terminal is ~34 tx) not to dominate.
    cfg = GeneratorConfig(seed=9, n_customers=n_customers, fraud_rate=fraud_rate)
    items = list(simulate(cfg, days=days))
    share = sum(i.is_fraud for i in items) / len(items)
    assert fraud_rate * 0.6 <= share <= fraud_rate * 1.4


def test_no_fraud_when_rate_is_zero() -> None:
    items = list(simulate(GeneratorConfig(n_customers=300, fraud_rate=0.0), days=3))
    assert items and not any(i.is_fraud or i.pattern for i in items)


def test_labels_are_consistent_and_every_pattern_appears(big: list[LabeledTx]) -> None:
    assert all(i.is_fraud == (i.pattern is not None) for i in big)
    counts = Counter(i.pattern for i in big if i.is_fraud)
    assert set(counts) == set(FRAUD_PATTERNS)
    total = sum(counts.values())
    assert all(n > total / len(FRAUD_PATTERNS) / 3 for n in counts.values())  # none starved


def test_only_configured_patterns_are_injected() -> None:
    cfg = GeneratorConfig(seed=2, n_customers=500, patterns=("amount_spike", "card_testing"), fraud_rate=0.03)
    patterns = {i.pattern for i in simulate(cfg, days=4) if i.is_fraud}
    assert patterns == {"amount_spike", "card_testing"}


def test_card_testing_is_a_burst_of_tiny_online_charges(big: list[LabeledTx]) -> None:
    fraud = [i.tx for i in big if i.pattern == "card_testing"]
    assert all(tx.channel == "ecom" for tx in fraud)
    tiny = [tx for tx in fraud if tx.amount_eur <= 3.0 + 1e-6]
    assert len(tiny) > 0.8 * len(fraud)
    assert all(tx.amount_eur >= 0.5 - 0.01 and tx.mcc == "4816" for tx in tiny)
    by_card: dict[str, list[int]] = defaultdict(list)
    for tx in tiny:
        by_card[tx.card_id].append(tx.ts_ms)
    for ts in by_card.values():
        assert len(ts) >= 5
        gaps = [b - a for a, b in zip(ts, ts[1:], strict=False)]
        assert statistics.median(gaps) <= 90_000  # seconds apart


def test_stolen_card_abroad_is_a_foreign_burst_at_new_merchants(
    big: list[LabeledTx], homes: dict[str, str], legit_median: dict[str, float]
) -> None:
    seen: dict[str, set[str]] = defaultdict(set)
    fraud: list[tuple[LabeledTx, bool]] = []
    for item in big:
        tx = item.tx
        if item.pattern == "stolen_card_abroad":
            fraud.append((item, tx.merchant_id in seen[tx.card_id]))
        seen[tx.card_id].add(tx.merchant_id)
    assert fraud
    for item, merchant_seen_before in fraud:
        tx = item.tx
        assert tx.country != homes[tx.card_id]
        assert tx.channel in {"pos", "atm"}
        if not merchant_seen_before:
            continue
        # only repeat visits within the same burst are allowed
        same_burst = [o.tx for o, _ in fraud if o.tx.card_id == tx.card_id and o.tx.merchant_id == tx.merchant_id]
        assert min(o.ts_ms for o in same_burst) < tx.ts_ms
    ratios = [i.tx.amount_eur / legit_median[i.tx.card_id] for i, _ in fraud if i.tx.card_id in legit_median]
    assert statistics.median(ratios) > 2.5


def test_amount_spike_is_a_large_online_electronics_or_jewelry_order(
    big: list[LabeledTx], legit_median: dict[str, float]
) -> None:
    fraud = [i.tx for i in big if i.pattern == "amount_spike"]
    assert fraud
    assert all(tx.channel == "ecom" and tx.mcc in {"5732", "5944"} for tx in fraud)
    ratios = [tx.amount_eur / legit_median[tx.card_id] for tx in fraud if tx.card_id in legit_median]
    assert statistics.median(ratios) > 5
    per_card = Counter(tx.card_id for tx in fraud)
    assert max(per_card.values()) <= 8  # 1-4 orders per episode (a card may be taken over twice)


def test_compromised_terminal_is_night_fraud_by_new_cards(
    big: list[LabeledTx], legit_median: dict[str, float]
) -> None:
    seen: dict[str, set[str]] = defaultdict(set)
    fraud: list[LabeledTx] = []
    for item in big:
        tx = item.tx
        if item.pattern == "compromised_terminal":
            assert tx.merchant_id not in seen[tx.card_id]  # the card never used that merchant
            fraud.append(item)
        seen[tx.card_id].add(tx.merchant_id)
    assert fraud
    assert all(i.tx.channel == "pos" and _local_hour(i.tx.ts_ms, i.tx.country) < 5 for i in fraud)
    by_merchant: dict[str, list[int]] = defaultdict(list)
    for i in fraud:
        by_merchant[i.tx.merchant_id].append(i.tx.ts_ms)
    assert max(max(v) - min(v) for v in by_merchant.values()) > DAY_MS  # lasts several days
    ratios = [i.tx.amount_eur / legit_median[i.tx.card_id] for i in fraud if i.tx.card_id in legit_median]
    assert statistics.median(ratios) > 2.5


def test_compromised_merchant_is_weeks_of_ordinary_looking_fraud_at_one_shop() -> None:
    config = GeneratorConfig(seed=3, n_customers=800, fraud_rate=0.03, patterns=("compromised_merchant",))
    items = list(simulate(config, days=30))
    fraud = [i for i in items if i.is_fraud]
    assert fraud and {i.pattern for i in fraud} == {"compromised_merchant"}
    by_merchant: dict[str, list[LabeledTx]] = defaultdict(list)
    for i in fraud:
        by_merchant[i.tx.merchant_id].append(i)
    longest = max(by_merchant.values(), key=len)
    assert max(i.tx.ts_ms for i in longest) - min(i.tx.ts_ms for i in longest) > 10 * DAY_MS
    assert len({i.tx.card_id for i in longest}) > 30  # many cards, each defrauded at the same shop
    legit = statistics.median(i.tx.amount_eur for i in items if not i.is_fraud)
    assert 0.3 < statistics.median(i.tx.amount_eur for i in fraud) / legit < 3  # amounts like anyone's
    assert all(i.tx.channel == "pos" and 8 <= _local_hour(i.tx.ts_ms, i.tx.country) < 21 for i in fraud)


def test_extra_patterns_leave_default_streams_as_they_were() -> None:
    """Default configs draw no randomness for the extra patterns: the shipped model's data is unchanged
    (the digest is the default stream's before the extra patterns existed, at commit d251602)."""
    digest = hashlib.sha256()
    for i in simulate(GeneratorConfig(seed=5, n_customers=200), days=3):
        digest.update(i.tx.to_bytes())
        digest.update(str(i.pattern).encode())
    assert digest.hexdigest() == "79fd70f5fdd93367434760b608f0ffd0edde7b9bf63edd253f7419ec1b755df3"


def test_compromised_card_is_a_fraudster_spending_beside_the_owner_for_weeks() -> None:
    config = GeneratorConfig(seed=3, n_customers=800, fraud_rate=0.03, patterns=("compromised_card",))
    items = list(simulate(config, days=40))
    fraud = [i for i in items if i.is_fraud]
    assert fraud and {i.pattern for i in fraud} == {"compromised_card"}
    by_card: dict[str, list[LabeledTx]] = defaultdict(list)
    for i in items:
        by_card[i.tx.card_id].append(i)
    episodes = {card: [i for i in v if i.is_fraud] for card, v in by_card.items() if any(i.is_fraud for i in v)}
    spans = [v[-1].tx.ts_ms - v[0].tx.ts_ms for v in episodes.values() if len(v) > 1]
    assert max(spans) > 7 * DAY_MS and max(spans) < 21 * DAY_MS  # one to three weeks
    ratios, interleaved, owner_merchants = [], 0, 0
    for card, frauds in episodes.items():
        first, last = frauds[0].tx.ts_ms, frauds[-1].tx.ts_ms
        legit = [i for i in by_card[card] if not i.is_fraud]
        habit = statistics.median(i.tx.amount_eur for i in legit)
        ratios += [i.tx.amount_eur / habit for i in frauds]
        interleaved += any(first < i.tx.ts_ms < last for i in legit)  # the owner keeps paying meanwhile
        before = {i.tx.merchant_id for i in legit if i.tx.ts_ms < first}
        owner_merchants += sum(i.tx.merchant_id in before for i in frauds)
    assert statistics.median(ratios) > 2.5  # several times the card's habit
    assert interleaved > 0.7 * len(episodes)
    assert owner_merchants < 0.02 * len(fraud)  # the fraudster's shops, not the owner's
    assert 0.1 < sum(i.tx.channel == "pos" for i in fraud) / len(fraud) < 0.5  # mostly online, some in person
    assert 0.02 < len(fraud) / len(items) < 0.04  # the budget holds the rate with the planner's mean size


def test_default_streams_have_no_extra_patterns(big: list[LabeledTx]) -> None:
    assert {i.pattern for i in big if i.is_fraud} <= set(FRAUD_PATTERNS)
    assert set(EXTRA_PATTERNS) == {"compromised_merchant", "compromised_card"}


def test_compromised_card_leaves_compromised_merchant_streams_as_they_were() -> None:
    """Asking for compromised_merchant alone draws nothing for compromised_card (digest from before it existed)."""
    digest = hashlib.sha256()
    config = GeneratorConfig(seed=5, n_customers=200, fraud_rate=0.03,
                             patterns=(*FRAUD_PATTERNS, "compromised_merchant"))
    for i in simulate(config, days=3):
        digest.update(i.tx.to_bytes())
        digest.update(str(i.pattern).encode())
    assert digest.hexdigest() == "63b5598b94b06e76dc3d4cb68bdd63e2d1c6db449fd4bbba81fb54fa8fb5f91d"


@pytest.mark.parametrize("drift_at_day", [4.0, 3.5])
def test_drift_switches_patterns(drift_at_day: float) -> None:
    before_set = ("card_testing", "stolen_card_abroad")
    after_set = ("compromised_terminal", "amount_spike")
    cfg = GeneratorConfig(seed=4, n_customers=1000, fraud_rate=0.02, patterns=before_set,
                          drift_at_day=drift_at_day, drift_patterns=after_set)
    drift_ts = cfg.start_ms + int(drift_at_day * DAY_MS)
    items = list(simulate(cfg, days=8))
    before = {i.pattern for i in items if i.is_fraud and i.tx.ts_ms < drift_ts}
    after = {i.pattern for i in items if i.is_fraud and i.tx.ts_ms >= drift_ts}
    assert before == set(before_set)
    assert after == set(after_set)
    share_after = sum(i.is_fraud for i in items if i.tx.ts_ms >= drift_ts) / sum(
        1 for i in items if i.tx.ts_ms >= drift_ts)
    assert 0.01 < share_after < 0.03  # the budget keeps the rate across the switch


def test_drift_to_no_patterns_stops_fraud() -> None:
    cfg = GeneratorConfig(seed=4, n_customers=500, fraud_rate=0.05, drift_at_day=2.0, drift_patterns=())
    items = list(simulate(cfg, days=4))
    drift_ts = cfg.start_ms + 2 * DAY_MS
    assert any(i.is_fraud for i in items if i.tx.ts_ms < drift_ts)
    assert not any(i.is_fraud for i in items if i.tx.ts_ms >= drift_ts)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="unknown fraud patterns"):
        GeneratorConfig(patterns=("card_testing", "phishing"))
    with pytest.raises(ValueError, match="unknown fraud patterns"):
        GeneratorConfig(drift_at_day=1.0, drift_patterns=("nope",))
    with pytest.raises(ValueError, match="fraud_rate"):
        GeneratorConfig(fraud_rate=1.0)


# ------------------------------------------------------------------ labels


def test_label_record_shape(big: list[LabeledTx]) -> None:
    label_time = BIG.start_ms + 40 * DAY_MS + 123
    legit = next(i for i in big if not i.is_fraud)
    rec = label_record(legit, label_time)
    assert rec == {
        "tx_id": legit.tx.tx_id,
        "card_id": legit.tx.card_id,
        "label": "legit",
        "source": "analyst",
        "label_time": format_ts(label_time),
    }
    assert parse_ts(rec["label_time"]) == label_time
    fraud = next(i for i in big if i.is_fraud)
    rec = label_record(fraud, label_time)
    assert set(rec) == {"tx_id", "card_id", "label", "source", "label_time"}
    assert rec["label"] == "fraud" and rec["tx_id"] == fraud.tx.tx_id


def test_label_sources_mostly_chargeback_and_deterministic(big: list[LabeledTx]) -> None:
    fraud = [i for i in big if i.is_fraud]
    sources = Counter(label_record(i, 0)["source"] for i in fraud)
    assert set(sources) == {"chargeback", "analyst", "customer"}
    assert sources["chargeback"] > 0.5 * len(fraud)
    assert all(label_record(i, 0)["source"] == "analyst" for i in big[:5000] if not i.is_fraud)
    # The source depends on the tx_id only: same answer on every call and for a copy of the event.
    first = [label_record(i, 5)["source"] for i in fraud]
    assert first == [label_record(i, 5)["source"] for i in fraud]
    copy = LabeledTx(fraud[0].tx, True, "card_testing")
    assert label_record(copy, 99)["source"] == label_record(fraud[0], 1)["source"]


def test_label_delay_defaults_to_seven_days_for_every_label(big: list[LabeledTx]) -> None:
    assert {label_delay_ms(i) for i in big[:3000]} | {label_delay_ms(i) for i in big if i.is_fraud} == {7 * DAY_MS}


def test_chargeback_like_delays_are_deterministic_within_bounds_and_never_early(big: list[LabeledTx]) -> None:
    delay = LabelDelay(fraud_min_days=2, fraud_max_days=30, legit_days=10)
    fraud = [i for i in big if i.is_fraud]
    delays = [label_delay_ms(i, delay) for i in fraud]
    assert all(2 * DAY_MS <= d <= 30 * DAY_MS for d in delays)
    assert delays == [label_delay_ms(i, delay) for i in fraud]  # same answer on every call...
    copy = LabeledTx(fraud[0].tx, True, "amount_spike")
    assert label_delay_ms(copy, delay) == delays[0]  # ...a function of the tx_id, not of random state
    # Spread over the range, not bunched: each third of it gets a fair share.
    thirds = Counter(min(2, int((d - 2 * DAY_MS) / (28 * DAY_MS / 3))) for d in delays)
    assert all(n > len(delays) / 3 * 0.8 for n in thirds.values()) and len(thirds) == 3
    assert {label_delay_ms(i, delay) for i in big[:3000] if not i.is_fraud} == {10 * DAY_MS}
    # A label is never known before its transaction, even with no delay at all.
    instant = LabelDelay(0, 0.5, 0)
    assert all(0 <= label_delay_ms(i, instant) <= DAY_MS // 2 for i in big[:3000] + fraud)


@pytest.mark.parametrize(("lo", "hi", "legit"), [(5, 2, 7), (-1, 2, 7), (1, 2, -0.5), (1, float("inf"), 7)])
def test_label_delay_is_validated(lo: float, hi: float, legit: float) -> None:
    with pytest.raises(ValueError, match="delay"):
        LabelDelay(lo, hi, legit)
