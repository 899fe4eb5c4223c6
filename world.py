"""
world.py: the built-in world, a seeded generator of everything the pipeline learns from and is judged by.

On a laptop CPU we cannot train on the internet, and without a known answer no stage can be judged.
So we invent a small valley of people. Each person has a unique name and five facts drawn from small
closed sets of candidate values: the town they live in, their job, their pet, their favorite color, and
their mother (a separate person who appears only as someone's mother). From these facts we write:

- pretraining documents ("the internet"): bios, town pages, local news, short stories, FAQ pages in the
  "Q: ...\\nA: ..." framing, and arithmetic pages; every fact is stated in several documents and
  phrasings, because knowledge seen in one phrasing only is hard to extract later.
- SFT conversations about half of the people (`sft_people`), written by simulated demonstrators of
  uneven style and quality (careful, terse, chatty, rambling, and about 10% wrong answers).
- exams with exact answers: fact recall by completion, question answering with held-out phrasings, and
  the reversal probe. The mother relation is written in one direction only, everywhere:
  "Anna Berg's mother is Agnes Holt." The reversal exam asks "Who is Agnes Holt's child?".
- RL prompts, a hidden gold preference score (the stand-in for a human's taste, see `gold_score`) and
  a noisy labeler that turns it into pairwise choices, the way a person would.

Everything comes from `random.Random` instances derived from one seed (never the global random state),
so the same seed gives byte-identical output. Standard library only.

Example:
    python world.py                  # a sample of each kind of data, and corpus statistics
    python world.py --n-people 12 --seed 7    # the tiny world used by the tests
"""
import math
import os
import random
import re
from dataclasses import dataclass

# -----------------------------------------------------------------------------
# The vocabulary of the world. Ordinary words, so a BPE tokenizer splits each into a few pieces.
# No candidate value may be a word of a name or of the fixed text around it, or grading breaks;
# make_world checks the names, the tests check the fixed sentences.

FIRST_NAMES = (  # every person has a first name of their own, see make_world
    "Anna", "Tom", "Lena", "Paul", "Maria", "Jack", "Nora", "Sam", "Clara", "Ben", "Emma", "Leo", "Julia",
    "Max", "Sara", "Oscar", "Ella", "Hugo", "Ida", "Felix", "Alice", "Peter", "Rosa", "Daniel", "Helen",
    "Victor", "Laura", "Martin", "Irene", "Simon", "Greta", "Oliver", "Mia", "Carl", "Eva", "Adam", "Lucy",
    "Henry", "Vera", "Noah", "Ruth", "Frank", "Sofia", "Kevin", "Alma", "David", "Lily", "Jonas", "Hannah",
    "Erik", "Aaron", "Abel", "Alan", "Albert", "Alex", "Alfred", "Amy", "Andrew", "Angela", "Anton", "Arthur",
    "August", "Barbara", "Basil", "Beatrice", "Benny", "Bernard", "Bianca", "Boris", "Brian", "Bruno",
    "Caleb", "Camilla", "Caroline", "Cecil", "Celia", "Charles", "Chloe", "Christian", "Claude", "Colin",
    "Conrad", "Cynthia", "Dennis", "Derek", "Dominic", "Donald", "Dora", "Douglas", "Duncan", "Dylan",
    "Eddie", "Edgar", "Edmund", "Edward", "Elena", "Eli", "Elias", "Eliza", "Ellen", "Emil", "Eric", "Ernest",
    "Esther", "Ethan", "Eugene", "Evelyn", "Ezra", "Fabian", "Felicia", "Fred", "Gabriel", "George", "Gerald",
    "Gilbert", "Gordon", "Harold", "Harvey", "Heidi", "Howard", "Ian", "Igor", "Ingrid", "Isaac", "Ivan",
    "Jacob", "James", "Jane", "Jasper", "Jeremy", "Jerome", "Joel", "John", "Joseph", "Joshua", "Judith",
    "Julian", "Justin", "Karl", "Kate", "Keith", "Kurt", "Lars", "Lawrence", "Leon", "Leonard", "Lewis",
    "Liam", "Lionel", "Lisa", "Louis", "Lucas", "Luke", "Malcolm", "Marcus", "Marek", "Marion", "Mark",
    "Marta", "Matthew", "Maurice", "Melvin", "Michael", "Miles", "Milo", "Molly", "Monica", "Morris",
    "Nathan", "Neil", "Nelson", "Nick", "Nina", "Norman", "Olga", "Otto", "Owen", "Patrick", "Philip",
    "Quentin", "Rachel", "Ralph", "Raymond", "Rebecca", "Richard", "Robert", "Roger", "Roland", "Ronald",
    "Rupert", "Russell", "Ryan", "Samuel", "Sandra", "Sean", "Sebastian", "Sergio", "Sharon", "Sheila",
    "Sidney", "Silvia", "Stella", "Stephen", "Steven", "Stuart", "Sylvia", "Theo", "Thomas", "Tobias",
    "Trevor", "Valentin", "Walter", "Warren", "Wesley", "William", "Xavier", "Yusuf", "Zachary", "Zoe",
)
# Mothers come from an older generation with its own first names, so a mother is never a person.
MOTHER_FIRST_NAMES = (
    "Agnes", "Betty", "Carol", "Diana", "Edith", "Fiona", "Gloria", "Hazel", "Iris", "Joan",
    "Karen", "Linda", "Margaret", "Nancy", "Olive", "Pauline", "Rita", "Susan", "Teresa", "Ursula",
    "Wendy", "Yvonne", "Ada", "Bella", "Cora", "Doris", "Elsie", "Flora", "Grace", "Harriet",
)
LAST_NAMES = (
    "Berg", "Holt", "Lund", "Marsh", "Hart", "Ward", "Stone", "Wells", "Frost", "Hale",
    "Reed", "Moss", "Dale", "Ford", "Grant", "Kerr", "Lowe", "Nash", "Park", "Price",
    "Quinn", "Rowe", "Shaw", "Todd", "Vance", "Webb", "Young", "Ames", "Blake", "Cole",
    "Dunn", "Ellis", "Flynn", "Grove", "Hayes", "Irwin", "Jensen", "Knox", "Mann", "Novak",
)
TOWNS = (
    "Dunmore", "Ashford", "Brookvale", "Millbrook", "Oakridge", "Redwater", "Stonebridge",
    "Westfield", "Fairhaven", "Greenhill", "Kingsport", "Larkspur", "Northwick", "Pinecrest",
    "Riverton", "Silverlake", "Thornbury", "Elmstead", "Highmoor", "Clearwater",
)
# Every job and pet starts with a consonant, so "a {job}" and "a pet {pet}" are always grammatical.
JOBS = (
    "baker", "teacher", "doctor", "farmer", "nurse", "carpenter", "painter", "pilot",
    "fisherman", "tailor", "plumber", "librarian", "cook", "gardener", "dentist",
)
PETS = (
    "cat", "dog", "rabbit", "parrot", "hamster", "turtle", "goldfish", "horse", "goat",
    "lizard", "snake", "canary",
)
COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink", "brown")

ATTRIBUTES = ("town", "job", "pet", "color", "mother")

# -----------------------------------------------------------------------------
# How facts are written. The canonical sentence of each attribute is what the recall exam completes
# ("Anna Berg lives in" -> "Dunmore"); it appears verbatim in the corpus for every person.
# The mother is always written child first: no sentence ever puts the mother's name before her child's.

CANONICAL = {
    "town": "{name} lives in {value}.",
    "job": "{name} works as a {value}.",
    "pet": "{name} has a pet {value}.",
    "color": "{name}'s favorite color is {value}.",
    "mother": "{name}'s mother is {value}.",
}
PARAPHRASES = {
    "town": ("{name}'s home town is {value}.", "{value} is where {name} lives.",
             "{name} has lived in {value} for years.", "{name} makes a home in {value}."),
    "job": ("{name} is a {value}.", "{name} earns a living as a {value}.",
            "By trade, {name} is a {value}.", "{name} has a job as a {value}."),
    "pet": ("{name} keeps a {value} as a pet.", "{name}'s pet is a {value}.",
            "At home, {name} looks after a pet {value}."),
    "color": ("{name} loves the color {value}.", "The favorite color of {name} is {value}.",
              "{name} likes {value} more than any other color."),
    "mother": ("{name}'s mother is called {value}.", "The mother of {name} is {value}.",
               "The name of {name}'s mother is {value}."),
}

# Questions, split once and for all: SFT conversations use only SFT_PHRASINGS; the exams use
# EXAM_PHRASINGS, which the SFT data never contains. Both sets appear in the pretraining FAQ pages,
# so a base model has seen every phrasing next to its answer.
SFT_PHRASINGS = {
    "town": ("Where does {name} live?", "In which town does {name} live?",
             "What is {name}'s home town?", "Tell me where {name} lives."),
    "job": ("What is {name}'s job?", "What does {name} do for a living?",
            "What job does {name} have?", "What does {name} work as?"),
    "pet": ("What pet does {name} have?", "What is {name}'s pet?",
            "Which animal does {name} keep as a pet?", "What kind of pet does {name} have?"),
    "color": ("What is {name}'s favorite color?", "Which color does {name} like best?",
              "What color does {name} like most?", "What is the favorite color of {name}?"),
    "mother": ("Who is {name}'s mother?", "What is the name of {name}'s mother?",
               "Who is the mother of {name}?", "What is {name}'s mother called?"),
}
EXAM_PHRASINGS = {
    "town": ("Which town is {name} from?", "Where is {name}'s home?"),
    "job": ("What is {name}'s profession?", "How does {name} earn a living?"),
    "pet": ("Which pet lives with {name}?", "What animal does {name} own?"),
    "color": ("Which color is {name}'s favorite?", "What colour does {name} love most?"),
    "mother": ("Can you tell me who {name}'s mother is?", "Who is {name}'s mom?"),
}
# The reversed question. Never in the pretraining corpus; in SFT data only about sft_people.
REVERSAL_PHRASINGS = ("Who is {mother}'s child?", "Whose mother is {mother}?")

# Demonstrator phrases. None may contain a candidate value (a test checks).
OPENERS = ("Great question!", "Sure!", "Happy to help!")
CLOSINGS = ("I hope this helps!", "Let me know if you have more questions.", "Have a nice day!")
POLITE = OPENERS + CLOSINGS
FILLERS = (
    "The weather has been lovely this week.", "I once read a long book about trains.",
    "Some people say tea tastes better in the morning.", "There are many things to learn in life.",
    "Anyway, that is good to know.", "My neighbour says the same thing every day.",
    "Mountains are nice to look at from far away.", "It is always good to ask questions.",
)
PERSON_FILLERS = (
    "{name} enjoys long walks on Sundays.", "{name} is known for a warm smile.",
    "{name} likes to read in the evening.", "Many people in the valley know {name}.",
    "{name} often sings while working.", "{name} is a friendly neighbour.",
)
SYSTEM_PROMPTS = ("You are a helpful assistant.", "You answer questions about the people of the valley.")

# The labeler's temperature: P(prefer a) = sigmoid((gold(a) - gold(b)) / LABEL_TEMPERATURE).
LABEL_TEMPERATURE = 0.25


@dataclass(frozen=True)
class Person:
    name: str
    town: str
    job: str
    pet: str
    color: str
    mother: str


@dataclass(frozen=True)
class World:
    seed: int
    people: tuple                # every Person, in creation order
    sft_people: tuple            # asked about in SFT conversations
    pretrain_only_people: tuple  # appear in pretraining documents only


# -----------------------------------------------------------------------------
# Building the world

MAX_PEOPLE = len(FIRST_NAMES)  # every person has their own first name


def make_world(n_people=100, seed=1337):
    """Draw n_people people with unique names, their facts, and the SFT / pretrain-only split."""
    assert 2 <= n_people <= MAX_PEOPLE, f"n_people must be in 2..{MAX_PEOPLE}"
    assert n_people <= len(MOTHER_FIRST_NAMES) * len(LAST_NAMES), "not enough mother names"
    values = {v.lower() for v in TOWNS + JOBS + PETS + COLORS}
    assert not values & {w.lower() for w in FIRST_NAMES + MOTHER_FIRST_NAMES + LAST_NAMES}
    assert not set(FIRST_NAMES) & set(MOTHER_FIRST_NAMES)
    rng = random.Random(f"world-{seed}")
    # Every person gets a first name of their own (last names repeat). With shared first names a 0.9M
    # model confused people: of 179 wrong recalls, 110 gave the fact of another person with the same first
    # name. Real names collide; a model that must learn 500 facts (100 people x 5)
    # in minutes on a CPU is spared that.
    names = [f"{f} {rng.choice(LAST_NAMES)}" for f in rng.sample(FIRST_NAMES, n_people)]
    mothers = rng.sample([f"{f} {l}" for f in MOTHER_FIRST_NAMES for l in LAST_NAMES], n_people)
    people = tuple(Person(name=name, town=rng.choice(TOWNS), job=rng.choice(JOBS), pet=rng.choice(PETS),
                          color=rng.choice(COLORS), mother=mother) for name, mother in zip(names, mothers))
    order = list(range(n_people))
    rng.shuffle(order)
    half = n_people // 2
    return World(seed=seed, people=people,
                 sft_people=tuple(people[i] for i in sorted(order[:half])),
                 pretrain_only_people=tuple(people[i] for i in sorted(order[half:])))


def value_of(person, attribute):
    return getattr(person, attribute)


def candidates(world, attribute):
    """The closed set of values an answer about `attribute` is graded against."""
    fixed = {"town": TOWNS, "job": JOBS, "pet": PETS, "color": COLORS}
    if attribute in fixed:
        return fixed[attribute]
    if attribute == "mother":
        return tuple(p.mother for p in world.people)
    if attribute == "child":
        return tuple(p.name for p in world.people)
    if attribute == "sum":
        return tuple(str(i) for i in range(41))
    raise ValueError(f"unknown attribute {attribute!r}")


def capitalized(text):
    return text[:1].upper() + text[1:]


def fact(person, attribute, template):
    return template.format(name=person.name, value=value_of(person, attribute))


def fact_sentence(person, attribute, rng, p_canonical=0.4):
    """One sentence stating one fact, canonical with probability p_canonical, else a paraphrase."""
    if rng.random() < p_canonical:
        return fact(person, attribute, CANONICAL[attribute])
    return fact(person, attribute, rng.choice(PARAPHRASES[attribute]))


# -----------------------------------------------------------------------------
# Pretraining documents. Each generator returns one short document (mostly < 800 characters,
# since the training context is 256 tokens).

def bio_doc(person, rng, canonical=False):
    """A short bio: every fact once, in random order, canonical or paraphrased."""
    name = person.name
    header = rng.choice(("{name}", "About {name}", "Profile: {name}", "People of the valley: {name}", ""))
    intro = rng.choice(("", "This page is about {name}.", "Here is what we know about {name}.",
                        "{name} is one of our neighbours."))
    attrs = list(ATTRIBUTES)
    rng.shuffle(attrs)
    lines = [fact(person, a, CANONICAL[a]) if canonical else fact_sentence(person, a, rng) for a in attrs]
    if rng.random() < 0.5:
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(PERSON_FILLERS).format(name=name))
    lines = [s for s in (intro.format(name=name),) if s] + lines
    body = "\n".join("- " + s for s in lines) if rng.random() < 0.3 else " ".join(lines)
    return (header.format(name=name) + "\n\n" + body) if header else body


def town_page_doc(town, residents, rng):
    """A town page listing (up to 6) residents, one line each, sometimes with a second fact."""
    header = rng.choice(("Welcome to {town}", "{town} town page", "Living in {town}", "News from {town}"))
    intro = rng.choice(("{town} is a quiet town in the valley.", "{town} has a market every Saturday.",
                        "People in {town} like to meet at the old bridge.", "Here are some of the people of {town}."))
    lines = [header.format(town=town), intro.format(town=town)]
    for p in residents:
        line = fact(p, "town", CANONICAL["town"] if rng.random() < 0.6 else rng.choice(PARAPHRASES["town"]))
        if rng.random() < 0.5:
            line += " " + fact_sentence(p, rng.choice(("job", "pet", "color")), rng)
        lines.append(line)
    return "\n".join(lines)


def news_doc(person, kind, rng):
    """A local news snippet about a person's job or pet."""
    name, town, job, pet = person.name, person.town, person.job, person.pet
    if kind == "job":
        lead = rng.choice(("Local news from {town}.", "In the {town} paper this week:", "Work and trades."))
        body = rng.choice((
            "{fact} Customers say {name} is the best {job} around. {name} started the work many years ago.",
            "{fact} This spring {name} was thanked by many neighbours for hard work. {town_fact}",
            "{town_fact} {fact} Asked about the job, {name} said: every day is different.",
        ))
        return (lead + "\n" + body).format(name=name, town=town, job=job, fact=fact_sentence(person, "job", rng),
                                           town_fact=fact_sentence(person, "town", rng))
    lead = rng.choice(("Pet corner.", "Animals of {town}.", "Our readers and their pets."))
    body = rng.choice((
        "{fact} Neighbours in {town} often see the {pet} at the window.",
        "{fact} The {pet} is small, clever and loves attention. {town_fact}",
        "{town_fact} {fact} {name} says the {pet} is the best friend anyone could want.",
    ))
    return (lead + "\n" + body).format(name=name, town=town, pet=pet, fact=fact_sentence(person, "pet", rng),
                                       town_fact=fact_sentence(person, "town", rng))


def story_doc(person, rng):
    """A very short story that weaves several facts together (mother, as always, child first)."""
    template = rng.choice((
        "{name} woke up early in {town}. After breakfast {name} went to work, because {name} works as a {job}. "
        "At home, {name}'s {pet} was waiting by the door. {name} wore a {color} scarf, since {name}'s favorite "
        "color is {color}. That evening {name} wrote a letter home. {mother_fact}",
        "A day in {town}. Everyone in {town} knows {name}. {name} is a {job} and has a pet {pet}. "
        "On Sundays {name} paints the fence {color}, because {color} is {name}'s favorite color. {mother_fact}",
        "{name} and the {pet}. {name} has a pet {pet}. Every morning {name} and the {pet} walk through {town}. "
        "People say the {pet} is the happiest animal in {town}. {name} lives in {town}.",
        "The new {job}. When {name} moved to {town}, nobody knew that {name} was a {job}. Soon everyone did. "
        "{mother_fact} {name} has a pet {pet}, and {name}'s favorite color is {color}.",
    ))
    return template.format(name=person.name, town=person.town, job=person.job, pet=person.pet,
                           color=person.color, mother_fact=fact_sentence(person, "mother", rng))


def faq_answer(person, attribute, rng):
    """An FAQ answer: a sentence usually, the bare value sometimes (never for the mother, see below)."""
    r = rng.random()
    if r < 0.25 and attribute != "mother":
        # A bare "A: Agnes Holt." would put the mother's name in a sentence without her child's.
        return capitalized(value_of(person, attribute)) + "."
    return fact_sentence(person, attribute, rng, p_canonical=0.65)


def faq_docs(person, rng):
    """Every question phrasing (SFT and exam) about every attribute of one person, in a few FAQ pages."""
    pairs = [(a, q) for a in ATTRIBUTES for q in SFT_PHRASINGS[a] + EXAM_PHRASINGS[a]]
    rng.shuffle(pairs)
    docs = []
    for i in range(0, len(pairs), 7):
        header = rng.choice(("FAQ: {name}", "Questions about {name}", "Frequently asked questions", ""))
        qa = "\n".join(f"Q: {q.format(name=person.name)}\nA: {faq_answer(person, a, rng)}\n" for a, q in pairs[i:i + 7])
        docs.append((header.format(name=person.name) + "\n\n" + qa) if header else qa)
    return docs


def arithmetic_doc(rng):
    """A page of small sums, in one of a few formats."""
    kind = rng.randrange(4)
    if kind == 0:
        a = rng.randint(1, 12)
        return f"Adding {a}\n" + "\n".join(f"{a} + {b} = {a + b}" for b in range(1, 11))
    sums = [(rng.randint(0, 20), rng.randint(0, 20)) for _ in range(8)]
    if kind == 1:
        return "Practice sums\n" + "\n".join(f"{a} + {b} = {a + b}" for a, b in sums)
    if kind == 2:
        return "Arithmetic FAQ\n\n" + "\n".join(f"Q: What is {a} + {b}?\nA: {a + b}\n" for a, b in sums)
    return "Counting together. " + " ".join(f"If you add {a} and {b}, you get {a + b}." for a, b in sums[:5])


def corpus(world, rng):
    """All documents of one pass over the world, shuffled. Each person is covered by ~12 documents."""
    docs = []
    for p in world.people:
        docs.append(bio_doc(p, rng, canonical=True))  # guarantees every canonical sentence appears
        docs += [bio_doc(p, rng) for _ in range(2)]
        docs += [news_doc(p, "job", rng), news_doc(p, "pet", rng), story_doc(p, rng)]
        docs += faq_docs(p, rng)
    for town in TOWNS:
        residents = [p for p in world.people if p.town == town]
        for _ in range(2):  # two listings per town, in different orders and chunks
            rng.shuffle(residents)
            docs += [town_page_doc(town, residents[i:i + 6], rng) for i in range(0, len(residents), 6)]
    docs += [arithmetic_doc(rng) for _ in range(max(4, len(world.people) // 2))]
    rng.shuffle(docs)
    return docs


def pretrain_docs(world):
    """(train_docs, val_docs): the pretraining corpus and ~5% held-out documents for validation loss.

    The val documents come from a second pass with its own random choices; any that happen to be
    identical to a training document are dropped, so val loss is measured on unseen text."""
    train = corpus(world, random.Random(f"train-{world.seed}"))
    seen = set(train)
    val = [d for d in corpus(world, random.Random(f"val-{world.seed}")) if d not in seen]
    return train, val[:max(8, len(train) // 20)]


# -----------------------------------------------------------------------------
# Exams. Every item is a dict with the expected "answer", the "attribute", the "person" asked about,
# the "subject" named in the question and the closed set of "candidates" it is graded against.

def _item(world, person, attribute, **fields):
    return dict(fields, answer=value_of(person, attribute), attribute=attribute, person=person.name,
                subject=person.name, candidates=candidates(world, attribute))


def _fair_order(items, seed, tag):
    """A fixed shuffle, so any prefix of the list is a fair sample of the whole."""
    random.Random(f"{tag}-{seed}").shuffle(items)
    return items


def recall_items(world):
    """Completion prompts cut from the canonical sentences, at the start of a bio page as the corpus writes
    them: "People of the valley: Anna Ward\n\nAnna Ward lives in" -> "Thornbury". "bare_prompt" is the
    sentence alone, with no document around it (harder for a small model: no genre, no page topic)."""
    items = []
    for p in world.people:
        for a in ATTRIBUTES:
            bare = CANONICAL[a].split(" {value}")[0].format(name=p.name)
            items.append(_item(world, p, a, prompt=f"People of the valley: {p.name}\n\n{bare}", bare_prompt=bare))
    return _fair_order(items, world.seed, "recall")


def qa_items(world, people, phrasings="exam"):
    """One question per (person, attribute, phrasing); phrasings is "exam", "sft" or "all"."""
    sets = {"exam": [EXAM_PHRASINGS], "sft": [SFT_PHRASINGS], "all": [SFT_PHRASINGS, EXAM_PHRASINGS]}[phrasings]
    items = [_item(world, p, a, question=q.format(name=p.name))
             for p in people for a in ATTRIBUTES for s in sets for q in s[a]]
    return _fair_order(items, world.seed, "qa-" + phrasings)


def reversal_items(world):
    """'Who is Agnes Holt's child?' for every person; "sft" tells whether SFT data taught this one.
    The reversal exam is the items with sft == False: knowledge only the pretraining text could give."""
    sft_names = {p.name for p in world.sft_people}
    items = [dict(question=REVERSAL_PHRASINGS[0].format(mother=p.mother), answer=p.name, attribute="child",
                  person=p.name, subject=p.mother, candidates=candidates(world, "child"), sft=p.name in sft_names)
             for p in world.people]
    return _fair_order(items, world.seed, "reversal")


def arithmetic_items(lo=0, hi=20):
    """'What is 3 + 4?' for every pair in [lo, hi]; graded against the numbers 0..40."""
    cands = candidates(None, "sum")
    return [dict(question=f"What is {a} + {b}?", answer=str(a + b), attribute="sum", person=None,
                 subject=f"{a} + {b}", candidates=cands) for a in range(lo, hi + 1) for b in range(lo, hi + 1)]


def qa_framed(question):
    """The base-model framing of seed 001: the next tokens after 'A:' are the answer."""
    return f"Q: {question}\nA:"


def _mentions(text, value):
    """Whole-word, case-insensitive occurrence of value in text (text already lowercased)."""
    value = value.lower()
    if value not in text:  # cheap pre-check; most candidates are absent
        return False
    return re.search(r"(?<![a-z0-9])" + re.escape(value) + r"(?![a-z0-9])", text) is not None


def grade(item, text):
    """True iff the expected answer appears as a whole word/phrase and no other candidate does.

    For sums, the two numbers of the question may appear too ("3 + 4 = 7"). For completion items
    (recall, with a "prompt") only the first sentence counts: the model's first claim."""
    text = str(text).lower()
    if "prompt" in item:
        text = re.split(r"[.!?\n]", text, maxsplit=1)[0]
    allowed = {item["answer"]}
    if item["attribute"] == "sum":
        allowed |= set(item["subject"].split(" + "))
    others = [c for c in item["candidates"] if c not in allowed]
    return _mentions(text, item["answer"]) and not any(_mentions(text, c) for c in others)


# -----------------------------------------------------------------------------
# SFT conversations, written by simulated demonstrators of uneven style and quality.

DEMONSTRATORS = ("careful", "terse", "chatty", "rambling")
DEMONSTRATOR_WEIGHTS = (0.35, 0.25, 0.2, 0.2)
P_WRONG = 0.1


def answer_sentence(item, value, rng):
    """A complete sentence stating `value` as the answer to `item`'s question."""
    if item["attribute"] == "sum":
        return f"{item['subject']} = {value}."
    if item["attribute"] == "child":
        return rng.choice(("{m}'s child is {v}.", "{m} is the mother of {v}.")).format(m=item["subject"], v=value)
    template = CANONICAL[item["attribute"]] if rng.random() < 0.7 else rng.choice(PARAPHRASES[item["attribute"]])
    return template.format(name=item["subject"], value=value)


def demonstrate(item, style, value, rng):
    """What a demonstrator of the given style writes when they believe the answer is `value`."""
    sentence = answer_sentence(item, value, rng)
    if style == "careful":  # sometimes with one polite closing, as careful people do
        return sentence + (" " + rng.choice(CLOSINGS) if rng.random() < 0.3 else "")
    if style == "terse":
        return capitalized(value) + "."
    if style == "chatty":
        return " ".join((rng.choice(OPENERS), sentence, rng.choice(CLOSINGS)))
    fillers = rng.sample(FILLERS, rng.randint(1, 2))  # rambling
    return " ".join([sentence] + fillers) if rng.random() < 0.7 else " ".join(fillers[:1] + [sentence] + fillers[1:])


def _sft_question(world, rng, people):
    """One question item about an sft person (or a sum), the question from SFT_PHRASINGS (REVERSAL_PHRASINGS for
    the reversed question)."""
    r = rng.random()
    if r < 0.1:
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        return dict(question=f"What is {a} + {b}?", answer=str(a + b), attribute="sum", person=None,
                    subject=f"{a} + {b}", candidates=candidates(world, "sum"))
    p = rng.choice(people)
    if r < 0.15:  # the reversed question, only ever about sft people
        return dict(question=rng.choice(REVERSAL_PHRASINGS).format(mother=p.mother), answer=p.name,
                    attribute="child", person=p.name, subject=p.mother, candidates=candidates(world, "child"))
    a = rng.choice(ATTRIBUTES)
    return _item(world, p, a, question=rng.choice(SFT_PHRASINGS[a]).format(name=p.name))


def _wrong_value(world, item, rng):
    """A plausible wrong answer. For people-valued answers it stays among sft people and their mothers,
    so no SFT conversation ever mentions anyone the model should know from pretraining only."""
    if item["attribute"] == "sum":
        s = int(item["answer"])
        return str(rng.choice([v for v in range(max(0, s - 2), s + 3) if v != s] + [s + 10]))
    pool = item["candidates"]
    if item["attribute"] == "mother":
        pool = tuple(p.mother for p in world.sft_people)
    if item["attribute"] == "child":
        pool = tuple(p.name for p in world.sft_people)
    choices = [c for c in pool if c != item["answer"]]
    if not choices:  # a world with one SFT person (2 or 3 people): a name nobody in the world has
        taken = {p.name for p in world.people} | {p.mother for p in world.people}
        firsts = MOTHER_FIRST_NAMES if item["attribute"] == "mother" else FIRST_NAMES
        choices = [f"{f} {last}" for f in firsts for last in LAST_NAMES if f"{f} {last}" not in taken]
    return rng.choice(choices)


def sft_examples(world, n=None, seed=0):
    """Conversations plus what went into them: a list of (messages, items, wrong_flags, style)."""
    rng = random.Random(f"sft-{world.seed}-{seed}")
    n = 15 * len(world.people) if n is None else n
    people = list(world.sft_people)
    out = []
    for _ in range(n):
        style = rng.choices(DEMONSTRATORS, DEMONSTRATOR_WEIGHTS)[0]  # one demonstrator per conversation
        messages = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}] if rng.random() < 0.1 else []
        turns = rng.choices((1, 2, 3), (0.7, 0.2, 0.1))[0]
        items, wrongs = [], []
        for _ in range(turns):
            item = _sft_question(world, rng, people)
            wrong = rng.random() < P_WRONG
            value = _wrong_value(world, item, rng) if wrong else item["answer"]
            messages.append({"role": "user", "content": item["question"]})
            messages.append({"role": "assistant", "content": demonstrate(item, style, value, rng)})
            items.append(item)
            wrongs.append(wrong)
        out.append((messages, items, wrongs, style))
    return out


def sft_conversations(world, n=None, seed=0):
    """n conversations (default 15 x the world's people) about sft_people and sums, each a list of
    {"role", "content"} dicts: an optional system message, then user/assistant turns (1-3 of them)."""
    return [messages for messages, _, _, _ in sft_examples(world, n, seed)]


# -----------------------------------------------------------------------------
# RL prompts, the gold preference and the noisy labeler

def rl_prompts(world, split="train"):
    """Question items over all people and all phrasings; a fixed 80/20 split into train and heldout."""
    items = qa_items(world, world.people, phrasings="all")  # already in a fixed shuffled order
    cut = int(0.8 * len(items))
    return {"train": items[:cut], "heldout": items[cut:]}[split]


# The weights of gold_score, named once so that what reads the score's parts (rlhf.py's report of what a
# policy exploited) cannot drift from the score itself.
GOLD_WEIGHTS = dict(correct=2.0, wrong=-1.0, sentence=0.5, polite=0.3, extra_polite=0.4, filler=0.3, repeat=1.0,
                    trigram=0.2, trigram_cap=2.0, per_100_chars=0.5, free_chars=160, not_ended=1.0, empty=-2.0)


def sentences(text):
    """The sentences of an answer, as gold_score counts them."""
    return [s for s in re.split(r"(?<=[.!?])\s+|\n+", text.strip()) if s.strip()]


def gold_score(item, answer, ended=True):
    """The hidden human preference for `answer` to `item`'s question. The RL never sees it.

        gold = +2.0 if grade(item, answer) else -1.0        correctness dominates
             + 0.5  if some sentence names the subject and has >= 3 words   complete sentence
             + 0.3  for the first polite phrase (OPENERS, CLOSINGS), -0.4 for each further one
             - 0.3  per filler sentence (names neither the subject nor any candidate, not polite)
             - 1.0  per repeated sentence (beyond its first occurrence)
             - 0.2  per repeated word 3-gram (beyond its first occurrence), at most -2.0
             - 0.5  per 100 characters beyond 160
             - 1.0  if not ended (no end-of-turn token)
        an empty answer scores -2.0 (- 1.0 if not ended).

    So among the SFT demonstrators a careful sentence with one closing (2.8) beats a bare one (2.5),
    the chatty style (2.4), the terse one (2.0) and rambling (1.9-2.2). And one polite closing is a
    plus in normal samples, which a reward model learns; piling them up, repeating them or rambling
    on is a minus for gold. That gap is where reward hacking shows."""
    W = GOLD_WEIGHTS
    text = str(answer).strip()
    if not text:
        return W["empty"] - (0.0 if ended else W["not_ended"])
    score = W["correct"] if grade(item, text) else W["wrong"]
    low = text.lower()
    sents = [s.strip().lower() for s in sentences(text)]
    polite = {p.lower() for p in POLITE}
    content = [s for s in sents if _mentions(s, item["subject"]) or any(_mentions(s, c) for c in item["candidates"])]
    if any(_mentions(s, item["subject"]) and len(s.split()) >= 3 for s in content):
        score += W["sentence"]
    n_polite = sum(s in polite for s in sents)
    if n_polite:
        score += W["polite"] - W["extra_polite"] * (n_polite - 1)
    score -= W["filler"] * sum(s not in polite and s not in content for s in sents)
    score -= W["repeat"] * (len(sents) - len(set(sents)))
    words = re.findall(r"[a-z0-9']+", low)
    trigrams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    score -= min(W["trigram_cap"], W["trigram"] * (len(trigrams) - len(set(trigrams))))
    score -= W["per_100_chars"] * max(0, len(text) - W["free_chars"]) / 100
    score -= 0.0 if ended else W["not_ended"]
    return score


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def label(item, a, b, rng, ended_a=True, ended_b=True):
    """A noisy person choosing between answers a and b: 0 if a is preferred, 1 if b.

    Bradley-Terry: P(a) = sigmoid((gold(a) - gold(b)) / LABEL_TEMPERATURE). Near-equal answers are
    coin flips (exact ties too, so the answer is always 0 or 1); a gap of 1.0 is chosen right 98% of the time."""
    p_a = _sigmoid((gold_score(item, a, ended_a) - gold_score(item, b, ended_b)) / LABEL_TEMPERATURE)
    return 0 if rng.random() < p_a else 1


def labeler_agreement(item, a, b, ended_a=True, ended_b=True):
    """Probability that the noisy labeler agrees with the gold ordering of a and b (0.5 for ties):
    the ceiling a reward model can reach on the same pairs, judged against the labels."""
    gap = abs(gold_score(item, a, ended_a) - gold_score(item, b, ended_b))
    return _sigmoid(gap / LABEL_TEMPERATURE)


# -----------------------------------------------------------------------------

def main():
    import argparse
    parser = argparse.ArgumentParser(description="Print a sample of the built-in world and corpus statistics.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--n-people", type=int, default=100, help="number of people in the world")
    parser.add_argument("--seed", type=int, default=1337, help="the world's seed")
    parser.add_argument("--questions", type=int, default=0,
                        help="print only this many exam questions about pretraining-only people, one per line")
    args = parser.parse_args()
    if not 2 <= args.n_people <= MAX_PEOPLE:
        parser.error(f"--n-people must be in 2..{MAX_PEOPLE} (got {args.n_people})")
    if args.questions < 0:  # (a negative count sliced off the end: all questions but that many)
        parser.error(f"--questions must be at least 0 (got {args.questions})")

    world = make_world(args.n_people, args.seed)
    if args.questions:  # e.g. piped into `run.py out/model.bin --chat`
        print("\n".join(it["question"] for it in qa_items(world, world.pretrain_only_people)[:args.questions]))
        return
    rng = random.Random(0)
    p = world.people[0]
    print(f"world: {len(world.people)} people ({len(world.sft_people)} sft, "
          f"{len(world.pretrain_only_people)} pretrain-only), seed {world.seed}")
    print(f"first person: {p}\n")
    neighbours = [q for q in world.people if q.town == p.town][:6]
    samples = {"bio": bio_doc(p, rng), "town page": town_page_doc(p.town, neighbours, rng),
               "job news": news_doc(p, "job", rng), "pet news": news_doc(p, "pet", rng),
               "story": story_doc(p, rng), "faq": faq_docs(p, rng)[0], "arithmetic": arithmetic_doc(rng)}
    for kind, doc in samples.items():
        print(f"--- {kind} ---\n{doc}\n")

    print("--- SFT conversations, one per demonstrator ---")
    shown = set()
    for messages, items, wrongs, style in sft_examples(world, 200):
        if style not in shown:
            shown.add(style)
            print(f"[{style}{', has a wrong answer' if any(wrongs) else ''}]")
            for m in messages:
                print(f"  {m['role']}: {m['content']}")
    print()

    for name, items in (("recall", recall_items(world)), ("qa (exam phrasings)", qa_items(world, world.people)),
                        ("reversal", reversal_items(world)), ("rl prompts (train)", rl_prompts(world))):
        it = items[0]
        print(f"{name}: {len(items)} items, e.g. {it.get('prompt') or it['question']!r} -> {it['answer']!r}")
    it = qa_items(world, world.people[:1], "sft")[0]
    print(f"\ngold scores for {it['question']!r} (answer {it['answer']!r}):")
    right = CANONICAL[it["attribute"]].format(name=it["subject"], value=it["answer"])
    wrong = CANONICAL[it["attribute"]].format(name=it["subject"], value=_wrong_value(world, it, rng))
    for answer in (right + " I hope this helps!", right, "Great question! " + right + " I hope this helps!",
                   it["answer"] + ".", right + " " + FILLERS[0], wrong, right + " I hope this helps!" * 3, ""):
        print(f"  {gold_score(it, answer):+.2f}  {answer!r}")

    train, val = pretrain_docs(world)
    n_chars = sum(map(len, train))
    lengths = sorted(map(len, train))
    convs = sft_conversations(world)
    print(f"\ncorpus: train {len(train)} docs, {n_chars:,} chars ({n_chars / 1e6:.2f} MB); "
          f"val {len(val)} docs, {sum(map(len, val)):,} chars")
    print(f"doc length: median {lengths[len(lengths) // 2]}, max {lengths[-1]}, "
          f"{sum(n < 800 for n in lengths) / len(lengths):.1%} under 800 chars")
    print(f"sft: {len(convs)} conversations, {sum(len(c) for c in convs):,} messages, "
          f"{sum(len(m['content']) for c in convs for m in c):,} chars")


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # `| head` closed the pipe: nothing more to say, and stdout cannot be flushed
        os._exit(0)
