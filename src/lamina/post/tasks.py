"""Templated tasks with checkable answers: chat data for SFT (`lamina synth`) and verifiable
problems for GRPO. Each task turns a random generator into a `Problem`: a question in one of
several phrasings, its answer (compared by `lamina.post.rewards.check`) and a short worked
solution that ends with "The answer is …". Truth comes from Python, not from the template:
`datetime` for dates, exact fractions for conversions and countdown values.

Problem i of a task at a seed is the same on every machine (its generator is seeded with the
string "task:level:seed:i"). The held-out split is chosen by a hash of the problem's `key`, the
problem without its phrasing, so a question asked one way in training is never asked another way
in the held-out set."""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Decimal, localcontext
from fractions import Fraction
from typing import Callable

from ..errors import LaminaError
from .rewards import check as check_answer

HELDOUT_PERCENT = 10      # share of problems (by key hash) kept for evaluation
SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class Problem:
    task: str          # "arithmetic"
    template: str      # which phrasing asked it: "arithmetic/mul/2"
    key: str           # the problem without its phrasing; the split hashes this
    question: str
    answer: str        # what `check` compares a reply's final answer with
    solution: str      # a short worked answer ending with "The answer is {answer}."
    seed: int = 0
    index: int = 0     # problem `index` of the task at `seed`

    @property
    def split(self) -> str:
        return split_of(self.key)

    def check(self, reply: str) -> bool:
        return check_answer(reply, self.answer)


def split_of(key: str) -> str:
    """"heldout" for HELDOUT_PERCENT of keys (by SHA-256, so stable everywhere), else "train"."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return "heldout" if h % 100 < HELDOUT_PERCENT else "train"


def _ask(rng: random.Random, task: str, kind: str, templates: list[str], **fields) -> tuple[str, str]:
    """(template name, question) from one of `templates`, chosen by `rng`."""
    i = rng.randrange(len(templates))
    return f"{task}/{kind}/{i}", templates[i].format(**fields)


def _problem(task: str, template_question: tuple[str, str], key: str, answer, steps: str) -> Problem:
    template, question = template_question
    return Problem(task, template, key, question, str(answer), f"{steps} The answer is {answer}.")


# -- arithmetic --------------------------------------------------------------------------------

ADD_DIGITS = {1: 2, 2: 3, 3: 5}                       # level -> digits of both terms of + and -
MUL_DIGITS = {1: (2, 1), 2: (2, 2), 3: (3, 3)}        # level -> digits of the factors of ×
_ARITHMETIC = {
    "add": ("+", ["What is the sum of {a} and {b}?", "Add {a} and {b}."]),
    "sub": ("-", ["What is {a} minus {b}?", "Subtract {b} from {a}."]),
    "mul": ("×", ["What is the product of {a} and {b}?", "Multiply {a} by {b}."]),
}
_ANY_OPERATION = ["What is {a} {s} {b}?", "Calculate {a} {s} {b}.", "Compute: {a} {s} {b}", "{a} {s} {b} = ?"]


def _number(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1), 10 ** digits - 1)


def arithmetic(rng: random.Random, level: int) -> Problem:
    kind = rng.choice(list(_ARITHMETIC))
    symbol, own = _ARITHMETIC[kind]
    da, db = MUL_DIGITS[level] if kind == "mul" else (ADD_DIGITS[level],) * 2
    a, b = _number(rng, da), _number(rng, db)
    if kind == "sub" and level == 1 and b > a:       # no negative results at the easiest level
        a, b = b, a
    value = {"add": a + b, "sub": a - b, "mul": a * b}[kind]
    steps = f"{a} {symbol} {b} = {value}."
    parts = [int(d) * 10 ** k for k, d in enumerate(reversed(str(b))) if d != "0"][::-1]
    if kind == "mul" and len(parts) > 1:              # long multiplication by place value
        steps = (f"{a} × {b} = " + " + ".join(f"{a} × {p}" for p in parts) + " = "
                 + " + ".join(str(a * p) for p in parts) + f" = {value}.")
    asked = _ask(rng, "arithmetic", kind, _ANY_OPERATION + own, a=a, b=b, s=symbol)
    return _problem("arithmetic", asked, f"arithmetic:{a}{symbol}{b}", value, steps)


# -- unit conversion ----------------------------------------------------------------------------

# 1 big unit = this many small units, exactly, by definition (international yard and pound
# agreement, 1959; US liquid gallon = 231 cubic inches)
UNITS = [("mile", "miles", "kilometre", "kilometres", "1.609344"),
         ("pound", "pounds", "kilogram", "kilograms", "0.45359237"),
         ("inch", "inches", "centimetre", "centimetres", "2.54"),
         ("foot", "feet", "metre", "metres", "0.3048"),
         ("US gallon", "US gallons", "litre", "litres", "3.785411784"),
         ("ounce", "ounces", "gram", "grams", "28.349523125")]
ROUNDING = {0: "to the nearest whole number", 1: "to 1 decimal place", 2: "to 2 decimal places"}
_CONVERT = ["Convert {v} {a} to {b}, rounded {r}.", "How many {b} are in {v} {a}? Round {r}.",
            "{v} {a} is how many {b}? Give the answer rounded {r}."]
_TEMPERATURE = ["Convert {v} degrees {a} to degrees {b}, rounded {r}.",
                "What is {v} °{a0} in °{b0}? Round {r}."]


def decimal_round(x: Fraction, places: int) -> str:
    """`x` rounded half away from zero (as taught in school) to `places` decimals."""
    with localcontext() as ctx:
        ctx.prec = 60
        q = (Decimal(x.numerator) / Decimal(x.denominator)).quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP)
    return str(abs(q) if q == 0 else q)


def units(rng: random.Random, level: int) -> Problem:
    places = rng.choice(list(ROUNDING))
    v = Fraction(rng.randint(1, 200)) if rng.random() < 0.5 else Fraction(rng.randint(10, 2000), 10)
    shown = decimal_round(v, 0 if v.denominator == 1 else 1)
    if rng.random() < 1 / (len(UNITS) + 1):
        a, b = rng.choice([("Celsius", "Fahrenheit"), ("Fahrenheit", "Celsius")])
        if a == "Celsius":
            exact, rule = v * Fraction(9, 5) + 32, f"°F = °C × 9/5 + 32 = {shown} × 9/5 + 32"
        else:
            exact, rule = (v - 32) * Fraction(5, 9), f"°C = (°F - 32) × 5/9 = ({shown} - 32) × 5/9"
        asked = _ask(rng, "units", "temperature", _TEMPERATURE, v=shown, a=a, b=b, a0=a[0], b0=b[0], r=ROUNDING[places])
        fact = rule
    else:
        big, bigs, small, smalls, ratio = rng.choice(UNITS)
        if rng.random() < 0.5:
            (a, a1, b), exact = (bigs, big, smalls), v * Fraction(ratio)
            fact = f"1 {a1} = {ratio} {smalls}, so {shown} {a} = {shown} × {ratio}"
        else:
            (a, a1, b), exact = (smalls, small, bigs), v / Fraction(ratio)
            fact = f"1 {big} = {ratio} {smalls}, so {shown} {a} = {shown} ÷ {ratio}"
        a = a1 if shown == "1" else a
        asked = _ask(rng, "units", "length-mass-volume", _CONVERT, v=shown, a=a, b=b, r=ROUNDING[places])
    answer = decimal_round(exact, places)
    closer = decimal_round(exact, places + 3)
    equals = "=" if Fraction(closer) == exact else "≈"
    steps = f"{fact} {equals} {closer}. Rounded {ROUNDING[places]}, that is {answer}."
    return _problem("units", asked, f"units:{shown} {a}>{b}:{places}", answer, steps)


# -- strings ------------------------------------------------------------------------------------

WORDS = ("apple banana cherry garden window river planet silver yellow orange purple rabbit turtle dragon "
         "castle forest candle mirror pocket ladder bottle basket button carpet winter summer autumn spring "
         "market travel simple number letter puzzle rocket guitar violin piano camera pencil marble butter "
         "coffee honey lemon mango peach melon tomato potato onion carrot pepper ginger cookie pickle muffin "
         "bridge tunnel island valley meadow desert jungle canyon harbor anchor compass lantern journey "
         "balloon kitten giraffe library blanket thunder whisper").split()
_STRINGS = {
    "reverse": ['Reverse the word "{w}".', 'Write "{w}" backwards.', "Spell {w} backwards."],
    "count": ['How many times does the letter "{c}" appear in "{w}"?', 'Count the letter {c} in the word {w}.'],
    "upper": ['Write "{w}" in capital letters.', "Convert {w} to uppercase.", 'What is "{w}" in all caps?'],
}


def strings(rng: random.Random, level: int) -> Problem:
    kind, w = rng.choice(list(_STRINGS)), rng.choice(WORDS)
    c = rng.choice(w) if rng.random() < 0.8 else rng.choice("abcdefghijklmnopqrstuvwxyz")
    spelled = ", ".join(w)
    if kind == "reverse":
        answer, steps = w[::-1], f"Spelled out, {w} is {spelled}. Backwards that is {', '.join(w[::-1])}."
    elif kind == "upper":
        answer, steps = w.upper(), f"In capital letters, {w} is {w.upper()}."
    else:
        answer = w.count(c)
        where = ", ".join(str(i + 1) for i, x in enumerate(w) if x == c)
        plural = "s" * (answer > 1)
        found = f'"{c}" is at position{plural} {where}: {answer} time{plural}.' if answer else f'"{c}" does not appear.'
        steps = f"Spelled out, {w} is {spelled}. {found}"
    asked = _ask(rng, "strings", kind, _STRINGS[kind], w=w, c=c)
    return _problem("strings", asked, f"strings:{kind}:{w}" + (f":{c}" if kind == "count" else ""), answer, steps)


# -- lists --------------------------------------------------------------------------------------

LIST_LENGTH = {1: (4, 5), 2: (5, 7), 3: (7, 10)}
_LISTS = {
    "sort_ascending": ["Sort these numbers from smallest to largest: {xs}", "Put {xs} in ascending order."],
    "sort_descending": ["Sort these numbers from largest to smallest: {xs}", "Arrange {xs} in descending order."],
    "max": ["What is the largest number in {xs}?", "Which is the biggest of these numbers: {xs}?"],
    "min": ["What is the smallest number in {xs}?", "Which is the smallest of these numbers: {xs}?"],
    "sum": ["What is the sum of {xs}?", "Add up these numbers: {xs}."],
}


def lists(rng: random.Random, level: int) -> Problem:
    kind = rng.choice(list(_LISTS))
    low = -99 if level == 3 else 1
    xs = [rng.randint(low, 99) for _ in range(rng.randint(*LIST_LENGTH[level]))]
    if kind.startswith("sort"):
        answer = str(sorted(xs, reverse=kind == "sort_descending"))
        steps = f"In {kind.split('_')[1]} order: {answer}."
    elif kind == "sum":
        answer = sum(xs)
        steps = " + ".join(f"({x})" if x < 0 else str(x) for x in xs) + f" = {answer}."
    else:
        answer = max(xs) if kind == "max" else min(xs)
        which = "largest" if kind == "max" else "smallest"
        steps = f"Comparing the {len(xs)} numbers one by one, the {which} is {answer}."
    asked = _ask(rng, "lists", kind, _LISTS[kind], xs=str(xs) if rng.random() < 0.5 else ", ".join(map(str, xs)))
    return _problem("lists", asked, f"lists:{kind}:{xs}", answer, steps)


# -- dates --------------------------------------------------------------------------------------

FIRST, LAST = dt.date(1900, 1, 1), dt.date(2099, 12, 31)     # 1900-01-01 was a Monday
DAYS_APART = {1: 60, 2: 400, 3: 2000}                         # level -> most days between two dates
_DATES = {
    "weekday": ["What day of the week is {d}?", "On which day of the week does {d} fall?",
                "Which weekday was {d}?"],
    "days_between": ["How many days are there from {d} to {e}?", "How many days after {d} is {e}?",
                     "Count the days from {d} to {e}."],
}


def date_text(d: dt.date, style: int) -> str:
    """ISO (2024-03-05), US (March 5, 2024) or British (5 March 2024)."""
    return [d.isoformat(), f"{d:%B} {d.day}, {d.year}", f"{d.day} {d:%B %Y}"][style]


def dates(rng: random.Random, level: int) -> Problem:
    kind, style = rng.choice(list(_DATES)), rng.randrange(3)
    d = FIRST + dt.timedelta(days=rng.randint(0, (LAST - FIRST).days - DAYS_APART[level]))
    if kind == "weekday":
        since = (d - FIRST).days
        answer = d.strftime("%A")
        steps = (f"{d.isoformat()} is {since:,} days after Monday 1900-01-01, and {since:,} = 7 × {since // 7:,} "
                 f"+ {since % 7}, so it is {since % 7} day{'s' * (since % 7 != 1)} after a Monday: a {answer}.")
        asked = _ask(rng, "dates", kind, _DATES[kind], d=date_text(d, style))
        key = f"dates:weekday:{d.isoformat()}"
    else:
        e = d + dt.timedelta(days=rng.randint(1, DAYS_APART[level]))
        answer = (e - d).days
        steps = (f"Counting from 1900-01-01, {d.isoformat()} is day {(d - FIRST).days:,} and {e.isoformat()} "
                 f"is day {(e - FIRST).days:,}; the difference is {answer:,} days.")
        asked = _ask(rng, "dates", kind, _DATES[kind], d=date_text(d, style), e=date_text(e, style))
        key = f"dates:days_between:{d.isoformat()}:{e.isoformat()}"
    return _problem("dates", (f"{asked[0]}.{style}", asked[1]), key, answer, steps)


# -- countdown ----------------------------------------------------------------------------------

COUNTDOWN_NUMBERS = {1: 3, 2: 4, 3: 5}       # level -> how many numbers to combine
COUNTDOWN_MAX = 1000                         # targets and intermediate values stay below this
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_COUNTDOWN = ["Using the numbers {nums}, make {t}. Use each number exactly once, with + - * / and parentheses.",
              "Reach {t} with the numbers {nums}: each exactly once, using +, -, * and /. Write the expression.",
              "Countdown: numbers {nums}, target {t}. Combine all the numbers, each once, with + - * / to hit "
              "the target."]


@dataclass(frozen=True)
class _Term:
    value: int
    text: str
    precedence: int = 3      # of its outermost operator; 3 for a bare number


def _join(a: _Term, op: str, b: _Term, value: int) -> _Term:
    """a op b with only the parentheses it needs: (a + b) * c, a - (b + c), a / (b * c)."""
    p = _PRECEDENCE[op]
    left = f"({a.text})" if a.precedence < p else a.text
    right = f"({b.text})" if b.precedence < p or (b.precedence == p and op in "-/") else b.text
    return _Term(value, f"{left} {op} {right}", p)


def _combine(rng: random.Random, a: _Term, b: _Term) -> tuple[_Term, str] | None:
    """A random operation on two terms that keeps values positive whole numbers, or None."""
    if a.value < b.value:
        a, b = b, a
    ops = ["+", "*"] + ["-"] * (a.value > b.value) + ["/"] * (b.value > 1 and a.value % b.value == 0)
    op = rng.choice(ops)
    value = {"+": a.value + b.value, "-": a.value - b.value, "*": a.value * b.value,
             "/": a.value // b.value}[op]     # values stay positive, so b is never 0
    if value >= COUNTDOWN_MAX:
        return None
    return _join(a, op, b, value), f"{a.value} {op} {b.value} = {value}"


def countdown(rng: random.Random, level: int) -> Problem:
    while True:     # a few draws at most: most trees stay under COUNTDOWN_MAX
        nums = [rng.choice([25, 50, 75, 100]) if level > 1 and rng.random() < 0.2 else rng.randint(1, 12)
                for _ in range(COUNTDOWN_NUMBERS[level])]
        pool, steps = [_Term(n, str(n)) for n in nums], []
        while len(pool) > 1:
            a, b = (pool.pop(rng.randrange(len(pool))) for _ in range(2))
            made = _combine(rng, a, b)
            if made is None:
                break
            pool.append(made[0])
            steps.append(made[1])
        if len(pool) == 1 and pool[0].value not in nums and pool[0].value > 0:
            break
    target, expr = pool[0].value, pool[0].text
    asked = _ask(rng, "countdown", f"{len(nums)}-numbers", _COUNTDOWN, t=target, nums=", ".join(map(str, nums)))
    return _problem("countdown", asked, f"countdown:{sorted(nums)}:{target}", expr,
                    "; ".join(steps) + f". So {expr} = {target}.")


# -- word problems ------------------------------------------------------------------------------

NAMES = "Ada Ben Chen Dara Emil Fatima Gita Hugo Ines Jonas Kofi Lena Maya Nils Omar Priya Rosa Sven".split()
ITEMS = "pencils apples stickers marbles cookies books shells cards".split()
_WORD = {
    "change": ["{n1} buys {k} {item} at ${p} each and pays with a ${bill} bill. How much change does {n1} get, "
               "in dollars?",
               "{Item} cost ${p} each. {n1} buys {k} of them and pays with ${bill}. How many dollars of change "
               "come back?"],
    "share": ["{n1} has {total} {item} and shares them equally among {k} friends. How many {item} does each "
              "friend get?", "{total} {item} are split evenly into {k} bags. How many {item} are in each bag?"],
    "distance": ["A train travels at {v} km/h for {t} hours. How far does it go, in kilometres?",
                 "{n1} drives at {v} km/h for {t} hours. How many kilometres is that?"],
    "giving": ["{n1} had {a} {item}, gave {b} to {n2} and then bought {c} more. How many {item} does {n1} "
               "have now?", "{n1} starts with {a} {item}. {n1} gives {n2} {b} of them, then finds {c} more. "
                            "How many {item} does {n1} have?"],
    "ages": ["{n1} is {a} years old. {n2} is {b} years older than {n1}. How old will {n2} be in {c} years?",
             "{n2} is {b} years older than {n1}, who is {a}. How old will {n2} be {c} years from now?"],
}


def word_problems(rng: random.Random, level: int) -> Problem:
    kind = rng.choice(list(_WORD))
    n1, n2 = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    k, p = rng.randint(2, 9), rng.randint(1, 9)
    a, c = rng.randint(10, 50), rng.randint(1, 20)
    b = rng.randint(1, a - 1)
    v, t = rng.randrange(20, 125, 5), rng.randint(2, 6)
    bill = next(x for x in (10, 20, 50, 100) if x >= k * p)
    total = k * rng.randint(2, 15)
    answer, steps, numbers = {
        "change": (bill - k * p, f"{k} {item} at ${p} each cost {k} × {p} = ${k * p}; the change is "
                                 f"{bill} - {k * p} = ${bill - k * p}.", (k, p, bill)),
        "share": (total // k, f"{total} ÷ {k} = {total // k}.", (total, k)),
        "distance": (v * t, f"Distance is speed × time: {v} × {t} = {v * t} km.", (v, t)),
        "giving": (a - b + c, f"{a} - {b} = {a - b}, and {a - b} + {c} = {a - b + c}.", (a, b, c)),
        "ages": (a + b + c, f"{n2} is {a} + {b} = {a + b} now, and in {c} years will be {a + b} + {c} = "
                            f"{a + b + c}.", (a, b, c)),
    }[kind]
    asked = _ask(rng, "word_problems", kind, _WORD[kind], n1=n1, n2=n2, item=item, Item=item.capitalize(), k=k,
                 p=p, bill=bill, total=total, v=v, t=t, a=a, b=b, c=c)
    return _problem("word_problems", asked, f"word_problems:{kind}:{numbers}", answer, steps)


# -- the catalog --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Task:
    name: str
    make: Callable[[random.Random, int], Problem]
    levels: tuple[int, ...] = (1,)
    level: int = 1

    def generate(self, rng: random.Random) -> Problem:
        return self.make(rng, self.level)

    def check(self, reply: str, answer: str) -> bool:
        """Whether the reply's final answer is `answer` (`lamina.post.rewards.check`)."""
        return check_answer(reply, answer)


TASKS = {t.name: t for t in [
    Task("arithmetic", arithmetic, (1, 2, 3), 2),
    Task("units", units),
    Task("strings", strings),
    Task("lists", lists, (1, 2, 3), 2),
    Task("dates", dates, (1, 2, 3), 2),
    Task("countdown", countdown, (1, 2, 3), 1),
    Task("word_problems", word_problems),
]}


def get_task(spec: str) -> Task:
    """A task by name, at its default level or at the one given after a colon: "countdown:2"."""
    name, _, level = spec.partition(":")
    if name not in TASKS:
        raise LaminaError(f"unknown task {name!r}; the tasks are {', '.join(TASKS)}")
    task = TASKS[name]
    if level:
        if not level.isdigit() or int(level) not in task.levels:
            raise LaminaError(f"task {name} has levels {', '.join(map(str, task.levels))}, not {level!r}")
        task = replace(task, level=int(level))
    return task


def problem_at(task: Task, seed: int, index: int) -> Problem:
    """Problem `index` of `task` at `seed`: the same on every machine and Python version."""
    rng = random.Random(f"{task.name}:{task.level}:{seed}:{index}")
    return replace(task.generate(rng), seed=seed, index=index)


def problems(task: Task | str, n: int, *, seed: int = 0, split: str = "train") -> list[Problem]:
    """The first `n` distinct problems of `task` at `seed` that fall in `split`."""
    task = get_task(task) if isinstance(task, str) else task
    if split not in SPLITS:
        raise LaminaError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    found: dict[str, Problem] = {}
    index, tries = 0, 20 * n + 1000
    while len(found) < n:
        if index == tries:
            raise LaminaError(f"task {task.name} (level {task.level}) gave only {len(found)} distinct {split} "
                              f"problems in {tries} tries; ask for fewer")
        p = problem_at(task, seed, index)
        if p.split == split:
            found.setdefault(p.key, p)
        index += 1
    return list(found.values())
