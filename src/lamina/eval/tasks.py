"""The benchmarks: each turns its dataset rows into items posed exactly as lm-evaluation-harness
0.4 poses them (prompt text, target delimiter " ", few-shot layout), so scores are comparable
with published ones. The prompt of each task is in its `format` line, and tests/eval/
test_tasks.py checks every request string against lm-eval's own rendering of the same rows.

Splits: the package ships the validation split of the zero-shot suite (lm-eval also uses
validation, except ARC and OpenBookQA where it prefers test, which is not shipped), MMLU's test
split with its dev split for the shots, GSM8K's and LAMBADA's test splits."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from ..errors import LaminaError
from .data import read_arrow, read_requests


@dataclass(frozen=True)
class Item:
    """One question. `requests` are the (context, continuation) strings to score, one per
    choice (for GSM8K one, the prompt with an empty continuation); `lengths` the characters of
    each choice's text (acc_norm); `text` what decontamination looks for (the question with its
    answer, without few-shot examples)."""
    requests: tuple[tuple[str, str], ...]
    gold: int
    text: str
    lengths: tuple[int, ...] = ()
    block: str = ""           # MMLU subject: items that share a few-shot preamble, macro-averaged
    answer: str = ""          # GSM8K: the reference answer


@dataclass(frozen=True)
class Task:
    name: str
    title: str                # the column header of the LLaMA paper's tables
    kind: str                 # "choice", "loglikelihood" (LAMBADA) or "generate" (GSM8K)
    split: str
    metrics: tuple[str, ...]
    headline: str             # the metric the table shows
    fewshot: int              # default number of solved examples in the prompt
    max_fewshot: int
    format: str
    make: Callable[[int | None, int], list[Item]]   # (limit, num_fewshot) -> items

    def items(self, limit: int | None = None, num_fewshot: int | None = None) -> list[Item]:
        shots = self.fewshot if num_fewshot is None else num_fewshot
        if not 0 <= shots <= self.max_fewshot:
            raise LaminaError(f"{self.name} takes 0 to {self.max_fewshot} few-shot examples, not {shots}")
        if limit is not None and limit < 1:
            raise LaminaError(f"--limit must be at least 1, not {limit}")
        return self.make(limit, shots)


def choice_item(context: str, choices: list[str], gold: int, **kw) -> Item:
    return Item(requests=tuple((context, " " + c) for c in choices), gold=gold,
                lengths=tuple(len(c) for c in choices), **kw)


def zero_shot(relative_dir: str, title: str, to_item: Callable[[dict], Item]):
    """A zero-shot multiple-choice task over one shipped split: the first `limit` rows."""
    def make(limit: int | None, shots: int) -> list[Item]:
        return [to_item(d) for d in read_arrow(relative_dir, f"the {title} data")[:limit]]
    return make


# -- the zero-shot common-sense suite (LLaMA paper, table 3) ---------------------------------------

def boolq(d: dict) -> Item:
    q = f"{d['passage']}\nQuestion: {d['question']}?\nAnswer:"
    return choice_item(q, ["no", "yes"], int(d["answer"]), text=d["passage"])


def piqa(d: dict) -> Item:
    q = f"Question: {d['goal']}\nAnswer:"
    return choice_item(q, [d["sol1"], d["sol2"]], int(d["label"]), text=d["goal"])


def siqa(d: dict) -> Item:
    q = f"Q: {d['context']} {d['question']}\nA:"
    choices = [d["answerA"], d["answerB"], d["answerC"]]
    gold = int(d["label"]) - 1
    return choice_item(q, choices, gold, text=f"{d['context']} {d['question']} {choices[gold]}")


def _hellaswag_clean(text: str) -> str:
    """lm_eval/tasks/hellaswag/utils.py: WikiHow bracket artifacts out, double spaces single."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub("\\[.*?\\]", "", text).replace("  ", " ")


def hellaswag(d: dict) -> Item:
    q = _hellaswag_clean(d["activity_label"] + ": " + d["ctx_a"] + " " + d["ctx_b"].capitalize())
    choices = [_hellaswag_clean(e) for e in d["endings"]]
    gold = int(d["label"])
    return choice_item(q, choices, gold, text=f"{q} {choices[gold]}")


def winogrande(d: dict) -> Item:
    """Partial scoring: the choice goes into the context, the rest of the sentence is scored."""
    cut = d["sentence"].index("_")
    contexts = [d["sentence"][:cut] + o for o in (d["option1"], d["option2"])]
    rest = " " + d["sentence"][cut + 1:].strip()
    gold = {"1": 0, "2": 1}[d["answer"]]
    return Item(requests=tuple((c, rest) for c in contexts), gold=gold,
                lengths=tuple(len(c) for c in contexts), text=d["sentence"])


def arc(d: dict) -> Item:
    q = f"Question: {d['question']}\nAnswer:"
    return choice_item(q, list(d["choices"]["text"]), d["choices"]["label"].index(d["answerKey"]), text=q)


def openbookqa(d: dict) -> Item:
    gold = d["choices"]["label"].index(d["answerKey"].lstrip())
    return choice_item(d["question_stem"], list(d["choices"]["text"]), gold, text=d["question_stem"])


# -- MMLU: 57 subjects, 5-shot from each subject's dev split, macro average ------------------------

MMLU_SUBJECTS = (
    "abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology "
    "college_chemistry college_computer_science college_mathematics college_medicine college_physics "
    "computer_security conceptual_physics econometrics electrical_engineering elementary_mathematics "
    "formal_logic global_facts high_school_biology high_school_chemistry high_school_computer_science "
    "high_school_european_history high_school_geography high_school_government_and_politics "
    "high_school_macroeconomics high_school_mathematics high_school_microeconomics high_school_physics "
    "high_school_psychology high_school_statistics high_school_us_history high_school_world_history "
    "human_aging human_sexuality international_law jurisprudence logical_fallacies machine_learning "
    "management marketing medical_genetics miscellaneous moral_disputes moral_scenarios nutrition "
    "philosophy prehistory professional_accounting professional_law professional_medicine "
    "professional_psychology public_relations security_studies sociology us_foreign_policy virology "
    "world_religions").split()
LETTERS = ("A", "B", "C", "D")


def mmlu_question(d: dict) -> str:
    c = d["choices"]
    return f"{d['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"


def mmlu(limit: int | None, shots: int) -> list[Item]:
    """lm-eval's `mmlu` (default variant): a description line, the first `shots` dev questions
    answered with their letter, then the question; the choices are the letters. `limit` applies
    per subject, as lm-eval applies it per subtask."""
    items = []
    for subject in MMLU_SUBJECTS:
        base = f"hails/mmlu_no_train/{subject}"
        dev = read_arrow(f"{base}/dev", f"the MMLU {subject} data")[:shots]
        head = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        head += "".join(f"{mmlu_question(d)} {LETTERS[d['answer']]}\n\n" for d in dev)
        for d in read_arrow(f"{base}/test", f"the MMLU {subject} data")[:limit]:
            q = mmlu_question(d)
            item = choice_item(head + q, list(LETTERS), int(d["answer"]), block=subject,
                               text=f"{d['question']} {d['choices'][int(d['answer'])]}")
            items.append(item)
    return items


# -- LAMBADA (OpenAI's version): the last word of a passage --------------------------------------

def lambada(limit: int | None, shots: int) -> list[Item]:
    """lm-eval's `lambada_openai`: context = every word but the last, continuation = " " + the
    last word; acc = greedy decoding gives the word, perplexity = exp(-mean log-likelihood)."""
    items = []
    for d in read_requests("lambada/bpb_0shot", "the LAMBADA data")[:limit]:
        words = (d["query"] + " " + d["answers_text"][0]).split(" ")
        text = " ".join(words)
        items.append(Item(requests=((" ".join(words[:-1]), " " + words[-1]),), gold=0, text=text))
    return items


# -- GSM8K: 8-shot chain of thought, generated, answer extracted ----------------------------------

# The eight exemplars of Wei et al. (2022), "Chain-of-thought prompting", as lm-eval's gsm8k-cot.yaml has them.
GSM8K_SHOTS = (
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. The answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, they had 74 - 35 = 39. The answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. The answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. The answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, from monday to thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8."),
)
GSM8K_STOP = ("Q:", "</s>", "<|im_end|>")
GSM8K_MAX_NEW_TOKENS = 256     # lm-eval's default max_gen_toks


def gsm8k(limit: int | None, shots: int) -> list[Item]:
    """lm-eval's `gsm8k_cot`: "Q: ...\\nA:" after `shots` worked exemplars; greedy generation
    until "Q:"; the answer is read by the strict ("The answer is N.") and flexible (last number)
    filters and compared by exact match with the number after '####' in the reference."""
    head = "".join(f"Q: {q}\nA: {a}\n\n" for q, a in GSM8K_SHOTS[:shots])
    items = []
    for d in read_requests("gsm8k/gold_bpb_5shot", "the GSM8K data")[:limit]:
        prompt = head + f"Q: {d['question']}\nA:"
        items.append(Item(requests=((prompt, ""),), gold=0, text=f"{d['question']} {d['answer']}",
                          answer=d["answer"].split("####")[-1].strip()))
    return items


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("boolq", "BoolQ", "choice", "validation", ("acc",), "acc", 0, 0,
         '"{passage}\\nQuestion: {question}?\\nAnswer:" -> " no" | " yes"',
         zero_shot("boolq/none/validation", "BoolQ", boolq)),
    Task("piqa", "PIQA", "choice", "validation", ("acc", "acc_norm"), "acc_norm", 0, 0,
         '"Question: {goal}\\nAnswer:" -> " {sol1}" | " {sol2}"',
         zero_shot("piqa/plain_text/validation", "PIQA", piqa)),
    Task("siqa", "SIQA", "choice", "validation", ("acc",), "acc", 0, 0,
         '"Q: {context} {question}\\nA:" -> " {answerA}" | " {answerB}" | " {answerC}"',
         zero_shot("social_i_qa/none/validation", "SIQA", siqa)),
    Task("hellaswag", "HellaSwag", "choice", "validation", ("acc", "acc_norm"), "acc_norm", 0, 0,
         '"{activity_label}: {ctx_a} {Ctx_b}" -> " {ending}" (WikiHow brackets removed)',
         zero_shot("hellaswag/none/validation", "HellaSwag", hellaswag)),
    Task("winogrande", "WinoGrande", "choice", "validation", ("acc",), "acc", 0, 0,
         '"{sentence up to _}{option}" -> " {rest of sentence}" (partial scoring)',
         zero_shot("winogrande/winogrande_xl/validation", "WinoGrande", winogrande)),
    Task("arc_easy", "ARC-e", "choice", "validation", ("acc", "acc_norm"), "acc_norm", 0, 0,
         '"Question: {question}\\nAnswer:" -> " {choice}"',
         zero_shot("ai2_arc/ARC-Easy/validation", "ARC-Easy", arc)),
    Task("arc_challenge", "ARC-c", "choice", "validation", ("acc", "acc_norm"), "acc_norm", 0, 0,
         '"Question: {question}\\nAnswer:" -> " {choice}"',
         zero_shot("ai2_arc/ARC-Challenge/validation", "ARC-Challenge", arc)),
    Task("openbookqa", "OBQA", "choice", "validation", ("acc", "acc_norm"), "acc_norm", 0, 0,
         '"{question_stem}" -> " {choice}"',
         zero_shot("openbookqa/main/validation", "OpenBookQA", openbookqa)),
    Task("mmlu", "MMLU", "choice", "test", ("acc",), "acc", 5, 5,
         '"The following are multiple choice questions (with answers) about {subject}.\\n\\n" '
         '+ shots + "{question}\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:" -> " A" | " B" | " C" | " D"', mmlu),
    Task("gsm8k", "GSM8K", "generate", "test", ("exact_match",), "exact_match", 8, 8,
         '8 x "Q: {question}\\nA: {chain of thought} The answer is {n}.\\n\\n" + "Q: {question}\\nA:" -> generate', gsm8k),
    Task("lambada", "LAMBADA", "loglikelihood", "test", ("acc", "perplexity"), "acc", 0, 0,
         '"{passage but its last word}" -> " {last word}"', lambada),
]}
GROUPS = {"llama-zero-shot": ("boolq", "piqa", "siqa", "hellaswag", "winogrande", "arc_easy",
                              "arc_challenge", "openbookqa")}


def resolve_tasks(names: list[str]) -> list[Task]:
    """Task names and groups (comma- or space-separated) to tasks, in order, without repeats."""
    out: list[str] = []
    for name in (n.strip() for spec in names for n in spec.split(",")):
        if not name:
            continue
        expanded = GROUPS.get(name, (name,))
        for n in expanded:
            if n not in TASKS:
                known = ", ".join(list(TASKS) + list(GROUPS))
                raise LaminaError(f"unknown task {n!r}; known tasks: {known}")
            if n not in out:
                out.append(n)
    if not out:
        raise LaminaError("no task given; e.g. --tasks llama-zero-shot")
    return [TASKS[n] for n in out]
