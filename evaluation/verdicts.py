"""Answers that give their grounds before the verdict, and whether the verdict follows from them.

- Yes/no answers that name what the region shows first ("Normal tissue, not a cyst, so no.": MedSynth's
  ``--yes-no-explained``): does the model name the region, or copy the kind asked, and does its verdict
  follow from the name it wrote? Read on the yes/no items whose ``meta`` names the kind ``asked`` and
  whose reference answer has that form (it gives what the region shows).
- "Which is larger?" answered by both regions' shares of the image first ("<region1> covers 0.41% of the
  image and <region2> 1.2%, so <region2> is larger.": ``--larger-explained``): does the verdict follow
  from the two shares written, and are they in the right order?
- Counts that box the instances first ("<ref>cyst</ref><box>[...]</box>, so 1.", "No cysts, so 0.":
  ``--counting-grounded``): does the stated count equal the boxes written, and do the boxes number right?

A prediction not in the form counts in ``n`` only.
"""

from __future__ import annotations

import re

from medp_base.tags import REGION_TAG

EXPLAINED = re.compile(r"(?:an? )?(?P<named>.+?)(?:, not an? (?P<asked>.+?))?, so (?P<verdict>yes|no)\.?", re.I)


def read_explained(answer: str) -> tuple[str, str] | None:
    """"An abscess, not a cyst, so no." -> ("abscess", "no"); None when ``answer`` is not in that form."""
    m = EXPLAINED.fullmatch(answer.strip())
    return (m["named"].lower(), m["verdict"].lower()) if m else None


def explained_verdicts(rows: list[dict]) -> dict:
    """Rows ``{"task", "meta", "prediction", "reference"}`` -> ``n`` (explained yes/no items), ``in_form``
    (predictions in the form) and, as shares of those, ``name_right`` (the name is what the region
    shows), ``name_is_asked`` (the name is the kind asked: half the questions ask the true kind) and
    ``verdict_follows`` ("yes" exactly when the name is the kind asked). Empty when no item qualifies."""
    read = []
    for row in rows:
        truth = read_explained(row["reference"]) if row["task"] == "yes/no" and "asked" in row["meta"] else None
        if truth is not None:
            read.append((truth[0], row["meta"]["asked"], read_explained(row["prediction"] or "")))
    if not read:
        return {}
    said = [(shown, asked, *p) for shown, asked, p in read if p is not None]

    def share(hits) -> float:  # of the answers in the form; 0 where there are none
        return sum(hits) / max(len(said), 1)

    return {"n": len(read), "in_form": len(said),
            "name_right": share(named == shown for shown, _, named, _ in said),
            "name_is_asked": share(named == asked for _, asked, named, _ in said),
            "verdict_follows": share((verdict == "yes") == (named == asked) for _, asked, named, verdict in said)}


GROUNDED_COUNT = re.compile(r"(?P<found>.*), so (?P<count>\d+)\.?", re.S)


def grounded_counts(rows: list[dict]) -> dict:
    """Rows ``{"task", "meta", "prediction", "reference"}`` -> ``n`` (counting items whose reference boxes
    the instances before the count), ``in_form`` (predictions ending ", so N.") and, as shares of those,
    ``count_follows`` (N is the number of boxes written) and ``boxes_right`` (the boxes written are as many
    as the instances). Empty when no item qualifies."""
    items = [row for row in rows if row["task"] == "counting" and GROUNDED_COUNT.fullmatch(row["reference"].strip())]
    if not items:
        return {}
    said = [(int(m["count"]), m["found"].count("<box>"), int(row["meta"]["value"])) for row in items
            if (m := GROUNDED_COUNT.fullmatch((row["prediction"] or "").strip()))]
    n = max(len(said), 1)
    return {"n": len(items), "in_form": len(said),
            "count_follows": sum(stated == boxes for stated, boxes, _ in said) / n,
            "boxes_right": sum(boxes == value for _, boxes, value in said) / n}


EXPLAINED_SIZES = re.compile(r"region 1 covers (?P<first>\d+(?:\.\d+)?)% of the image and region 2 "
                             r"(?P<second>\d+(?:\.\d+)?)%, so region (?P<verdict>[12]) is larger\.?")
"""Read on :func:`read_sizes`'s text: ``<regionk>`` as "region k", as a served answer writes its tags."""


def read_sizes(answer: str) -> re.Match | None:
    """"<region1> covers 0.41% of the image and <region2> 1.2%, so <region2> is larger." (or with the tags
    written "region 1") -> its match of :data:`EXPLAINED_SIZES`; None when not in that form."""
    return EXPLAINED_SIZES.fullmatch(REGION_TAG.sub(r"region \1", answer.strip()))


def explained_sizes(rows: list[dict]) -> dict:
    """Rows ``{"task", "meta", "prediction", "reference"}`` -> ``n`` ("which is larger?" items whose
    reference gives both shares first), ``in_form`` (predictions in that form) and, as shares of those,
    ``verdict_follows`` (the region named has the larger share written) and ``order_right`` (the larger
    share written is the larger region's). Empty when no item qualifies."""
    items = [row for row in rows if row["task"] == "comparison" and read_sizes(row["reference"])]
    if not items:
        return {}
    said = []
    for row in items:
        if m := read_sizes(row["prediction"] or ""):
            first, second = float(m["first"]), float(m["second"])
            larger = "1" if first > second else "2" if second > first else None
            said.append((larger, m["verdict"], row["meta"]["label"][-1]))
    n = max(len(said), 1)
    return {"n": len(items), "in_form": len(said),
            "verdict_follows": sum(larger == verdict for larger, verdict, _ in said) / n,
            "order_right": sum(larger == truth for larger, _, truth in said) / n}
