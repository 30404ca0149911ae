"""Does a Visual Genome phrase contain a verb? An offline default, and loading a user's detector by name.

The phrase stage keeps only verb-free region phrases. A detector is any ``Callable[[str], bool]`` taking a phrase
and returning True when it contains a verb; the dataset option ``verb_filter`` names one as
``module:function`` (e.g. a spaCy or NLTK tagger wrapped by the user), or ``builtin`` for :func:`has_verb`.

The built-in detector needs no download: word lists plus morphology.

- auxiliaries and copulas (``is``, ``are``, ``has``, ``it's``...) and irregular past forms (``worn``, ``held``);
- base and third-person forms of verbs that are rarely nouns in image descriptions (``sit``, ``holds``);
- ``-ing`` and ``-ed`` words, unless listed as nouns/adjectives (``building``, ``ceiling``, ``striped``) or the
  ``-ing`` word opens a lexicalised compound (``parking meter``, ``living room``, ``cutting board``).

Limits (measured on the labelled sample in the tests): bare or ``-s`` forms of verbs that are also common nouns
(``stands``, ``looks``, ``rides``, ``walks``, ``signs``) are not detected; unlisted nouns and adjectives ending in
``-ing``/``-ed`` are taken for verbs; participles before a noun (``parked car``, ``broken window``) count as verbs,
as a tagger's VBN would.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

from mmcore import MMCoreError

VerbFilter = Callable[[str], bool]


def _set(text: str) -> frozenset[str]:
    return frozenset(text.split())


AUXILIARIES = _set("""
is are was were be been being am isn't aren't wasn't weren't has have had hasn't haven't does do did doesn't
don't didn't could would should might must shall will won't can't cannot it's that's there's here's he's she's
they're we're who's what's
""")

# Irregular past forms; those that are common nouns (left, led, shot, bit, saw, wound) are left out.
IRREGULAR = _set("""
ate eaten wore worn held sat stood hung lay lain laid rode ridden drew drawn grew grown broke broken made built
shown showed threw thrown took taken gave given seen wrote written flew flown fell fallen went gone done lit
caught bought brought sold told thought kept slept swam swum ran spun stuck struck sung sang swung blew blown
bent bitten chose chosen dug drove driven fed fought found froze frozen hid hidden knelt leant leapt lost met
paid shook shaken shone sank sunk slid spent stole stolen swept tore torn woke woken wove woven
""")

# Verbs seldom used as nouns in region descriptions: their bare and -s forms count as verbs. Verbs that are
# also common nouns there (stand, look, walk, sign, smile, slice, leave, surf, lift, ...) are deliberately absent.
VERBS_ONLY = _set("""
sit eat wear hold carry ride hang lie lean grow swim jump throw catch hit pull push reach touch graze climb
perch float glide hover chew bite lick sniff stare gaze pose sip toss chop pour stir bake wash shave fold sort
enter arrive depart follow chase approach overlook surround contain appear seem become remain belong include
consist hide peek peer glance reflect shine glow attach connect read write talk speak shout yell sing laugh
cry listen hear see observe examine wield grab drag tow haul raise tilt kneel crouch squat relax nap doze play
use put get go come make take give try help let keep sleep
""")

# Nouns and adjectives that end like verb forms.
ING_WORDS = _set("""
building buildings ceiling ceilings clothing painting paintings drawing drawings writing lettering railing
railings awning awnings siding icing frosting topping toppings filling stuffing wedding morning evening rings
king wing wings string strings spring springs swing swings thing things something nothing anything everything
sibling siblings duckling ducklings pudding dumpling dumplings bedding lighting opening openings crossing
marking markings landing ending during sling herring darling fencing paneling molding carving carvings wiring
tubing piping seating coating dressing stocking stockings legging leggings earring earrings lining trimming
netting padding outing offspring
""")

ED_WORDS = _set("""
red shed sled hundred sacred naked wicked beloved rugged ragged jagged crooked bearded striped checkered
checked colored coloured multicolored multicoloured wooded dotted spotted speckled tiled toned haired sided
legged eyed skinned shaped sized headed necked sleeved handed layered
""")

# An -ing/-ed word followed by one of its heads is a compound noun, not a verb (``parking meter``).
COMPOUNDS: dict[str, frozenset[str]] = {word: _set(heads) for word, heads in {
    "parking": "lot meter meters space spaces garage sign area",
    "dining": "table room area chair chairs",
    "living": "room area",
    "cutting": "board",
    "swimming": "pool trunks suit",
    "shopping": "bag bags cart center mall",
    "sleeping": "bag",
    "washing": "machine",
    "baking": "sheet dish pan tray",
    "frying": "pan",
    "serving": "tray spoon dish bowl platter",
    "waiting": "area room",
    "ironing": "board",
    "landing": "gear",
    "measuring": "cup cups tape",
    "mixing": "bowl",
    "fishing": "boat pole rod net",
    "sailing": "boat boats",
    "walking": "stick path trail",
    "running": "shoes shoe track",
    "riding": "gear helmet boots",
    "stuffed": "animal animals bear toy",
}.items()}

_WORD = re.compile(r"[a-z']+(?:-[a-z']+)*")


def _words(phrase: str) -> list[str]:
    return _WORD.findall(phrase.lower())


def _is_ing_verb(word: str, next_word: str) -> bool:
    if not word.endswith("ing") or len(word) <= 4 or word in ING_WORDS:
        return False
    return next_word not in COMPOUNDS.get(word, ())


def _is_ed_verb(word: str, next_word: str) -> bool:
    if not word.endswith("ed") or len(word) <= 3 or word in ED_WORDS:
        return False
    # -eed words are nouns (seed, speed, weed) bar a few; -bed after a vowel or t/n/r is a bed (seabed, flatbed).
    if word.endswith("eed") and word not in ("freed", "agreed"):
        return False
    if word.endswith("bed") and word[-4:-3] not in ("m", "b", "i", "o", "u"):
        return False
    return next_word not in COMPOUNDS.get(word, ())


def _third_person_stem(word: str) -> str | None:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "sses", "xes", "zes", "oes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return None


def is_verb_word(word: str, next_word: str = "") -> bool:
    """Whether one lower-case word (the next word gives context for compounds) is a verb form."""
    last = word.split("-")[-1]  # "heart-shaped", "snow-covered": the last part decides
    if last in AUXILIARIES or last in IRREGULAR or last in VERBS_ONLY:
        return True
    if _is_ing_verb(last, next_word) or _is_ed_verb(last, next_word):
        return True
    stem = _third_person_stem(last)
    return stem is not None and stem in VERBS_ONLY


def has_verb(phrase: str) -> bool:
    """The built-in detector: True when some word of ``phrase`` is a verb form (see the module docstring)."""
    words = _words(phrase)
    return any(is_verb_word(w, words[i + 1] if i + 1 < len(words) else "") for i, w in enumerate(words))


def load_verb_filter(spec: str) -> VerbFilter:
    """``builtin`` → :func:`has_verb`; ``package.module:function`` → that callable (phrase → contains a verb)."""
    if spec == "builtin":
        return has_verb
    module_name, sep, attr = str(spec).partition(":")
    if not sep or not module_name or not attr:
        raise MMCoreError(f"verb_filter {spec!r}: expected 'builtin' or 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MMCoreError(f"verb_filter {spec!r}: cannot import module {module_name!r} ({exc})") from None
    func = getattr(module, attr, None)
    if not callable(func):
        raise MMCoreError(f"verb_filter {spec!r}: module {module_name!r} has no callable {attr!r}")
    return func
